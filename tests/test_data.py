"""Tests of ascl_jax.data (sources, semisup, pipeline, augment): offline (digits + tfds mock_data), fast.

Covers: the fixed digits split; batch format, shapes, ranges and labels; exact per-epoch
permutations; determinism and resume from a step (across an epoch boundary); per-process sharding;
two views; the augmentations keep [0, 1]; CIFAR-10/100 through ``tfds.testing.mock_data`` (crop_flip
and simclr); the first N evaluation examples; the labelled/unlabelled split; a fast, clear error for
an unprepared tfds dataset; config errors.
"""

import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ascl_jax import data
from ascl_jax.data import augment as aug
from ascl_jax.data import sources


def _digits(**kw):
    cfg = data.default_config("digits")
    cfg.update(kw)
    return cfg


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------------------------- digits


def test_digits_split_sizes_ranges_and_stratification():
    from sklearn.datasets import load_digits

    cfg = _digits()
    info = data.dataset_info(cfg)
    assert info == dict(
        num_classes=10, image_shape=(8, 8, 1), num_train=1437, num_test=360, normalization="digits"
    )
    x_tr, y_tr = data.load_eval_arrays(cfg, "train")
    x_te, y_te = data.load_eval_arrays(cfg, "test")
    assert x_tr.shape == (1437, 8, 8, 1) and x_te.shape == (360, 8, 8, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0 and x_te.max() == 1.0
    assert set(np.unique(y_tr)) == set(range(10)) == set(np.unique(y_te))
    # Stratified: every class has 360 * n_c / 1797 test images, +-1.
    d = load_digits()
    counts = np.bincount(d.target)
    assert np.all(np.abs(np.bincount(y_te) - 360 * counts / 1797) < 1)
    # Train + test is exactly the dataset (as a multiset of (image, label) rows).
    rows = lambda x, y: sorted(
        map(
            bytes,
            np.concatenate(
                [np.rint(x.reshape(len(y), -1) * 16).astype(np.uint8), y[:, None].astype(np.uint8)], 1
            ),
        )
    )
    assert rows(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])) == rows(d.images / 16, d.target)
    # Fixed: the same split on every call.
    np.testing.assert_array_equal(data.load_eval_arrays(cfg, "test")[1], y_te)


def test_train_batch_format_labels_and_epoch_permutation():
    cfg = _digits(augment="none", batch_size=100)
    x_tr, y_tr = data.load_eval_arrays(cfg, "train")
    spe = data.steps_per_epoch(cfg)
    # drop_remainder=False (default): ceil(1437 / 100) = 15 steps, the last one of 37 examples
    assert spe == 15
    batches = _take(data.make_train_iterator(cfg, seed=0), spe + 1)
    assert [len(b["label"]) for b in batches] == [100] * 14 + [37, 100]
    b = batches[0]
    assert set(b) == {"image", "label", "index"}
    assert b["image"].shape == (100, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (100,) and b["label"].dtype == np.int32
    assert b["index"].shape == (100,) and b["index"].dtype == np.int32
    for b in batches:
        np.testing.assert_array_equal(b["label"], y_tr[b["index"]])
        np.testing.assert_array_equal(b["image"], x_tr[b["index"]])  # augment='none'
    epoch0 = np.concatenate([b["index"] for b in batches[:spe]])
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(1437))  # every example once per epoch
    assert not np.array_equal(batches[spe]["index"], batches[0]["index"])  # reshuffled


def test_steps_per_epoch_of_the_reference_configs():
    """The schedule counts the authors' batches per epoch (split sizes from the code, no data):
    ACL pre-training, CIFAR-10 train (50000) at 512, no drop_last: ceil = 98 (SPEC 3.5); ASCL's
    two-view loader at 128: 391; ASCL's single-view load_data(drop_last=True): 390."""
    from ascl_jax import config as config_lib

    acl = config_lib.load("acl_pretrain")
    assert (acl.data.batch_size, acl.data.drop_remainder) == (512, False)
    assert data.steps_per_epoch(acl.data) == 98 == -(-50000 // 512)
    assert data.steps_per_epoch(acl.data, drop_remainder=True) == 97
    layout = data.epoch_layout(acl.data)
    assert layout.last_local == (50000 - 97 * 512,) == (336,)
    released = config_lib.load("ascl_released")
    assert data.steps_per_epoch(released.data) == 391
    table2 = config_lib.load("ascl_table2", "row=ours")
    assert table2.data.drop_remainder and data.steps_per_epoch(table2.data) == 390


def test_kept_remainder_stream_padding_mask_and_resume():
    """A kept remainder: the last batch of every epoch holds the remaining examples (real rows
    only, or padded to `last_batch` with 'mask'); the full batches are the drop_remainder stream's;
    resuming across padded epochs equals the uninterrupted stream."""
    cfg = _digits(augment="crop_flip", batch_size=200)  # 1437 = 7 x 200 + 37
    spe = data.steps_per_epoch(cfg)
    assert spe == 8
    plain = _take(data.make_train_iterator(cfg, seed=3), 2 * spe)
    assert [len(b["label"]) for b in plain[:spe]] == [200] * 7 + [37]
    assert all("mask" not in b for b in plain)
    dropped = _take(data.make_train_iterator(cfg, seed=3, drop_remainder=True), 7)
    _assert_batches_equal(plain[:7], dropped)  # epoch 0's full batches are the same examples
    padded = _take(data.make_train_iterator(cfg, seed=3, last_batch=40), 2 * spe)
    for k in (spe - 1, 2 * spe - 1):
        last = padded[k]
        assert last["image"].shape == (40, 8, 8, 1)
        np.testing.assert_array_equal(last["mask"], np.arange(40) < 37)
        for key in ("image", "label", "index"):
            np.testing.assert_array_equal(last[key][:37], plain[k][key])
        epoch = np.concatenate([b["index"] for b in padded[k - spe + 1 : k]] + [last["index"][:37]])
        np.testing.assert_array_equal(np.sort(epoch), np.arange(1437))
        assert set(last["index"][37:]) <= set(epoch)  # padding copies real examples
    _assert_batches_equal(
        [b for i, b in enumerate(padded) if i % spe != spe - 1],
        [b for i, b in enumerate(plain) if i % spe != spe - 1],
    )
    for k in (spe - 1, spe, spe + 3):
        resumed = _take(data.make_train_iterator(cfg, seed=3, start_step=k, last_batch=40), 2 * spe - k)
        _assert_batches_equal(padded[k:], resumed)


def test_batch_larger_than_the_split_is_a_config_error():
    from ascl_jax.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.batch_size.*1437"):
        data.steps_per_epoch(_digits(batch_size=2000))
    with pytest.raises(ConfigError, match=r"data\.batch_size.*100"):
        data.steps_per_epoch(_digits(label_fraction=0.1, train_split="train[:1000]"), subset="labelled")


@pytest.mark.parametrize("augment", ["crop_flip", "simclr"])
def test_augmented_batches_in_range(augment):
    cfg = _digits(augment=augment, batch_size=64)
    b = next(data.make_train_iterator(cfg, seed=1))
    assert b["image"].shape == (64, 8, 8, 1)
    assert b["image"].min() >= 0.0 and b["image"].max() <= 1.0
    x_tr, _ = data.load_eval_arrays(cfg, "train")
    assert not np.array_equal(b["image"], x_tr[b["index"]])  # something was augmented


def test_determinism_and_seed_dependence():
    cfg = _digits(augment="crop_flip", batch_size=64)
    a = _take(data.make_train_iterator(cfg, seed=5), 3)
    b = _take(data.make_train_iterator(cfg, seed=5), 3)
    c = _take(data.make_train_iterator(cfg, seed=6), 3)
    _assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["index"], c[0]["index"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])


@pytest.mark.parametrize("augment,views", [("crop_flip", 1), ("simclr", 2)])
def test_resume_equals_uninterrupted_across_epoch_boundary(augment, views):
    cfg = _digits(augment=augment, num_views=views, batch_size=200)
    spe = data.steps_per_epoch(cfg)  # 7
    fresh = _take(data.make_train_iterator(cfg, seed=3), spe + 4)
    for k in (spe - 2, spe + 1):  # resume before and after the epoch boundary
        resumed = _take(data.make_train_iterator(cfg, seed=3, start_step=k), spe + 4 - k)
        _assert_batches_equal(fresh[k:], resumed)


def test_process_sharding_disjoint_and_covering():
    cfg = _digits(augment="none", batch_size=64, eval_batch_size=100)
    spe = data.steps_per_epoch(cfg)
    train_idx = []
    for p in range(2):
        batches = _take(data.make_train_iterator(cfg, seed=0, process_index=p, process_count=2), spe)
        assert batches[0]["image"].shape == (32, 8, 8, 1)  # local share of the global batch
        idx = np.concatenate([b["index"] for b in batches])
        lo, hi = [(0, 719), (719, 1437)][p]  # tfds.even_splits of 1437 examples: 719 + 718
        assert len(np.unique(idx)) == len(idx) and idx.min() >= lo and idx.max() < hi
        train_idx.append(idx)
    assert not set(train_idx[0]) & set(train_idx[1])


def test_two_views_differ_share_labels():
    cfg = _digits(augment="crop_flip", num_views=2, batch_size=64, crop_padding=2)
    b = next(data.make_train_iterator(cfg, seed=0))
    assert b["image"].shape == (64, 2, 8, 8, 1) and b["label"].shape == (64,)
    differ = np.any(b["image"][:, 0] != b["image"][:, 1], axis=(1, 2, 3))
    assert differ.mean() > 0.8
    x_tr, y_tr = data.load_eval_arrays(cfg, "train")
    np.testing.assert_array_equal(b["label"], y_tr[b["index"]])


def test_eval_arrays_first_num_examples():
    cfg = _digits(eval_batch_size=100)
    x_te, y_te = data.load_eval_arrays(cfg, "test")
    x100, y100 = data.load_eval_arrays(cfg, "test", num_examples=100)
    np.testing.assert_array_equal(x100, x_te[:100])
    np.testing.assert_array_equal(y100, y_te[:100])


def test_label_split_and_subset_iterators():
    cfg = _digits(label_fraction=0.1, augment="none", train_split="train[:1000]")
    assert data.dataset_info(cfg)["num_train"] == 1000
    lab, unl = data.label_split(cfg)
    assert len(lab) == 100 and len(unl) == 900
    np.testing.assert_array_equal(np.sort(np.concatenate([lab, unl])), np.arange(1000))
    _, y = data.load_eval_arrays(cfg, "train[:1000]")
    assert np.all(np.abs(np.bincount(y[lab], minlength=10) - np.bincount(y) / 10) < 1)
    np.testing.assert_array_equal(data.label_split(cfg)[0], lab)  # deterministic
    assert data.steps_per_epoch(cfg, subset="labelled", batch_size=10) == 10
    it = data.make_train_iterator(cfg, seed=0, subset="labelled", batch_size=10)
    idx = np.concatenate([next(it)["index"] for _ in range(10)])
    np.testing.assert_array_equal(np.sort(idx), lab)  # one epoch = the labelled set
    b = next(
        data.make_train_iterator(
            cfg, seed=0, subset="unlabelled", batch_size=90, process_index=1, process_count=2
        )
    )
    assert b["index"].shape == (45,) and set(b["index"]) <= set(unl[450:])
    np.testing.assert_array_equal(b["label"], y[b["index"]])


# ------------------------------------------------------------------------------ augmentations


def test_augment_ops_keep_range_shape_and_are_deterministic():
    rng = np.random.default_rng(0)
    img = tf.constant(rng.random((32, 32, 3), np.float32))
    seed = tf.constant([1, 2], tf.int64)
    for fn in (
        lambda s: aug.crop_flip(img, s, padding=4, flip=True),
        lambda s: aug.random_resized_crop(img, s),
        lambda s: aug.color_jitter(img, s),
        lambda s: aug.simclr(img, s),
    ):
        outs = [fn(tf.constant([i, 7], tf.int64)).numpy() for i in range(8)]
        for o in outs:
            assert o.shape == (32, 32, 3) and o.min() >= 0.0 and o.max() <= 1.0
        np.testing.assert_array_equal(fn(seed).numpy(), fn(seed).numpy())
        assert len({o.tobytes() for o in outs}) > 1
    # crop_flip is a shift: the image is a translated copy (zeros shifted in), padding 0 = identity.
    np.testing.assert_array_equal(aug.crop_flip(img, seed, padding=0, flip=False).numpy(), img)
    # Grayscale channels are equal; 1-channel simclr is geometric only.
    gray = aug._grayscale_like(img).numpy()
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])
    out = aug.simclr(img[..., :1], seed, flip=False).numpy()
    assert out.shape == (32, 32, 1) and out.min() >= 0 and out.max() <= 1


def test_resized_crop_box_within_image_and_scale():
    for i in range(50):
        top, left, h, w = (
            int(v)
            for v in aug._resized_crop_box(tf.constant([i, 0], tf.int64), 32, 32, (0.1, 1.0), (3 / 4, 4 / 3))
        )
        assert 0 <= top <= 32 - h and 0 <= left <= 32 - w and 1 <= h <= 32 and 1 <= w <= 32
        assert 0.08 * 1024 <= h * w <= 1024


# ---------------------------------------------------------------------------- tfds (mocked)


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_mock_data_crop_flip_simclr_eval(name, num_classes):
    with tfds.testing.mock_data(num_examples=48):
        cfg = data.default_config(name)
        cfg.update(num_train=48, num_test=48, batch_size=16, eval_batch_size=32)
        assert data.dataset_info(cfg)["num_classes"] == num_classes
        b = next(data.make_train_iterator(cfg, seed=0))
        assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["image"].min() >= 0.0 and b["image"].max() <= 1.0
        assert b["label"].max() < num_classes and b["index"].max() < 48
        cfg.update(augment="simclr", num_views=2)
        it = data.make_train_iterator(cfg, seed=0, start_step=2)
        b = next(it)
        assert b["image"].shape == (16, 2, 32, 32, 3)
        assert b["image"].min() >= 0.0 and b["image"].max() <= 1.0
        x, y = data.load_eval_arrays(cfg, "test", num_examples=20)
        assert x.shape == (20, 32, 32, 3) and y.shape == (20,)
        assert x.min() >= 0.0 and x.max() <= 1.0
        cfg.update(num_train=40, train_split="train[:40]", label_fraction=0.25)
        lab, unl = data.label_split(cfg)
        assert len(lab) == 10 and len(unl) == 30


@pytest.fixture(scope="module")
def prepared_cifar10(tmp_path_factory):
    """A real (non-mock) prepared tfds cifar10 of 100 train / 30 test images, built offline.

    The source files have CIFAR's binary format; pixel value = original example number, label =
    number % 10. tfds' download is replaced by the local folder (no network).
    """
    from unittest import mock

    root = tmp_path_factory.mktemp("tfds")
    src = root / "src" / "cifar-10-batches-bin"
    src.mkdir(parents=True)

    def write(path, n, start):
        recs = [
            bytes([(start + i) % 10]) + np.full((3, 32, 32), start + i, np.uint8).tobytes() for i in range(n)
        ]
        path.write_bytes(b"".join(recs))

    for k in range(5):
        write(src / f"data_batch_{k + 1}.bin", 20, 20 * k)
    write(src / "test_batch.bin", 30, 0)
    (src / "batches.meta.txt").write_text("\n".join("abcdefghij"))
    tfds.disable_progress_bar()
    builder = tfds.builder("cifar10", data_dir=str(root / "data"))
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", lambda self, url: str(root / "src")
    ):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return str(root / "data")


def test_prepared_tfds_split_sharding_and_index(prepared_cifar10):
    cfg = data.default_config("cifar10")
    cfg.update(
        data_dir=prepared_cifar10,
        num_train=100,
        num_test=30,
        batch_size=20,
        eval_batch_size=16,
        augment="none",
    )
    data.check_prepared(cfg)
    x, y = data.load_eval_arrays(cfg, "train")
    orig = np.rint(x[:, 0, 0, 0] * 255).astype(int)  # original example number
    np.testing.assert_array_equal(np.sort(orig), np.arange(100))
    np.testing.assert_array_equal(y, orig % 10)
    cfg.update(batch_size=60)  # divisible by 1, 2 and 3 processes
    spec = sources.resolve(cfg)
    for pc in (1, 2, 3):  # index = position in the split, whatever the process count
        seen = np.full(100, -1)
        for p in range(pc):
            ex = sources.load_examples(spec, "train", 100, p, pc)
            assert np.all(seen[ex.index] == -1)
            seen[ex.index] = ex.image[:, 0, 0, 0]
        np.testing.assert_array_equal(seen, orig)
        for p in range(pc):
            it = data.make_train_iterator(cfg, seed=0, process_index=p, process_count=pc)
            for b in _take(it, 2):
                np.testing.assert_array_equal(np.rint(b["image"][:, 0, 0, 0] * 255), orig[b["index"]])
                np.testing.assert_array_equal(b["label"], y[b["index"]])
    # The ACL-style held-out split and the first N test images.
    cfg.update(train_split="train[:80]", num_train=80, batch_size=20)
    xv, _ = data.load_eval_arrays(cfg, "train[80:]", num_examples=20)
    np.testing.assert_array_equal(xv, x[80:])
    xt, yt = data.load_eval_arrays(cfg, "test", num_examples=10)
    assert xt.shape == (10, 32, 32, 3) and np.all(yt == np.rint(xt[:, 0, 0, 0] * 255) % 10)


def test_missing_tfds_dataset_fails_fast_and_clearly(tmp_path):
    cfg = data.default_config("cifar10")
    cfg.data_dir = str(tmp_path)
    t = time.time()
    with pytest.raises(data.DatasetNotPreparedError) as e:
        data.make_train_iterator(cfg, seed=0)
    assert time.time() - t < 2.0
    msg = str(e.value)
    assert "cifar10" in msg and str(tmp_path) in msg and "tfds build cifar10" in msg
    assert "download_and_prepare" in msg
    with pytest.raises(data.DatasetNotPreparedError):
        data.load_eval_arrays(cfg)
    with pytest.raises(FileNotFoundError):  # it is a FileNotFoundError too
        data.check_prepared(cfg)


# ----------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "mnist"),
        ("augment", "autoaugment"),
        ("num_views", 3),
        ("batch_size", 0),
        ("eval_batch_size", -1),
        ("crop_padding", -3),
        ("flip", "yes"),
        ("label_fraction", 1.5),
        ("label_fraction", -0.1),
        ("num_train", 0),
        ("num_test", -2),
        ("train_split", "validation"),
    ],
)
def test_bad_config_values_raise(field, value):
    cfg = _digits().to_dict()  # a plain dict: ConfigDict itself type-checks some fields
    cfg[field] = value
    with pytest.raises(ValueError, match=field):
        data.dataset_info(cfg)


def test_config_sentinels_and_errors():
    # Typed "unset" sentinels (CLI-overridable configs) mean the same as None.
    lead_style = dict(
        name="digits",
        data_dir="",
        batch_size=128,
        eval_batch_size=256,
        num_train=-1,
        num_test=-1,
        augment="crop_flip",
        num_views=1,
        crop_padding=-1,
        flip=False,
        train_split="train",
        label_fraction=0.0,
    )
    assert data.dataset_info(lead_style) == data.dataset_info(_digits())
    r = sources.resolve(lead_style)
    assert r.data_dir is None and r.label_fraction is None and r.crop_padding == 1
    cfg = _digits()
    cfg.typo_field = 1
    with pytest.raises(ValueError, match="typo_field"):
        data.dataset_info(cfg)
    with pytest.raises(ValueError, match="batch_size"):
        data.dataset_info(_digits(batch_size=2000))  # larger than the training set
    with pytest.raises(ValueError, match="process_count"):
        data.make_train_iterator(_digits(batch_size=15), seed=0, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        data.make_train_iterator(_digits(), seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="label_fraction"):
        data.make_train_iterator(_digits(), seed=0, subset="labelled")
    cfg = data.default_config("cifar10")
    cfg.train_split = "train[:90%]"  # size not derivable offline: set num_train
    with pytest.raises(ValueError, match="num_train"):
        data.dataset_info(cfg)
    cfg.num_train = 45_000
    assert data.dataset_info(cfg)["num_train"] == 45_000
    cfg.train_split = "train[:45000]"  # the ACL 45k/5k split: derived
    cfg.num_train = None
    assert data.dataset_info(cfg)["num_train"] == 45_000
