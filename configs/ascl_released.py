"""The authors' released setting (tuananhbui89/ASCL run_cifar10.py, SPEC 1.1 item 8 and 4), trained
and evaluated with the RELEASE's protocol, not the paper's:

Training: ascl_pgd_2trans (two augmentations, 4b contrastive rows), Leaked selection, -Linf
similarity on L2-normalised features, tau 0.2, a linear 128-d head (p1), alpha=0 (no natural CE),
lambda_VAT=2 with KL/(N*C), PGD-10 eps 0.031 step 0.007 in train mode, SGD 0.1 / wd 5e-4, 120 epochs
with decays at 100/105/110.
Evaluation (02e_evaluate_robustness.py with mysetting.py's defaults eval_best=True,
eval_auto_ver='custom'): PGD-200 at eps 0.031, step 0.007 and AutoAttack APGD-CE + APGD-T at eps
0.031 on all 10,000 test images, no mPGD; the checkpoint is model_best.pt: the best PGD-10
(0.031, 0.007) robust accuracy on the test set, every epoch (02a_adversarial_training.py).
  --config configs/ascl_released.py:arch=resnet18   (resnet18, wrn34_10)
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, arch="resnet18")
    c = config.cifar_base("cifar10", a["arch"], paper="ascl")
    c.name = f"ascl_released:{a['arch']}"
    c.method = "ascl"
    c.data.num_views = 2
    c.loss.update(
        dict(
            two_views=True,
            strategy="leaked",
            similarity="neg_linf",
            normalize=True,
            temperature=0.2,
            nat_ce_weight=0.0,
            vat_weight=2.0,
            vat_reduction="mean",
            feature="proj",
        )
    )
    c.model.head, c.model.proj_dim = "p1", 128
    c.attack.update(dict(eps=0.031, step_size=0.007, num_steps=10, bn_mode="train"))
    c.optim.update(
        dict(
            name="sgd",
            learning_rate=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="piecewise",
            decay_epochs=(100, 105, 110),
            decay_factors=(0.1, 0.01, 0.001),
            num_epochs=120,
        )
    )
    c.eval.update(
        dict(
            eps=0.031,
            step_size=0.007,
            attacks=("clean", "pgd", "autoattack"),
            pgd_steps=200,
            autoattack="custom",  # the release's AutoAttack(version='custom', APGD-CE + APGD-T)
            autoattack_attacks=("apgd-ce", "apgd-t"),
            autoattack_examples=10_000,
            select_examples=10_000,
        )
    )
    return config.smoke(c) if a["smoke"] else c
