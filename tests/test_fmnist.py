"""Fashion-MNIST: the IDX reader and its checks, the source choice (tfds vs IDX), the pipeline on
small IDX files written here, data.download's wiring (no network), and configs/fmnist.py.

Neither tfds data nor Debian's dataset-fashion-mnist package is needed: every file is built here.
"""

import gzip
import os
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ascl_jax import config, data, models
from ascl_jax.data import idx, sources

# Issue 15's methods, in its words and order -> the `method=` of configs/fmnist.py.
ISSUE_METHODS = {
    "NAT": "nat",
    "ADV (Madry)": "adv",
    "TRADES": "trades",
    "ASCL Global": "ascl_global",
    "ASCL Hard": "ascl_hard",
    "ASCL Soft": "ascl_soft",
    "ASCL Leaked": "ascl_leaked",
    "ACL-DS pre-training": "acl_ds",
    "followed by TRADES fine-tuning": "acl_ds_trades",
}


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding written from the format's definition (independent of the reader)."""
    array = np.ascontiguousarray(array, np.uint8)
    magic = 0x800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _write(path, raw: bytes, gz: bool):
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        with open(path, "wb") as f:
            f.write(raw)


def _dataset(n: int, offset: int):
    """n images whose pixel (0, 0) is the example number (offset + i) and labels (offset + i) % 10."""
    rng = np.random.default_rng(offset)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = offset + np.arange(n)
    return images, ((offset + np.arange(n)) % 10).astype(np.uint8)


@pytest.fixture
def idx_dir(tmp_path):
    """A folder with 40 train (plain files) and 20 test (gzipped) examples in IDX format."""
    d = tmp_path / "fmnist"
    d.mkdir()
    for split, n, offset, gz in (("train", 40, 0, False), ("test", 20, 100, True)):
        images, labels = _dataset(n, offset)
        _write(d / idx.FILES[split][0], _idx_bytes(images), gz)
        _write(d / idx.FILES[split][1], _idx_bytes(labels), gz)
    return d


def _cfg(idx_dir, tmp_path, **kw):
    cfg = data.default_config("fashion_mnist")
    cfg.update(
        dict(
            idx_dir=str(idx_dir), data_dir=str(tmp_path / "no_tfds"), num_train=40, num_test=20, batch_size=8
        )
    )
    cfg.update(kw)
    return cfg


def test_defaults_and_normalization():
    cfg = data.default_config("fashion_mnist")
    assert (cfg.crop_padding, cfg.flip, cfg.augment, cfg.download, cfg.idx_dir) == (
        2,
        False,
        "crop_flip",
        False,
        "",
    )
    info = data.dataset_info(cfg)
    assert info == dict(
        num_classes=10,
        image_shape=(28, 28, 1),
        num_train=60000,
        num_test=10000,
        normalization="fashion_mnist",
    )
    mean, std = models.model.NORMALIZATION["fashion_mnist"]
    assert mean == (0.28604,) and std == (0.35302,)
    m = models.build_model(
        dict(arch="cnn", normalization="fashion_mnist"), num_classes=10, image_shape=(28, 28, 1)
    )
    assert m.image_shape == (28, 28, 1)
    assert sources.resolve(cfg).idx_dir == config.IDX_DIR_DEFAULT


def test_idx_files_through_the_pipeline(idx_dir, tmp_path):
    cfg = _cfg(idx_dir, tmp_path)
    assert data.fashion_mnist_source(cfg) == "idx"
    data.check_prepared(cfg)
    x, y = data.load_eval_arrays(cfg, "test")  # the gzipped files
    ref_images, ref_labels = _dataset(20, 100)
    np.testing.assert_array_equal(np.rint(x[..., 0] * 255), ref_images)
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(y, ref_labels)
    assert x.dtype == np.float32 and x.shape == (20, 28, 28, 1)
    xs, _ = data.load_eval_arrays(cfg, "train[10:20]")  # a slice keeps the files' order
    np.testing.assert_array_equal(np.rint(xs[:, 0, 0, 0] * 255), np.arange(10, 20))
    cfg.augment = "none"
    it = data.make_train_iterator(cfg, seed=0)
    seen = []
    for _ in range(5):  # one epoch of 40 / 8
        b = next(it)
        assert b["image"].shape == (8, 28, 28, 1)
        np.testing.assert_array_equal(np.rint(b["image"][:, 0, 0, 0] * 255), b["index"])
        np.testing.assert_array_equal(b["label"], b["index"] % 10)
        seen += b["index"].tolist()
    assert sorted(seen) == list(range(40))
    with pytest.raises(ValueError, match="hold 40 train examples"):
        data.load_eval_arrays(_cfg(idx_dir, tmp_path, num_train=60000), "train")


def _corrupt(idx_dir, which: str):
    path = idx_dir / idx.FILES["train"][0]
    images, labels = _dataset(40, 0)
    if which == "magic":
        path.write_bytes(_idx_bytes(images, magic=0x801))
    elif which == "ndim":
        path.write_bytes(_idx_bytes(images.reshape(40, 784)))
    elif which == "truncated":
        path.write_bytes(_idx_bytes(images)[:-5])
    elif which == "long":
        path.write_bytes(_idx_bytes(images) + b"\0")
    elif which == "shape":
        path.write_bytes(_idx_bytes(images[:, :27]))
    elif which == "count":
        path.write_bytes(_idx_bytes(images[:39]))
    elif which == "label":
        labels[3] = 10
        path = idx_dir / idx.FILES["train"][1]
        path.write_bytes(_idx_bytes(labels))
    elif which == "bad_gzip":
        path = idx_dir / (idx.FILES["test"][0] + ".gz")
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    return path


@pytest.mark.parametrize(
    "which,message",
    [
        ("magic", "magic number 0x00000801, expected 0x00000803"),
        ("ndim", "magic number 0x00000802"),
        ("truncated", "truncated"),
        ("long", "longer than its header says"),
        ("shape", "images of (27, 28) pixels"),
        ("count", "holds 39 images but"),
        ("label", "label 10 out of range"),
        ("bad_gzip", "cannot be read as gzip"),
    ],
)
def test_bad_idx_file_is_named(idx_dir, which, message):
    path = _corrupt(idx_dir, which)
    split = "test" if which == "bad_gzip" else "train"
    with pytest.raises(data.IdxFormatError, match="magic|truncated|longer|pixels|holds|label|gzip") as e:
        idx.read_split(str(idx_dir), split)
    assert message in str(e.value)
    named = str(path) if which != "count" else str(idx_dir / idx.FILES["train"][0])
    assert named in str(e.value)


def test_bad_idx_file_stops_the_pipeline(idx_dir, tmp_path):
    path = _corrupt(idx_dir, "truncated")
    with pytest.raises(ValueError, match="truncated") as e:  # IdxFormatError is a ValueError
        data.load_eval_arrays(_cfg(idx_dir, tmp_path), "train")
    assert str(path) in str(e.value)


def test_missing_files_fail_fast_with_every_option(idx_dir, tmp_path):
    os.remove(idx_dir / (idx.FILES["test"][1] + ".gz"))
    cfg = _cfg(idx_dir, tmp_path)
    t = time.time()
    with pytest.raises(data.DatasetNotPreparedError) as e:
        data.check_prepared(cfg)
    assert time.time() - t < 2.0
    msg = str(e.value)
    for part in (
        "t10k-labels-idx1-ubyte",
        "apt-get install dataset-fashion-mnist",
        "data.idx_dir",
        "data.download",
    ):
        assert part in msg, part
    with pytest.raises(data.DatasetNotPreparedError, match="t10k-labels"):
        data.load_eval_arrays(cfg, "test")
    data.load_eval_arrays(cfg, "train")  # the train files are all there


def test_prepared_tfds_is_preferred(idx_dir, tmp_path):
    """With tfds' fashion_mnist prepared, the examples come from tfds, not from the IDX files."""
    cfg = _cfg(idx_dir, tmp_path, num_test=7)
    with tfds.testing.mock_data(num_examples=7):
        with mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", lambda self: True):
            assert data.fashion_mnist_source(cfg) == "tfds"
            x, y = data.load_eval_arrays(cfg, "test")
        assert data.fashion_mnist_source(cfg) == "idx"
        x_idx, _ = data.load_eval_arrays(cfg, "test")
    assert x.shape == (7, 28, 28, 1)
    assert not np.array_equal(x, x_idx)  # mock images, not the files' (pixel (0,0) = 100..106)
    np.testing.assert_array_equal(np.rint(x_idx[:, 0, 0, 0] * 255), np.arange(100, 107))


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist", "cifar10_corrupted/fog_2"])
def test_download_flag_wiring(tmp_path, idx_dir, name):
    """download_and_prepare is called only with data.download=True (patched: no network)."""
    base = "cifar10" if "corrupted" in name else name
    cfg = data.default_config(base)
    cfg.update(data_dir=str(tmp_path / "tfds"), idx_dir=str(idx_dir) if base == "fashion_mnist" else "")
    calls = []
    fake = lambda self, *a, **k: calls.append(self.name)  # noqa: E731
    with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", fake):

        def check():
            if "corrupted" in name:
                data.corrupted.check_prepared(cfg, [("fog", 2)])
            else:
                data.check_prepared(cfg)

        if base == "fashion_mnist":
            check()  # download=False: the IDX files, no tfds, no download
        else:
            with pytest.raises(data.DatasetNotPreparedError):
                check()
        assert calls == []
        cfg.download = True
        with pytest.raises(data.DatasetNotPreparedError):  # the fake prepared nothing
            check()
        assert calls == [name.split("/")[0]]
    with pytest.raises(config.ConfigError, match="data.download"):
        data.dataset_info(dict(name=base, download="yes"))


@pytest.mark.parametrize("method", list(ISSUE_METHODS.values()))
def test_fmnist_config_loads_for_every_method(method):
    c = config.load("fmnist", f"method={method},seed=3,pretrained=/tmp/pre")
    config.validate(c)
    assert c.seed == 3 and c.data.name == "fashion_mnist" and c.model.arch == "cnn"
    assert (c.attack.eps, c.attack.step_size, c.attack.num_steps) == (0.1, 0.01, 10)
    assert (c.optim.name, c.optim.num_epochs, c.data.batch_size) == ("adam", 3, 128)
    if method != "acl_ds":
        assert tuple(c.eval.attacks) == ("clean", "pgd", "mpgd", "autoattack")
        assert (c.eval.autoattack, c.eval.autoattack_examples, c.eval.num_examples) == ("standard", 1000, -1)
        assert (c.eval.eps, c.eval.step_size, c.eval.pgd_steps, c.eval.mpgd_steps) == (0.1, 0.01, 20, 20)
        assert c.analysis.enabled
    smoke = config.load("fmnist", f"method={method},pretrained=/tmp/pre,smoke")
    config.validate(smoke)
    assert smoke.num_train_steps == 4


def test_fmnist_config_bad_arguments():
    with pytest.raises(config.ConfigError, match="method='mnist'") as e:
        config.load("fmnist", "method=mnist")
    assert str(e.value).endswith(f"choose one of {list(ISSUE_METHODS.values())}")  # no method more or less
    with pytest.raises(config.ConfigError, match="pretrained"):
        config.load("fmnist", "method=acl_ds_trades")
