"""Fashion-MNIST reproduction set (issue 15): every method under one threat model, one architecture,
one training budget and one evaluation protocol.

  --config configs/fmnist.py:method=ascl_leaked,seed=1
  --config configs/fmnist.py:method=acl_ds                         (ACL(DS) pre-training)
  --config configs/fmnist.py:method=acl_ds_trades,pretrained=DIR   (TRADES fine-tuning from DIR)

method: nat | adv (Madry: adversarial CE only) | trades (beta 6, KL attack from x + 0.001 N(0, 1)) |
ascl_global | ascl_hard | ascl_soft | ascl_leaked (ASCL Table 1 strategies: CE(nat) + CE(adv) +
1.0 SCL (cosine, tau 0.07, z features) + 2.0 VAT) | acl_ds (ACL Algorithm 1, DS variant: dual-BN
3-layer MLP head, NT-Xent t 0.5, two views) | acl_ds_trades (the trades recipe, started from the
acl_ds encoder's adversarial BN set with a zero classifier; ACL Table 1's "DS + TRADES").
The trades run is also ACL Table 1's RI column (TRADES from random init, the same recipe).

Data: fashion_mnist (tfds if prepared, else the IDX files of data.idx_dir), all 60,000 training
images, batch 128 (469 steps an epoch, the last batch of 96 kept), random crop with 2-pixel
padding and no flips (data_defaults('fashion_mnist') gives the reasons), model normalisation by
the training set's mean/std (0.28604, 0.35302).
Architecture: the small CNN of Carlini & Wagner / TRADES (conv 32-32-64-64, FC 200-200, z = 200-d;
no BN in the CNN; attacks use eval-mode BN, which matters only for acl_ds's dual-BN acl_mlp head
(ACL's eval-mode contrastive attack, SPEC 3.3); ASCL's extra BN forwards are off).
Threat model (training and evaluation): L-inf eps 0.1, step 0.01; training attack PGD-10 with a
random start (uniform; TRADES: 0.001 N(0, 1)), clipped to [0, 1]. acl_ds attacks its NT-Xent with
the same PGD-10 (unclipped start, as ACL).
Budget: `epochs` (default 3; scripts/reproduce.py passes it explicitly) epochs of Adam 1e-3, x0.1
for the last epoch, for every method; acl_ds pre-trains `epochs` epochs and its fine-tuning is
another `epochs` epochs.
Evaluation: clean, PGD-20 and mPGD-20 (9 targets) on all 10,000 test images, AutoAttack standard
(APGD-CE, APGD-T, FAB-T, Square) on the first 1,000 (file order of the source read), last
checkpoint, no gradient-masking sweep; R-DIV (ASCL §2) of PGD-20 latents of the first 1,000 test
images; ASCL's positives / negatives per anchor (Fig. 4) from the training metrics.
Time on 2 CPU cores (the Xeon of these machines; reproduce.py records each sitting's wall and CPU
seconds in reproduce.json). Training: the ASCL Leaked PGD-10 step at batch 128 costs 1.77 CPU-s
(with the CPU flags of ascl_jax.main; 2.76 without), i.e. ~145 images/s and ~7 min an epoch on two
quiet cores (ADV / TRADES a little less, NAT ~10x less, acl_ds ~2x more). Evaluation, in CPU-seconds
per test image with every row surviving every attack (the worst case; a robust row costs this, a
broken one less): PGD-20 0.026, mPGD-20 0.20, AutoAttack standard ~4.6 (APGD-CE, APGD-T x9, FAB-T
x9, Square 5000). So a run whose robust accuracy is ~70% spends ~20 min training and ~40 min
evaluating: about an hour a run, ~11 hours for the 12 runs, against the issue's 45 minutes / 6 hours.
The evaluation protocol is the part the verdicts need (10,000 images for PGD-20 / mPGD, 1,000 for
AutoAttack) and is kept; the training budget is the knob: 3 epochs keeps training near 20 minutes a
run. The set runs over several sittings (reproduce.py skips finished runs, resumes a half-done one).
"""

from ascl_jax import config

METHODS = (
    "nat",
    "adv",
    "trades",
    "ascl_global",
    "ascl_hard",
    "ascl_soft",
    "ascl_leaked",
    "acl_ds",
    "acl_ds_trades",
)
STEPS_PER_EPOCH = 469  # ceil(60000 / 128)


def get_config(arg=None):
    a = config.parse_arg(arg, method="ascl_leaked", seed=0, epochs=3, pretrained="")
    method, epochs = a["method"], a["epochs"]
    if method not in METHODS:
        raise config.ConfigError(f"configs/fmnist.py: method={method!r}; choose one of {list(METHODS)}")
    if epochs < 2:
        raise config.ConfigError(f"configs/fmnist.py: epochs={epochs}; allowed: an integer >= 2")
    if method == "acl_ds_trades" and not a["pretrained"]:
        raise config.ConfigError(
            "configs/fmnist.py: method='acl_ds_trades' needs pretrained=<the acl_ds run's workdir>"
        )
    c = config.base_config()
    c.name = f"fmnist:{method},seed={a['seed']}"
    c.seed = a["seed"]
    c.data = config.data_defaults("fashion_mnist")  # crop_padding 2, flip False, eval batch 500
    c.data.batch_size = 128
    c.model.update(dict(arch="cnn", normalization="fashion_mnist", head="identity", bn="single"))
    c.attack.update(
        dict(eps=0.1, step_size=0.01, num_steps=10, random_start=True, init="uniform", clip_start=True)
    )
    c.attack.bn_mode = "eval"  # no BN in the CNN: eval and train mode are the same network
    c.loss.bn_extra_updates = 0  # no BN running statistics to update
    c.optim.update(
        dict(
            name="adam",
            learning_rate=1e-3,
            weight_decay=0.0,
            schedule="piecewise",
            decay_epochs=(epochs - 1,),
            decay_factors=(0.1,),
            num_epochs=epochs,
        )
    )
    c.eval.update(
        dict(
            attacks=("clean", "pgd", "mpgd", "autoattack"),
            eps=0.1,
            step_size=0.01,
            pgd_steps=20,
            pgd_restarts=1,
            mpgd_steps=20,
            autoattack="standard",
            autoattack_examples=1000,
            num_examples=-1,
            eps_sweep=(),
            sanity=False,
            checkpoint="last",
        )
    )
    c.analysis.update(dict(enabled=True, num_examples=1000, tsne_points=400))
    c.log_every_steps = 67  # 7 windows an epoch
    c.checkpoint_every_steps = STEPS_PER_EPOCH
    c.progress_bar = False

    if method == "nat":
        c.method = "nat"
    elif method == "adv":
        c.method = "adv"
        c.loss.nat_ce_weight = 0.0  # Madry: adversarial CE only
    elif method in ("trades", "acl_ds_trades"):
        c.method = "trades" if method == "trades" else "trades_finetune"
        c.loss.trades_beta = 6.0
        c.attack.init = "normal"
        if method == "acl_ds_trades":
            c.init.update(dict(workdir=a["pretrained"], bn_branch="adv", reset_classifier=True))
    elif method.startswith("ascl_"):
        c.method = "ascl"
        c.loss.update(
            dict(strategy=method[len("ascl_") :], similarity="cosine", temperature=0.07, feature="z")
        )
    else:  # acl_ds
        c.method = "acl_pretrain"
        c.data.num_views = 2
        c.model.update(dict(head="acl_mlp", bn="dual"))
        c.loss.update(dict(acl_variant="ds", acl_temperature=0.5, acl_alpha=1.0, acl_average=True))
        c.attack.clip_start = False
        c.eval.attacks = ()  # no trained classifier yet: fine-tune it (acl_ds_trades)
        c.eval.autoattack = "none"
        c.analysis.enabled = False
    return config.smoke(c) if a["smoke"] else c
