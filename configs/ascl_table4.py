"""ASCL Table 4: Global / Hard / Soft / Leaked selection, ResNet-20 on CIFAR-10 (Table 2 setting).
  --config configs/ascl_table4.py:strategy=hard   (global, hard, soft, leaked)
Expected nat/PGD/mPGD/AA: Global 76.4/52.7/40.4/40.9, Hard 75.5/53.1/41.0/41.3,
Soft 75.5/53.4/40.6/40.4, Leaked 75.5/53.7/41.0/42.0. Fig. 4 counts (per anchor, 2b rows):
Global 26.4 positives / 228.6 negatives; Leaked 11.3 / 14.3.
Evaluation: ASCL §4.1 (`config.cifar_base(paper='ascl')`: PGD-250, mPGD-250, AutoAttack standard
on the first 1000 test images; best PGD robust accuracy on the test set).
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, strategy="leaked")
    c = config.resnet20_adam(config.cifar_base("cifar10", "resnet20", paper="ascl"))
    c.name = f"ascl_table4:{a['strategy']}"
    c.method = "ascl"
    c.loss.strategy = a["strategy"]
    c.data.drop_remainder = True  # single view: the authors' load_data(drop_last=True), SPEC 1.7
    return config.smoke(c) if a["smoke"] else c
