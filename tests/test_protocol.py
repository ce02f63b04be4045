"""Each config holds its paper's protocol; the README's protocol table is the generator's output.

The expected values below are written out from the papers' text and the authors' code as
SPEC.md reports it (section / table cited per value), NOT read from the configs, so a config
that drifts from its paper fails here. Also: the original-CIFAR test order (tfds 'id'), the
'shift_flip' augmentation against scipy, the MultiStepLR milestone convention, orgSCL's
un-normalised SupCon.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ascl_jax import config, data

ROOT = pathlib.Path(__file__).resolve().parents[1]
E8, S2 = 8 / 255, 2 / 255


def _script():
    spec = importlib.util.spec_from_file_location("protocol_table", ROOT / "scripts" / "protocol_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- README table


def test_readme_protocol_block_is_the_generated_table():
    pt = _script()
    readme = (ROOT / "README.md").read_text()
    assert pt.block(readme) == pt.table(), "README is stale: run scripts/protocol_table.py --write"
    assert f"## Protocols\n\n{pt.START}\n" in readme


def test_rewrite_replaces_only_the_marked_block():
    pt = _script()
    text = f"# t\nbefore\n{pt.START}\nold\nrows\n{pt.END}\nafter\n"
    out = pt.rewrite(text, "| a |\n|---|")
    assert out == f"# t\nbefore\n{pt.START}\n| a |\n|---|\n{pt.END}\nafter\n"
    with pytest.raises(ValueError, match="protocol-table:start"):
        pt.rewrite("no markers here\n", "x")
    with pytest.raises(ValueError, match="in that order"):
        pt.block(f"{pt.END}\n{pt.START}\n")


# ----------------------------------------------------------------------------- papers' values

# ASCL, evaluation (ASCL §4.1 "Attack Setting"; appendix §6 "Attack Setting"): PGD and mPGD with
# k = 250 (CIFAR-10 eps 8/255, eta 2/255; CIFAR-100 eps 0.01, eta 0.001) on the full test set;
# AutoAttack, standard version, on 1000 test samples; the first 1000 = the authors' torchvision
# order (SPEC 1.6: "AutoAttack-standard on the first 1000 test images").
ASCL_EVAL = {
    "eval.attacks": ("clean", "pgd", "mpgd", "autoattack"),
    "eval.pgd_steps": 250,
    "eval.mpgd_steps": 250,
    "eval.num_examples": -1,
    "eval.autoattack": "standard",
    "eval.autoattack_examples": 1000,
    "data.test_order": "original",
    # the authors' checkpoint (SPEC 1.6, 02a): best PGD robust accuracy on the test set, every epoch
    "eval.checkpoint": "best",
    "eval.select_on": "test",
    "eval.select_metric": "robust",
    "eval.select_every": 1,
    "eval.select_examples": 10_000,
}
# ASCL training attack (§4.1 "Generating Adversarial Examples for Defenders"): k = 10.
ASCL_C10 = {
    "attack.num_steps": 10,
    "attack.eps": E8,
    "attack.step_size": S2,
    "eval.eps": E8,
    "eval.step_size": S2,
}
ASCL_C100 = {
    "attack.num_steps": 10,
    "attack.eps": 0.01,
    "attack.step_size": 0.001,
    "eval.eps": 0.01,
    "eval.step_size": 0.001,
}
# ASCL appendix §6 "General Setting": ResNet20 as Pang et al. (2019): Adam, lr 1e-3, 1e-4, 1e-5, 1e-6
# at epochs 0, 80, 120, 160; 200 epochs, batch 128. §4.1 "Contrastive Learning Setting": tau 0.07.
RESNET20 = {
    "model.arch": "resnet20",
    "optim.name": "adam",
    "optim.learning_rate": 1e-3,
    "optim.decay_epochs": (80, 120, 160),
    "optim.decay_factors": (0.1, 0.01, 0.001),
    "optim.num_epochs": 200,
    "data.batch_size": 128,
}
# ASCL appendix §6: ResNet18 / WideResNet as Pang et al. (2020): SGD, lr 0.1, 0.01, 0.001 at epochs
# 0, 100, 150 ("momentum 5e-4" = weight decay 5e-4, SPEC 1.8); 200 epochs, batch 128.
SGD200 = {
    "optim.name": "sgd",
    "optim.learning_rate": 0.1,
    "optim.weight_decay": 5e-4,
    "optim.decay_epochs": (100, 150),
    "optim.decay_factors": (0.1, 0.01),
    "optim.num_epochs": 200,
    "data.batch_size": 128,
}
# ACL §3 "Experimental settings": PGD "following all hyperparameters used by [1]" (8/255, 2/255, on
# CIFAR-10 and CIFAR-100 alike; SPEC 3.6); evaluation PGD-20 (SPEC 3.6 eval_adv_test, num_steps_test).
ACL_EVAL = {
    "eval.eps": E8,
    "eval.step_size": S2,
    "eval.attacks": ("clean", "pgd"),
    "eval.pgd_steps": 20,
    "eval.num_examples": -1,
    "data.test_order": "original",
}
# ACL §3.1.1: "The fine-tuned models are selected based on the held-out validation RA"; the
# held-out split is 5000 of the 50k (SPEC 3.6: 45k train_idx_std / 5k valid_idx_std).
ACL_SELECT = {
    "data.train_split": "train",
    "data.val_examples": 5000,
    "eval.checkpoint": "best",
    "eval.select_on": "val",
    "eval.select_every": 1,
    "eval.select_examples": 5000,
}
# ACL §3.1.1: TRADES with 1/lambda = 6, SGD momentum 0.9, batch 128, 25 epochs, lr 0.1 decayed x10 at
# epochs 15 and 20; wd 2e-4, PGD-10 from x + 0.001 N(0,1) with BN eval, start unclipped (SPEC 3.6).
# MultiStepLR stepped at the start of each 1-indexed epoch: 0-indexed decay epochs 14, 19.
ACL_FINETUNE = {
    "loss.trades_beta": 6.0,
    "optim.name": "sgd",
    "optim.learning_rate": 0.1,
    "optim.momentum": 0.9,
    "optim.weight_decay": 2e-4,
    "data.batch_size": 128,
    "optim.num_epochs": 25,
    "optim.decay_epochs": (14, 19),
    "optim.decay_factors": (0.1, 0.01),
    "attack.num_steps": 10,
    "attack.eps": E8,
    "attack.step_size": S2,
    "attack.init": "normal",
    "attack.bn_mode": "eval",
    "attack.clip_start": False,
    "eval.select_metric": "robust",
    "model.arch": "resnet18",  # ACL §3.1.1 "we use ResNet-18"
}

CASES = [
    # ASCL Table 2 (ResNet20), both datasets, three rows.
    (
        "ascl_table2",
        "row=ours,dataset=cifar10",
        {**RESNET20, **ASCL_EVAL, **ASCL_C10, "loss.temperature": 0.07},
    ),
    ("ascl_table2", "row=ours,dataset=cifar100", {**RESNET20, **ASCL_EVAL, **ASCL_C100}),
    ("ascl_table2", "row=adv,dataset=cifar100", {**RESNET20, **ASCL_EVAL, **ASCL_C100}),
    # TRADES baseline as the ASCL authors' trades.py runs it: model.train() in the attack, start
    # x + 0.001 N(0, 1) not clipped (SPEC 1.1 item 9 / the authors' trades.py).
    (
        "ascl_table2",
        "row=trades,dataset=cifar10",
        {**RESNET20, **ASCL_EVAL, **ASCL_C10, "attack.bn_mode": "train", "attack.clip_start": False},
    ),
    ("ascl_table4", "strategy=hard", {**RESNET20, **ASCL_EVAL, **ASCL_C10}),
    ("ascl_table5", "head=p2", {**RESNET20, **ASCL_EVAL, **ASCL_C10}),
    ("ascl_table7", "", {**RESNET20, **ASCL_EVAL, **ASCL_C10}),
    # ASCL Table 3 caption: AutoAttack "on the full test set"; appendix §6: Ours* omits the natural
    # CE and the VAT loss.
    (
        "ascl_table3",
        "arch=wrn34_10",
        {
            **SGD200,
            **ASCL_EVAL,
            **ASCL_C10,
            "eval.autoattack_examples": 10_000,
            "model.arch": "wrn34_10",
            "loss.nat_ce_weight": 0.0,
            "loss.vat_weight": 0.0,
        },
    ),
    ("ascl_table6", "row=adv_vat_scl,arch=resnet18", {**SGD200, **ASCL_EVAL, **ASCL_C10}),
    # Table 6 orgSCL: "the original SCL version with two standard data-augmentations", as the
    # authors' scl_nat_2trans: SupCon only, tau 0.07, on the un-normalised 128-d head output.
    (
        "ascl_table6",
        "row=orgscl",
        {
            **SGD200,
            "method": "supcon",
            "data.num_views": 2,
            "loss.nat_ce_weight": 0.0,
            "loss.temperature": 0.07,
            "loss.supcon_normalize": False,
            "loss.feature": "proj",
            "model.head": "p1",
            "model.proj_dim": 128,
            # the classifier is untrained (02b_linear_train.py trains it on the last model.pt):
            # nothing is evaluated, the last checkpoint is kept
            "eval.attacks": (),
            "eval.checkpoint": "last",
        },
    ),
    # orgscl_ce trains without an adversary: its PGD accuracy is ~0 at every epoch, so selecting
    # by robust accuracy would keep an arbitrary early epoch; the headline is the last checkpoint.
    (
        "ascl_table6",
        "row=orgscl_ce",
        {
            **SGD200,
            "method": "supcon",
            "data.num_views": 2,
            "loss.nat_ce_weight": 1.0,
            "loss.temperature": 0.07,
            "loss.supcon_normalize": True,
            "eval.checkpoint": "last",
        },
    ),
    # The release (SPEC 1.6, 1.8, 4; 02e_evaluate_robustness.py): PGD-200 at eps 0.031 step 0.007 and
    # AutoAttack APGD-CE + APGD-T on all 10,000 test images, model_best.pt; SGD 0.1, wd 5e-4,
    # 120 epochs, decays at 100 / 105 / 110; PGD-10 0.031 / 0.007 training.
    (
        "ascl_released",
        "arch=resnet18",
        {
            "eval.attacks": ("clean", "pgd", "autoattack"),
            "eval.pgd_steps": 200,
            "eval.eps": 0.031,
            "eval.step_size": 0.007,
            "eval.autoattack": "custom",  # the release's AutoAttack(version='custom')
            "eval.autoattack_attacks": ("apgd-ce", "apgd-t"),
            "eval.autoattack_examples": 10_000,
            "eval.checkpoint": "best",
            "eval.select_on": "test",
            "attack.eps": 0.031,
            "attack.step_size": 0.007,
            "attack.num_steps": 10,
            "optim.num_epochs": 120,
            "optim.decay_epochs": (100, 105, 110),
            "optim.weight_decay": 5e-4,
            "loss.temperature": 0.2,
        },
    ),
    # ACL pre-training (ACL §3: batch 512, 1000 epochs, PGD 5 steps; SPEC 3.5: LARS 5.0, wd 1e-6,
    # 10 warm-up epochs then cosine; all 50k training images), the same eps on CIFAR-100.
    (
        "acl_pretrain",
        "variant=ds,dataset=cifar100",
        {
            "data.batch_size": 512,
            "optim.num_epochs": 1000,
            "optim.name": "lars",
            "optim.learning_rate": 5.0,
            "optim.weight_decay": 1e-6,
            "optim.warmup_epochs": 10,
            "attack.num_steps": 5,
            "attack.eps": E8,
            "attack.step_size": S2,
            "attack.clip_start": False,
            "data.train_split": "train",
            "data.val_examples": 0,
            "eval.checkpoint": "last",
        },
    ),
    ("acl_finetune", "pretrained=w", {**ACL_FINETUNE, **ACL_EVAL, **ACL_SELECT}),
    ("acl_finetune", "pretrained=w,dataset=cifar100", {**ACL_FINETUNE, **ACL_EVAL, **ACL_SELECT}),
    # The README's CIFAR-10 command (--epochs 100 --decreasing_lr 40,60) and CIFAR-100 command
    # (--epochs 20 --decreasing_lr 10,15), SPEC 3.6 / 3.8, with the MultiStepLR shift.
    ("acl_finetune", "pretrained=w,epochs=100", {"optim.num_epochs": 100, "optim.decay_epochs": (39, 59)}),
    (
        "acl_finetune",
        "pretrained=w,dataset=cifar100,epochs=20",
        {**ACL_EVAL, "optim.num_epochs": 20, "optim.decay_epochs": (9, 14)},
    ),
    ("acl_finetune", "pretrained=w,decay=paper", {"optim.decay_epochs": (15, 20)}),
    (
        "acl_linear",
        "pretrained=w,dataset=cifar100",
        {**ACL_EVAL, **ACL_SELECT, "optim.decay_epochs": (14, 19)},
    ),
]

# ACL semi-supervised (ACL §2.2.1, Table 2; SPEC 3.7): step i on all data; step ii 100 epochs,
# milestones 40, 60, the best natural validation accuracy (best_model.pt, --checkpoint_clean);
# step iii 15 epochs, milestones 5, 10, alpha 0.5, T 1, beta 6, wd 5e-4, best validation RA.
SEMI_STAGES = {
    "pretrain": {"data.train_split": "train", "data.val_examples": 0, "optim.num_epochs": 1000},
    "teacher": {
        **ACL_SELECT,
        "method": "nat",
        "optim.num_epochs": 100,
        "optim.decay_epochs": (39, 59),
        "eval.select_metric": "clean",
        "data.drop_remainder": False,
        "data.label_fraction": 0.01,
    },
    "student": {
        **ACL_SELECT,
        **ACL_EVAL,
        "optim.num_epochs": 15,
        "optim.decay_epochs": (4, 9),
        "optim.weight_decay": 5e-4,
        "semi.alpha": 0.5,
        "semi.temperature": 1.0,
        "semi.beta": 6.0,
        "semi.labelled_batch": 2,
        "data.batch_size": 200,
        "eval.select_metric": "robust",
    },
}


def _get(c, dotted):
    for part in dotted.split("."):
        c = c[part]
    return c


def _check(c, expected, where):
    for field, want in expected.items():
        got = _get(c, field)
        if isinstance(want, float):
            assert math.isclose(got, want, rel_tol=1e-9), f"{where}: {field}={got!r}, paper: {want!r}"
        elif isinstance(want, tuple):
            assert tuple(got) == want, f"{where}: {field}={tuple(got)!r}, paper: {want!r}"
        else:
            assert got == want, f"{where}: {field}={got!r}, paper: {want!r}"


@pytest.mark.parametrize("name,arg,expected", CASES, ids=[f"{n}:{a}" for n, a, _ in CASES])
def test_config_matches_its_paper(name, arg, expected):
    c = config.load(name, arg)
    config.validate(c)
    _check(c, expected, f"{name}:{arg}")


def test_acl_semisup_stages_match_the_paper():
    c = config.load("acl_semisup", "fraction=0.01")
    for stage, expected in SEMI_STAGES.items():
        _check(c.stages[stage], expected, f"acl_semisup {stage}")
    # 1% of the 45k pool (450) at batch 128, the last batch kept: 4 steps per epoch (SPEC 3.7).
    teacher = c.stages.teacher.data
    assert data.steps_per_epoch(teacher, subset="labelled") == 4
    assert math.ceil(450 / teacher.batch_size) == 4 and 450 // teacher.batch_size == 3


def test_demo_keeps_the_last_checkpoint():
    assert config.load("default").eval.checkpoint == "last"


def test_acl_finetune_milestones_and_bad_args():
    assert config.multistep_epochs((15, 20)) == (14, 19)
    assert config.multistep_epochs((15, 20), "paper") == (15, 20)
    assert tuple(config.load("acl_finetune", "epochs=30,milestones=20/25").optim.decay_epochs) == (19, 24)
    with pytest.raises(config.ConfigError, match=r"epochs=30.*\[20, 25, 100\].*milestones"):
        config.load("acl_finetune", "epochs=30")
    with pytest.raises(config.ConfigError, match="decay='later'.*'code', 'paper'"):
        config.load("acl_finetune", "decay=later")


def test_new_enumerated_fields_are_checked():
    c = config.load("ascl_table2")
    c.eval.select_metric = "loss"
    with pytest.raises(config.ConfigError, match=r"eval.select_metric='loss'.*'robust', 'clean'"):
        config.validate(c)
    c = config.load("ascl_table2")
    c.data.test_order = "sorted"
    with pytest.raises(config.ConfigError, match=r"data.test_order='sorted'.*'tfds', 'original'"):
        config.validate(c)


# ----------------------------------------------------------------------------- CIFAR test order

N_TEST = 40
STORED = np.random.default_rng(3).permutation(N_TEST)  # tfds' stored order: original numbers


def _mock_as_dataset(self, split, *args, **kwargs):
    """A cifar10 'test' split stored in the order STORED, each image filled with its original
    number, ids 'test_<number>' as tfds writes them."""
    n = STORED
    images = np.broadcast_to(n[:, None, None, None], (N_TEST, 32, 32, 3)).astype(np.uint8)
    ids = np.array([f"test_{i:05d}".encode() for i in n])
    return tf.data.Dataset.from_tensor_slices(
        {"id": ids, "image": images, "label": (n % 10).astype(np.int64)}
    )


def test_original_test_order_restores_the_authors_subset():
    cfg = data.default_config("cifar10")
    cfg.update(num_train=N_TEST, num_test=N_TEST, batch_size=8, eval_batch_size=8, augment="none")
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        x_tfds, _ = data.load_eval_arrays(cfg, "test", num_examples=10)
        cfg.test_order = "original"
        x, y = data.load_eval_arrays(cfg, "test", num_examples=10)
        x_all, _ = data.load_eval_arrays(cfg, "test")
    number = lambda a: np.rint(a[:, 0, 0, 0] * 255).astype(int)  # noqa: E731
    np.testing.assert_array_equal(number(x_tfds), STORED[:10])  # tfds' order: not the original
    np.testing.assert_array_equal(number(x), np.arange(10))  # the first 10 of CIFAR's file order
    np.testing.assert_array_equal(y, np.arange(10) % 10)
    np.testing.assert_array_equal(number(x_all), np.arange(N_TEST))


def test_original_order_rejects_ids_without_a_number():
    def bad(self, split, *args, **kwargs):
        ds = _mock_as_dataset(self, split)
        return ds.map(lambda ex: {**ex, "id": tf.constant(b"shuffled")})

    cfg = data.default_config("cifar10")
    cfg.update(num_train=N_TEST, num_test=N_TEST, batch_size=8, test_order="original")
    with tfds.testing.mock_data(as_dataset_fn=bad), pytest.raises(ValueError, match="test_order='tfds'"):
        data.load_eval_arrays(cfg, "test", num_examples=5)


# ----------------------------------------------------------------------------- augmentation


def test_shift_flip_is_keras_random_shift():
    """ASCL §4.1 "random shifts with scale 10%": bilinear shift, nearest-edge fill (scipy order 1)."""
    import scipy.ndimage as nd

    from ascl_jax.data import augment

    x = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    for dy, dx in [(0.0, 0.0), (2.0, -3.0), (0.4, -1.7), (-3.2, 2.9)]:
        got = augment.translate(tf.constant(x), dy, dx).numpy()
        want = nd.shift(x.astype(np.float64), (-dy, -dx, 0), order=1, mode="nearest")
        np.testing.assert_allclose(got, want, atol=1e-5)
    # The drawn shift stays within 10%: an impulse moves by at most 3.2 pixels.
    img = np.zeros((32, 32, 1), np.float32)
    img[16, 16] = 1.0
    for s in range(20):
        out = augment.shift_flip(tf.constant(img), tf.constant([s, 7], tf.int64), flip=False).numpy()[..., 0]
        rows, cols = np.nonzero(out > 1e-6)
        assert np.abs(rows - 16).max() <= 4 and np.abs(cols - 16).max() <= 4
    c = config.load("ascl_table2")
    c.data.augment = "shift_flip"
    config.validate(c)


# ----------------------------------------------------------------------------- orgSCL


def test_orgscl_step_is_supcon_on_raw_head_features():
    """Table 6 orgSCL (the authors' scl_nat_2trans): the loss is SupCon alone on the un-normalised
    p1 output of both views (no CE), against losses.supcon_loss on the same features."""
    import jax.numpy as jnp
    from shared_cases import table6_first_step

    from ascl_jax import losses

    m, out, batch = table6_first_step("orgscl", test_order="tfds")
    f, b = out["proj"], batch["label"].shape[0]
    assert f.shape == (2 * b, 128)
    want = losses.supcon_loss(jnp.stack([f[:b], f[b:]], 1), batch["label"])
    normalised = losses.supcon_loss(
        jnp.stack([losses.l2_normalize(f[:b]), losses.l2_normalize(f[b:])], 1), batch["label"]
    )
    np.testing.assert_allclose(m["loss"], want, rtol=1e-5)
    assert abs(float(want) - float(normalised)) > 1e-3  # the switch matters here
