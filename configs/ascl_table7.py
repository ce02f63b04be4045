"""ASCL Table 7: lambda_SCL and lambda_VAT sweep, Leaked-ASCL, ResNet-20, CIFAR-10 (Table 2 setting).
--config configs/ascl_table7.py:scl=2.0,vat=0.0
Evaluation: ASCL §4.1 (`config.cifar_base(paper='ascl')`: PGD-250, mPGD-250, AutoAttack standard
on the first 1000 test images; best PGD robust accuracy on the test set).
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, scl=1.0, vat=2.0)
    c = config.resnet20_adam(config.cifar_base("cifar10", "resnet20", paper="ascl"))
    c.name = f"ascl_table7:scl={a['scl']},vat={a['vat']}"
    c.method = "ascl"
    c.loss.update(dict(strategy="leaked", scl_weight=a["scl"], vat_weight=a["vat"]))
    c.data.drop_remainder = True  # single view: the authors' load_data(drop_last=True), SPEC 1.7
    return config.smoke(c) if a["smoke"] else c
