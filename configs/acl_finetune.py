"""ACL TRADES fine-tuning (ACL Tables 1, 3, 4; SPEC 3.6) from a pre-training workdir.

TRADES beta=6, PGD-10 on KL (2/255, 8/255) from x + 0.001 N(0,1) with BN in eval mode, SGD 0.1,
momentum 0.9, wd 2e-4, batch 128, 25 epochs with decays at 15 and 20 (the README's CIFAR-10 command
uses 100 epochs, decays 40/60: pass epochs=100). The encoder starts from the chosen BN set
(init.bn_branch adv = DualBN(theta_bn_adv), clean = DualBN(theta_bn)); the projection head is dropped
and the classifier zero-initialised. Evaluation PGD-20. Training split: the first 45k images.
  --config configs/acl_finetune.py:pretrained=runs/acl_ds,branch=adv
  --config configs/acl_finetune.py:random_init=True     (the RI column: TRADES from scratch)
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, pretrained="", branch="adv", dataset="cifar10", epochs=25, random_init=False)
    c = config.cifar_base(a["dataset"], "resnet18")
    c.name = f"acl_finetune:{a['branch']},{a['dataset']}"
    c.method = "trades" if a["random_init"] else "trades_finetune"
    c.data.train_split = "train[:45000]"
    c.model.update(dict(head="identity", bn="single", normalization="imagenet"))
    c.init.update(dict(workdir=a["pretrained"], bn_branch=a["branch"], reset_classifier=True))
    c.loss.trades_beta = 6.0
    c.attack.update(dict(eps=8 / 255, step_size=2 / 255, num_steps=10, init="normal", bn_mode="eval"))
    decays = (15, 20) if a["epochs"] == 25 else (int(a["epochs"] * 0.4), int(a["epochs"] * 0.6))
    c.optim.update(
        dict(
            name="sgd",
            learning_rate=0.1,
            momentum=0.9,
            weight_decay=2e-4,
            schedule="piecewise",
            decay_epochs=decays,
            decay_factors=(0.1, 0.01),
            num_epochs=a["epochs"],
        )
    )
    c.eval.update(dict(attacks=("clean", "pgd"), pgd_steps=20, autoattack="none"))
    return config.smoke(c) if a["smoke"] else c
