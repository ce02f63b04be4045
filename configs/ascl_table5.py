"""ASCL Table 5: projection head none / p1 / p2 for Global and Leaked ASCL, ResNet-20, CIFAR-10.
  --config configs/ascl_table5.py:head=p2,strategy=global   (head: identity, p1, p2)
The SCL runs on the projection (loss.feature='proj'); CE and VAT use the classifier on z.
Expected nat: Global 76.4 / 77.3 / 76.6, Leaked 75.5 / 76.5 / 75.7 (none / p1 / p2).
Evaluation: ASCL §4.1 (`config.cifar_base(paper='ascl')`: PGD-250, mPGD-250, AutoAttack standard
on the first 1000 test images; best PGD robust accuracy on the test set).
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, head="p1", strategy="leaked")
    c = config.resnet20_adam(config.cifar_base("cifar10", "resnet20", paper="ascl"))
    c.name = f"ascl_table5:{a['head']},{a['strategy']}"
    c.method = "ascl"
    c.loss.strategy = a["strategy"]
    c.model.head = a["head"]
    c.model.proj_dim = 128
    c.loss.feature = "z" if a["head"] == "identity" else "proj"
    c.data.drop_remainder = True  # single view: the authors' load_data(drop_last=True), SPEC 1.7
    return config.smoke(c) if a["smoke"] else c
