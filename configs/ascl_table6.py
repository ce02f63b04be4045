"""ASCL Table 6: components on ResNet-18 / WRN-34-10, CIFAR-10 (SGD 0.1, decays 100/150, 200 epochs).
  --config configs/ascl_table6.py:row=adv_vat_scl,arch=resnet18
Rows: orgscl (SupCon on two standard augmentations + CE, no adversary, tau 0.07), adv (PGD-AT),
adv_scl (ADV + Leaked SCL), adv_vat (ADV + VAT), adv_vat_scl (ADV + VAT + SCL).
"""

from ascl_jax import config

ROWS = {"adv": (0.0, 0.0), "adv_scl": (1.0, 0.0), "adv_vat": (0.0, 2.0), "adv_vat_scl": (1.0, 2.0)}


def get_config(arg=None):
    a = config.parse_arg(arg, row="adv_vat_scl", arch="resnet18")
    if a["row"] not in ROWS and a["row"] != "orgscl":
        raise config.ConfigError(f"row={a['row']!r}: choose one of {['orgscl', *ROWS]}")
    c = config.sgd_200(config.cifar_base("cifar10", a["arch"]))
    c.name = f"ascl_table6:{a['row']},{a['arch']}"
    if a["row"] == "orgscl":
        c.method = "supcon"
        c.data.num_views = 2
        c.loss.update(dict(nat_ce_weight=1.0, scl_weight=1.0, temperature=0.07))
        return config.smoke(c) if a["smoke"] else c
    c.method = "ascl"
    c.data.drop_remainder = True  # single view: the authors' load_data(drop_last=True), SPEC 1.7
    scl, vat = ROWS[a["row"]]
    c.loss.update(dict(strategy="leaked", nat_ce_weight=0.0, scl_weight=scl, vat_weight=vat))
    return config.smoke(c) if a["smoke"] else c
