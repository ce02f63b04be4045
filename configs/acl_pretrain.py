"""ACL pre-training (ACL §2.2, Algorithm 1; SPEC 3.3-3.5), the first stage of ACL Tables 1, 3, 4, 5.

ResNet-18 with ACL's 3-layer MLP head (dual BN everywhere), batch 512, 1000 epochs, LARS lr 5.0,
wd 1e-6, 10 warm-up epochs then cosine; NT-Xent t=0.5; PGD-5 (8/255, 2/255) on the NT-Xent of both
views with BN in eval mode and an unclipped random start (8/255, 2/255 on CIFAR-10 and CIFAR-100:
`config.cifar_base(paper='acl')`); SimCLR augmentation, two views; all 50k training images (the
authors' train_simCLR.py reads the whole training set); no evaluation, the last checkpoint.
  --config configs/acl_pretrain.py:variant=ds,dataset=cifar10   (variant: s2s, a2a, a2s, ds)
  --config configs/acl_pretrain.py:variant=ds,bn=single          (Table 4 SingleBN column)
Then fine-tune with configs/acl_finetune.py or evaluate linearly with configs/acl_linear.py.
"""

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, variant="ds", dataset="cifar10", bn="")
    c = config.cifar_base(a["dataset"], "resnet18", paper="acl")
    c.name = f"acl_pretrain:{a['variant']},{a['dataset']}" + (f",bn={a['bn']}" if a["bn"] else "")
    c.method = "acl_pretrain"
    c.data.update(dict(batch_size=512, augment="simclr", num_views=2))
    c.model.update(
        dict(
            head="acl_mlp",
            normalization="imagenet",
            bn=a["bn"] or ("single" if a["variant"] in ("s2s", "a2a") else "dual"),
        )
    )
    c.loss.update(dict(acl_variant=a["variant"], acl_temperature=0.5, acl_alpha=1.0, acl_average=True))
    c.attack.update(
        dict(eps=8 / 255, step_size=2 / 255, num_steps=5, bn_mode="eval", clip_start=False, init="uniform")
    )
    c.optim.update(
        dict(
            name="lars",
            learning_rate=5.0,
            momentum=0.9,
            weight_decay=1e-6,
            lars_eta=0.001,
            schedule="warmup_cosine",
            warmup_epochs=10,
            final_lr=1e-6,
            num_epochs=1000,
        )
    )
    c.eval.attacks = ()  # the encoder has no trained classifier yet: fine-tune or probe it
    c.eval.autoattack = "none"
    c.eval.checkpoint = "last"  # train_simCLR.py's model_1000.pt is fine-tuned / probed
    c.checkpoint_every_steps = 2000
    if a["smoke"]:
        c = config.smoke(c)
        c.optim.warmup_epochs = 0
    return c
