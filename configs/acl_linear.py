"""ACL Table 5: linear evaluation of a frozen ACL(DS) encoder with either BN set, the linear
classifier trained on clean images (standard) or on PGD-10 examples (adversarial).
Same recipe as fine-tuning (ACL's train_trades.py with the encoder fixed, SPEC 3.6): SGD 0.1, wd 2e-4,
25 epochs, MultiStepLR milestones 15, 20 stepped at epoch starts (decay=code: from 0-indexed epochs
14, 19; decay=paper: 15, 20); 45k / 5k split, best validation PGD robust accuracy; evaluation PGD-20
at 8/255, 2/255 on the full test set (`config.cifar_base(paper='acl')`, `config.acl_select`).
  --config configs/acl_linear.py:pretrained=runs/acl_ds,branch=adv,mode=adversarial
Expected TA/RA: standard theta_bn 91.02/0.20, theta_bn_adv 79.76/30.31; adversarial theta_bn
82.63/0.28, theta_bn_adv 74.22/44.22.
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, pretrained="", branch="adv", mode="standard", dataset="cifar10", decay="code")
    c = config.acl_select(config.cifar_base(a["dataset"], "resnet18", paper="acl"), metric="robust")
    c.name = f"acl_linear:{a['branch']},{a['mode']}"
    c.method = "linear_eval"
    c.model.update(dict(head="identity", bn="single", normalization="imagenet"))
    c.init.update(
        dict(workdir=a["pretrained"], bn_branch=a["branch"], reset_classifier=True, linear_mode=a["mode"])
    )
    c.attack.update(dict(eps=8 / 255, step_size=2 / 255, num_steps=10, bn_mode="eval"))
    c.optim.update(
        dict(
            name="sgd",
            learning_rate=0.1,
            momentum=0.9,
            weight_decay=2e-4,
            schedule="piecewise",
            decay_epochs=config.multistep_epochs((15, 20), a["decay"]),
            decay_factors=(0.1, 0.01),
            num_epochs=25,
        )
    )
    return config.smoke(c) if a["smoke"] else c
