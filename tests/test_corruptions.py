"""CIFAR-10-C evaluation (eval.corruptions): parsing and config errors, the instant error when the
data is not prepared, accuracies per corruption / severity under tfds.testing.mock_data against
values fixed by construction, and `--mode evaluate` writing eval.json / report.json."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ascl_jax import config, data, parallel, train
from ascl_jax.train import run_eval

N = 20  # images per mocked set


def _num_correct(builder_name: str) -> int:
    """How many of the N rows of a mocked set the pixel-mean classifier gets right (fixed per set)."""
    if not builder_name.startswith("cifar10_corrupted/"):
        return N
    corruption, _, severity = builder_name.split("/")[1].rpartition("_")
    return (3 * config.CORRUPTIONS.index(corruption) + 2 * int(severity)) % (N + 1)


def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kw):
    """Row i: a constant image of value (k_i + 0.5) / 10 with label k_i for the first
    _num_correct rows, (k_i + 1) % 10 after, so `_mean_classifier` scores _num_correct / N."""
    del split, decoders, read_config, shuffle_files, kw
    k = np.arange(N) % 10
    correct = _num_correct(self.name + (f"/{self.builder_config.name}" if self.builder_config else ""))
    labels = np.where(np.arange(N) < correct, k, (k + 1) % 10)
    images = np.broadcast_to((((k + 0.5) / 10) * 255).astype(np.uint8)[:, None, None, None], (N, 32, 32, 3))
    return tf.data.Dataset.from_tensor_slices({"image": np.array(images), "label": labels.astype(np.int64)})


def _mean_classifier(variables, x):
    """Logits peaked at floor(10 * mean pixel): class k for a constant image of value (k + 0.5) / 10."""
    del variables
    k = jnp.floor(x.mean(axis=(1, 2, 3)) * 10).astype(jnp.int32)
    return jax.nn.one_hot(k, 10) * 5.0


def test_parse_corruptions():
    assert len(config.parse_corruptions(("all",))) == 19 * 5
    assert config.parse_corruptions(("fog",)) == tuple(("fog", s) for s in range(1, 6))
    pairs = config.parse_corruptions(("snow:2", "fog:3", "fog:3", "gaussian_noise:1"))
    assert pairs == (("gaussian_noise", 1), ("snow", 2), ("fog", 3))  # CORRUPTIONS order, merged
    assert config.parse_corruptions(()) == ()
    for bad in ("fogg", "fog:6", "fog:0", "all:1", "glass_blur"):
        with pytest.raises(config.ConfigError, match="eval.corruptions") as e:
            config.parse_corruptions((bad,))
        assert "frosted_glass_blur" in str(e.value) and "speckle_noise" in str(e.value)


def test_corruptions_config_errors():
    c = config.load("default")
    c.eval.corruptions = ("fog",)
    with pytest.raises(config.ConfigError, match="data.name='digits'"):
        config.validate(c)
    c = config.load("ascl_table2", "row=ours")
    c.eval.corruptions = ("fog:1",)
    config.validate(c)
    c.eval.corruptions = ("fgo:1",)
    with pytest.raises(config.ConfigError, match="allowed"):
        config.validate(c)
    c.eval.corruptions, c.eval.attacks = ("fog",), ("pgd",)
    with pytest.raises(config.ConfigError, match="'clean'"):
        config.validate(c)


def test_not_prepared_fails_instantly(tmp_path):
    c = config.load("ascl_table2", "row=ours,smoke")
    c.data.data_dir = str(tmp_path)
    c.eval.corruptions = ("fog", "snow:2")
    run_eval.check_corruption_data(config.load("ascl_table2", "row=ours"))  # no corruptions: no-op
    with pytest.raises(data.DatasetNotPreparedError):  # the first call imports tfds' registry
        data.corrupted.check_prepared(c.data, [("fog", 1)])
    t = time.time()
    with pytest.raises(data.DatasetNotPreparedError) as e:
        run_eval.check_corruption_data(c)
    assert time.time() - t < 2.0
    msg = str(e.value)
    assert "6 CIFAR-10-C set(s)" in msg and "cifar10_corrupted/fog_1" in msg and "tfds build" in msg
    assert str(tmp_path) in msg and "data.download=True" in msg
    with pytest.raises(FileNotFoundError):  # before training starts (and before any file is written)
        train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_accuracy_per_corruption_and_severity_mock_data():
    pairs = config.parse_corruptions(("fog:1", "fog:3", "snow:2", "brightness"))
    mesh = parallel.make_mesh()
    with tfds.testing.mock_data(num_examples=N, as_dataset_fn=_as_dataset):
        res = run_eval.corruption_accuracy(
            _mean_classifier, {}, dict(name="cifar10"), pairs, num_examples=None, batch_size=8, mesh=mesh
        )
        x, y = data.corrupted.load(dict(name="cifar10"), "fog", 3, num_examples=5)
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    expected = {
        c: {str(s): _num_correct(f"cifar10_corrupted/{c}_{s}") / N for s in (1, 2, 3, 4, 5)}
        for c in config.CORRUPTIONS
    }
    want = {c: {str(s): expected[c][str(s)] for cc, s in pairs if cc == c} for c, _ in pairs}
    assert res["accuracy"] == want
    flat = [expected[c][str(s)] for c, s in pairs]
    assert len(set(flat)) > 3  # the sets really differ
    np.testing.assert_allclose(res["mean"], np.mean(flat), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        res["mean_per_corruption"]["fog"], np.mean([expected["fog"]["1"], expected["fog"]["3"]])
    )
    np.testing.assert_allclose(
        res["mean_per_severity"]["2"], np.mean([expected["snow"]["2"], expected["brightness"]["2"]])
    )
    assert res["num_sets"] == 8 and res["num_examples"] == N


def test_mode_evaluate_writes_corruptions(tmp_path):
    """--mode evaluate of a (1-step) CIFAR-10 run with eval.corruptions: eval.json and report.json."""
    c = config.load("ascl_table2", "row=ours,smoke")
    c.method = "nat"  # the cheapest step to compile: the test is about the evaluation
    c.num_train_steps = 1
    c.eval.update(
        dict(attacks=("clean",), autoattack="none", num_examples=16, sanity=False, checkpoint="last")
    )
    c.analysis.enabled = False
    c.data.update(num_train=16, num_test=16, test_order="tfds")  # the mock has no 'id' feature
    wd = str(tmp_path / "wd")
    with tfds.testing.mock_data(num_examples=N, as_dataset_fn=_as_dataset):
        train.train_and_evaluate(c, wd, evaluate=False)
        override = config.load("ascl_table2", "row=ours,smoke")
        override.eval.update(
            dict(attacks=("clean",), autoattack="none", num_examples=16, sanity=False, checkpoint="last")
        )
        override.data.test_order = "tfds"
        override.eval.corruptions = ("fog:2", "zoom_blur:5")
        override.analysis.enabled = False
        report = train.evaluate_workdir(wd, override)
        # Independent reference: the restored model applied directly to the mocked images.
        cfg, model, state = train.restore_run(wd)
        refs = {}
        for name, sev in (("fog", 2), ("zoom_blur", 5)):
            x, y = data.corrupted.load(c.data, name, sev, num_examples=16)
            logits = model.apply(
                {"params": state.params, "batch_stats": state.batch_stats}, x, train=False, bn="clean"
            )
            refs[(name, sev)] = float(np.mean(np.argmax(np.asarray(logits["logits"]), -1) == y))
    ev = json.load(open(f"{wd}/eval.json"))
    assert ev["corruptions"]["accuracy"] == {
        "fog": {"2": refs[("fog", 2)]},
        "zoom_blur": {"5": refs[("zoom_blur", 5)]},
    }
    assert ev["corruptions"]["num_examples"] == 16
    rep = json.load(open(f"{wd}/report.json"))
    assert rep["corruptions"]["mean"] == pytest.approx(np.mean(list(refs.values())), abs=1e-12)
    assert report["corruptions"]["mean_per_corruption"] == {
        "fog": refs[("fog", 2)],
        "zoom_blur": refs[("zoom_blur", 5)],
    }
    assert "accuracy" not in rep["corruptions"]  # the per-set grid lives in eval.json
