"""ASCL Table 2: ResNet-20 on CIFAR-10 / CIFAR-100, ADV vs TRADES vs Leaked-ASCL (ours).

Training (ASCL appendix §6): PGD-10 (8/255, 2/255; CIFAR-100 0.01, 0.001), Adam 1e-3 with decays at
80/120/160, 200 epochs, batch 128, lambda_SCL=1, lambda_VAT=2, tau=0.07, cosine, no head.
Evaluation (ASCL §4.1 "Attack Setting", `config.cifar_base(paper='ascl')`): PGD-250 and mPGD-250
on the full test set, AutoAttack standard on the first 1000 test images (original CIFAR order), the
checkpoint of best PGD robust accuracy on the test set (the authors' model_best.pt).
The TRADES row attacks with BN in train mode, from x + 0.001 N(0, 1) without clipping the start
(the authors' trades.py); `--config.attack.bn_mode=eval` gives the TRADES paper's eval-mode attack.
  --config configs/ascl_table2.py:row=ours,dataset=cifar10     (rows: adv, trades, ours)
Expected (CIFAR-10 nat/PGD/mPGD/AA): ADV 78.8/48.1/36.4/36.1, TRADES 76.1/51.9/38.2/36.3,
ours 75.5/53.7/41.0/42.0. CIFAR-100: ADV 60.7/35.7/25.3/25.7, ours 59.0/42.5/31.1/31.9.
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, row="ours", dataset="cifar10")
    c = config.resnet20_adam(config.cifar_base(a["dataset"], "resnet20", paper="ascl"))
    c.name = f"ascl_table2:{a['row']},{a['dataset']}"
    if a["row"] == "adv":
        c.method = "adv"
        c.loss.nat_ce_weight = 0.0  # Madry: adversarial CE only
    elif a["row"] == "trades":
        c.method = "trades"
        # ASCL's trades.py: model.train() during the attack, start x + 0.001 N(0, 1) unclipped.
        c.attack.update(dict(init="normal", bn_mode="train", clip_start=False))
    elif a["row"] == "ours":
        c.method = "ascl"
        c.loss.strategy = "leaked"
    else:
        raise config.ConfigError(f"row={a['row']!r}: choose one of ['adv', 'trades', 'ours']")
    c.data.drop_remainder = True  # single view: the authors' load_data(drop_last=True), SPEC 1.7
    return config.smoke(c) if a["smoke"] else c
