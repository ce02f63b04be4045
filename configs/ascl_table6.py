"""ASCL Table 6 (appendix §8.2): components on ResNet-18 / WRN-34-10, CIFAR-10 (SGD 0.1, decays
100/150, 200 epochs), evaluated as ASCL §4.1 (`config.cifar_base(paper='ascl')`).
  --config configs/ascl_table6.py:row=adv_vat_scl,arch=resnet18
Rows: adv (PGD-AT), adv_scl (ADV + Leaked SCL), adv_vat (ADV + VAT), adv_vat_scl (ADV + VAT + SCL);
orgscl: "the original SCL version with two standard data-augmentations", as the authors' code runs
it (ascl.py::scl_nat_2trans): SupCon only (tau 0.07, no CE, no adversary) on the un-normalised
128-d output of the linear head p1 (`loss.supcon_normalize=False`); the classifier is untrained at
the end of this run (the authors train it afterwards with 02b_linear_train.py), so the run evaluates
nothing (`eval.attacks=()`): its encoder is the input of a linear probe.
orgscl_ce: SupCon on the L2-normalised penultimate z + CE on both views (a one-stage reading);
trained without an adversary, so its PGD accuracy is ~0 at every epoch and a robust-accuracy
selection would keep an arbitrary early epoch: the headline is the last checkpoint.
"""

from ascl_jax import config

ROWS = {"adv": (0.0, 0.0), "adv_scl": (1.0, 0.0), "adv_vat": (0.0, 2.0), "adv_vat_scl": (1.0, 2.0)}
SUPCON_ROWS = ("orgscl", "orgscl_ce")


def get_config(arg=None):
    a = config.parse_arg(arg, row="adv_vat_scl", arch="resnet18")
    if a["row"] not in ROWS and a["row"] not in SUPCON_ROWS:
        raise config.ConfigError(f"row={a['row']!r}: choose one of {[*SUPCON_ROWS, *ROWS]}")
    c = config.sgd_200(config.cifar_base("cifar10", a["arch"], paper="ascl"))
    c.name = f"ascl_table6:{a['row']},{a['arch']}"
    if a["row"] in SUPCON_ROWS:
        c.method = "supcon"
        c.data.num_views = 2  # the authors' load_two_transforms (no drop_last)
        if a["row"] == "orgscl":
            c.model.update(dict(head="p1", proj_dim=128))
            c.loss.update(
                dict(
                    nat_ce_weight=0.0,
                    scl_weight=1.0,
                    temperature=0.07,
                    feature="proj",
                    supcon_normalize=False,
                )
            )
            c.eval.checkpoint = "last"  # 02b_linear_train.py loads the encoder's last model.pt
            c.eval.attacks = ()  # the classifier is untrained: probe the encoder instead
        else:
            c.loss.update(dict(nat_ce_weight=1.0, scl_weight=1.0, temperature=0.07, supcon_normalize=True))
            c.eval.checkpoint = "last"  # no adversary in training: PGD accuracy ~0, nothing to select on
        return config.smoke(c) if a["smoke"] else c
    c.method = "ascl"
    c.data.drop_remainder = True  # single view: the authors' load_data(drop_last=True), SPEC 1.7
    scl, vat = ROWS[a["row"]]
    c.loss.update(dict(strategy="leaked", nat_ce_weight=0.0, scl_weight=scl, vat_weight=vat))
    return config.smoke(c) if a["smoke"] else c
