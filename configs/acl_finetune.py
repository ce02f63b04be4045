"""ACL TRADES fine-tuning (ACL §3.1.1, Tables 1, 3, 4; SPEC 3.6) from a pre-training workdir.

TRADES beta=6, PGD-10 on KL (2/255, 8/255) from x + 0.001 N(0,1) (start not clipped, ACL's trades.py)
with BN in eval mode, SGD 0.1, momentum 0.9, wd 2e-4, batch 128. The encoder starts from the chosen
BN set (init.bn_branch adv = DualBN(theta_bn_adv), clean = DualBN(theta_bn)); the projection head is
dropped and the classifier zero-initialised.
Epochs / lr milestones (x0.1 each), ACL's recipes: epochs=25 -> 15, 20 (ACL §3: "By default, we
fine-tune 25 epochs ... decaying by 10 times at epoch 15 and 20"); epochs=100 -> 40, 60 (the README's
CIFAR-10 command); epochs=20 -> 10, 15 (the README's CIFAR-100 command); other counts need
milestones=a/b. decay=code (default): the authors' MultiStepLR stepped at the start of each
1-indexed epoch, so milestone m lowers the lr from 0-indexed epoch m - 1 (14 epochs at 0.1);
decay=paper: from epoch m (`config.multistep_epochs`).
Data and selection (`config.acl_select`): 45k training images, 5000 held out; the checkpoint of best
validation PGD robust accuracy (ACL §3: "selected based on the held-out validation RA").
Evaluation (`config.cifar_base(paper='acl')`): PGD-20 at 8/255, 2/255 on the full test set, on both
datasets.
  --config configs/acl_finetune.py:pretrained=runs/acl_ds,branch=adv
  --config configs/acl_finetune.py:pretrained=runs/acl_ds100,dataset=cifar100,epochs=20
  --config configs/acl_finetune.py:random_init=True     (the RI column: TRADES from scratch)
"""

from ascl_jax import config

# ACL's fine-tuning recipes: epochs -> MultiStepLR milestones (1-indexed epochs).
MILESTONES = {25: (15, 20), 100: (40, 60), 20: (10, 15)}


def milestones(a) -> tuple[int, ...]:
    """The lr milestones of argument dict `a` (keys epochs, milestones 'a/b')."""
    if a["milestones"]:
        try:
            return tuple(int(m) for m in a["milestones"].split("/"))
        except ValueError:
            raise config.ConfigError(
                f"milestones={a['milestones']!r}: allowed: epochs separated by '/', e.g. 30/40"
            ) from None
    if a["epochs"] not in MILESTONES:
        raise config.ConfigError(
            f"epochs={a['epochs']}: ACL's recipes are epochs={sorted(MILESTONES)}; for another count "
            "pass milestones=a/b (the lr x0.1 at each)"
        )
    return MILESTONES[a["epochs"]]


def get_config(arg=None):
    a = config.parse_arg(
        arg,
        pretrained="",
        branch="adv",
        dataset="cifar10",
        epochs=25,
        milestones="",
        decay="code",
        random_init=False,
    )
    c = config.acl_select(config.cifar_base(a["dataset"], "resnet18", paper="acl"), metric="robust")
    c.name = f"acl_finetune:{a['branch']},{a['dataset']}"
    c.method = "trades" if a["random_init"] else "trades_finetune"
    c.model.update(dict(head="identity", bn="single", normalization="imagenet"))
    c.init.update(dict(workdir=a["pretrained"], bn_branch=a["branch"], reset_classifier=True))
    c.loss.trades_beta = 6.0
    c.attack.update(
        dict(eps=8 / 255, step_size=2 / 255, num_steps=10, init="normal", bn_mode="eval", clip_start=False)
    )
    c.optim.update(
        dict(
            name="sgd",
            learning_rate=0.1,
            momentum=0.9,
            weight_decay=2e-4,
            schedule="piecewise",
            decay_epochs=config.multistep_epochs(milestones(a), a["decay"]),
            decay_factors=(0.1, 0.01),
            num_epochs=a["epochs"],
        )
    )
    return config.smoke(c) if a["smoke"] else c
