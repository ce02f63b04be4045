"""Leaked-ASCL on the embedded digits dataset (scikit-learn's 8x8 handwritten digits, no download).

The README's first command runs this config. A small CNN (Carlini & Wagner 2017), PGD-10 at
eps 0.1 (digits pixels are multiples of 1/16, so 8/255 would hardly move them), Adam 1e-3,
40 epochs of 12 steps (the last, partial batch kept); then clean / PGD-20 / mPGD / a custom
AutoAttack list (APGD-CE + APGD-T, reported as 'autoattack-custom') evaluation, R-DIV and plots.
Finishes in a few minutes on 2 CPU cores.

  python -m ascl_jax.main --config configs/default.py --workdir runs/default
  python -m ascl_jax.main --config configs/default.py:smoke --workdir /tmp/smoke
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg)
    c = config.base_config()
    c.name = "default"
    c.method = "ascl"
    c.loss.strategy = "leaked"
    c.loss.similarity = "cosine"
    c.loss.temperature = 0.07
    c.data.name = "digits"
    c.data.batch_size = 128
    c.data.eval_batch_size = 384  # the 360 test images in one batch
    c.data.augment = "crop_flip"
    c.data.crop_padding = 1
    c.model.arch = "cnn"
    c.model.normalization = "digits"
    c.attack.update(dict(eps=0.1, step_size=0.025, num_steps=10))
    c.eval.update(
        dict(
            eps=0.1,
            step_size=0.025,
            pgd_steps=20,
            mpgd_steps=20,
            attacks=("clean", "pgd", "mpgd", "autoattack"),
            autoattack="custom",  # not AutoAttack-standard: APGD-CE + APGD-T, reported as such
            autoattack_attacks=("apgd-ce", "apgd-t"),
            autoattack_examples=360,
            eps_sweep=(0.025, 0.05, 0.1, 0.15, 0.2),
        )
    )
    c.analysis.enabled = True
    c.optim.update(
        dict(
            name="adam",
            learning_rate=1e-3,
            schedule="piecewise",
            decay_epochs=(30,),
            decay_factors=(0.1,),
            num_epochs=40,
        )
    )
    c.log_every_steps = 12  # one epoch: ceil(1437 / 128)
    c.checkpoint_every_steps = 120
    return config.smoke(c) if a["smoke"] else c
