"""ACL semi-supervised (ACL §2.2.1, §3.1.2, Eq. 3, Table 2; SPEC 3.7): one command runs the three
stages into one workdir (ascl_jax/train/semisup.py), each resumable.

  --config configs/acl_semisup.py:fraction=0.01    (1% = 450 labelled of the 45k split; 0.1 = 4500)
  --config configs/acl_semisup.py:smoke            (digits, tiny encoder, a few steps per stage)

1. ACL(DS) pre-training on all 50k training images (configs/acl_pretrain.py; ACL §2.2.1 step i,
   the authors' train_simCLR.py reads the whole training set).
2. Teacher: CE on the labelled subset from the ACL weights with the clean BN set, SGD 0.1, 100 epochs
   (MultiStepLR milestones 40, 60), every batch kept (450 at 128: 4 steps per epoch, no drop_last);
   the checkpoint of best validation NATURAL accuracy (the authors' best_model.pt, which stage 3 reads
   with --checkpoint_clean); its logits on un-augmented images are the soft pseudo-labels.
3. Student: from the ACL weights with the adversarial BN set; per step a labelled sub-batch (2 for
   1%, 25 for 10%) and an unlabelled one (198 / 225); CE-PGD-10 (2/255, 8/255) against true /
   pseudo labels; loss Eq. 3 with alpha 0.5, T 1, beta 6; SGD 0.1, wd 5e-4, 15 epochs (milestones 5,
   10); the checkpoint of best validation PGD robust accuracy (ata_best_model.pt).
Stages 2-3 hold out the 5000 validation images (`config.acl_select`); decay=code (default): each
milestone m lowers the lr from 0-indexed epoch m - 1 (MultiStepLR stepped at epoch starts);
decay=paper: from epoch m.
Expected (CIFAR-10, ResNet-18, ACL Table 2) TA/RA: 10% labels 76.66/51.09, 1% labels 75.66/50.67.
"""

import ml_collections

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, fraction=0.01, dataset="cifar10", decay="code")
    smoke = a["smoke"]
    pre = config.load("acl_pretrain", f"variant=ds,dataset={a['dataset']}" + (",smoke" if smoke else ""))
    fine = config.load(
        "acl_finetune", f"dataset={a['dataset']},decay={a['decay']}" + (",smoke" if smoke else "")
    )
    pre.data.train_split = "train"  # all 50k
    if smoke:  # the embedded digits dataset
        for c in (pre, fine):
            c.data.name, c.model.normalization = "digits", "digits"
            c.data.num_train, c.data.num_test, c.data.crop_padding, c.data.flip = -1, -1, 1, False
            c.data.train_split = "train"
        pre.data.augment = "crop_flip"

    teacher = ml_collections.ConfigDict(fine.to_dict())
    teacher.name = f"acl_semisup:teacher,{a['fraction']}"
    teacher.method = "nat"
    teacher.train_subset = "labelled"
    teacher.data.label_fraction = a["fraction"]
    teacher.data.drop_remainder = False  # 450 / 128: 4 steps per epoch, the last of 66 images
    teacher.init.update(dict(bn_branch="clean", reset_classifier=True))
    teacher.optim.update(
        dict(
            num_epochs=100,
            decay_epochs=config.multistep_epochs((40, 60), a["decay"]),
            decay_factors=(0.1, 0.01),
        )
    )
    teacher.eval.attacks = ("clean",)
    teacher.eval.select_metric = "clean"  # train_trades.py --trainmode normal: best_model.pt

    student = ml_collections.ConfigDict(fine.to_dict())
    student.name = f"acl_semisup:student,{a['fraction']}"
    student.method = "semi_student"
    student.data.label_fraction = a["fraction"]
    student.data.batch_size = 200 if a["fraction"] <= 0.01 else 250
    student.semi.update(
        dict(labelled_batch=2 if a["fraction"] <= 0.01 else 25, alpha=0.5, temperature=1.0, beta=6.0)
    )
    student.init.update(dict(bn_branch="adv", reset_classifier=True))
    # ACL utils.pgd_attack: uniform start, not clipped before the first step.
    student.attack.update(dict(init="uniform", bn_mode="eval", num_steps=10, clip_start=False))
    student.optim.update(
        dict(
            weight_decay=5e-4,
            num_epochs=15,
            decay_epochs=config.multistep_epochs((5, 10), a["decay"]),
            decay_factors=(0.1, 0.01),
        )
    )
    student.eval.select_metric = "robust"  # ata_best_model.pt
    if smoke:
        for c in (teacher, student):
            c.num_train_steps, c.optim.num_epochs = 4, 1
            c.attack.num_steps = 2
        student.data.batch_size, student.semi.labelled_batch = 16, 4
        teacher.data.batch_size = 16
        teacher.data.label_fraction = student.data.label_fraction = 0.1  # 144 of 1437 digits

    c = config.base_config()
    c.name = f"acl_semisup:{a['fraction']},{a['dataset']}" + (":smoke" if smoke else "")
    c.method = "semi_supervised"
    c.data = pre.data
    c.model = pre.model
    c.stages = ml_collections.ConfigDict(dict(pretrain=pre, teacher=teacher, student=student))
    return c
