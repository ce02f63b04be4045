"""ASCL Table 3 "Ours*": Leaked-ASCL without the natural CE and without VAT (alpha=0, lambda_VAT=0),
ResNet-18 or WideResNet-34-10 on CIFAR-10, SGD 0.1 (decays 100/150), 200 epochs (appendix §6).
Evaluation: ASCL §4.1 with AutoAttack standard on the full test set (Table 3 caption: "Robustness
evaluation against Auto-Attack ... on the full test set"); best PGD robust accuracy on the test set.
  --config configs/ascl_table3.py:arch=wrn34_10   (arch: resnet18, wrn34_10)
Expected nat/AA: WRN 87.70/52.80, ResNet-18 85.02/50.31.
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, arch="resnet18")
    c = config.sgd_200(config.cifar_base("cifar10", a["arch"], paper="ascl"))
    c.name = f"ascl_table3:{a['arch']}"
    c.method = "ascl"
    c.loss.update(dict(strategy="leaked", nat_ce_weight=0.0, vat_weight=0.0))
    c.eval.autoattack_examples = 10_000
    c.data.drop_remainder = True  # single view: the authors' load_data(drop_last=True), SPEC 1.7
    return config.smoke(c) if a["smoke"] else c
