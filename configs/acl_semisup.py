"""ACL semi-supervised (ACL §2.2.1, Eq. 3, Table 2; SPEC 3.7): one command runs the three stages
into one workdir (ascl_jax/train/semisup.py), each resumable.

  --config configs/acl_semisup.py:fraction=0.01    (1% = 450 labelled of the 45k split; 0.1 = 4500)
  --config configs/acl_semisup.py:smoke            (digits, tiny encoder, a few steps per stage)

1. ACL(DS) pre-training on all of train[:45000] (configs/acl_pretrain.py).
2. Teacher: CE on the labelled subset from the ACL weights with the clean BN set, SGD 0.1, 100 epochs
   (decays 40, 60); its logits on un-augmented images are the soft pseudo-labels.
3. Student: from the ACL weights with the adversarial BN set; per step a labelled sub-batch (2 for
   1%, 25 for 10%) and an unlabelled one (198 / 225); CE-PGD-10 (2/255, 8/255) against true /
   pseudo labels; loss Eq. 3 with alpha 0.5, T 1, beta 6; SGD 0.1, wd 5e-4, 15 epochs (decays 5, 10).
Expected (CIFAR-10, ResNet-18, ACL Table 2) TA/RA: 10% labels 76.66/51.09, 1% labels 75.66/50.67.
"""

import ml_collections

from ascl_jax import config


def get_config(arg=None):
    a = config.parse_arg(arg, fraction=0.01, dataset="cifar10")
    smoke = a["smoke"]
    pre = config.load("acl_pretrain", f"variant=ds,dataset={a['dataset']}" + (",smoke" if smoke else ""))
    fine = config.load("acl_finetune", f"dataset={a['dataset']}" + (",smoke" if smoke else ""))
    pre.data.train_split = "train[:45000]"
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
    teacher.init.update(dict(bn_branch="clean", reset_classifier=True))
    teacher.optim.update(dict(num_epochs=100, decay_epochs=(40, 60), decay_factors=(0.1, 0.01)))
    teacher.eval.attacks = ("clean",)

    student = ml_collections.ConfigDict(fine.to_dict())
    student.name = f"acl_semisup:student,{a['fraction']}"
    student.method = "semi_student"
    student.data.label_fraction = a["fraction"]
    student.data.batch_size = 200 if a["fraction"] <= 0.01 else 250
    student.semi.update(
        dict(labelled_batch=2 if a["fraction"] <= 0.01 else 25, alpha=0.5, temperature=1.0, beta=6.0)
    )
    student.init.update(dict(bn_branch="adv", reset_classifier=True))
    student.attack.update(dict(init="uniform", bn_mode="eval", num_steps=10))
    student.optim.update(
        dict(weight_decay=5e-4, num_epochs=15, decay_epochs=(5, 10), decay_factors=(0.1, 0.01))
    )
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
