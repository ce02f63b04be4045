"""method='ascl_trades': ASCL with the TRADES objective (the authors' `ascl.py::ascl_trades`,
SPEC 1.1 item 9), one step against a float64 numpy evaluation of its equation

  L = scl * L_SCL + vat * KL_sum(p_nat || p_adv) / (b*C) + nat_ce * CE(x) + beta * KL_sum(p_nat || p_adv) / b

at the adversarial examples of PGD on sum_i KL(p(x_i) || p(x_i + delta_i)) (loss.trades_reduction=
'batchmean'; 'mean' divides the last term by b*C, run in the CLI smoke)."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_losses import np_contrastive, np_masks, np_softmax
from test_train import ROOT, load_config

from ascl_jax import config as config_lib
from ascl_jax import data, train
from ascl_jax.train import steps as train_steps
from ascl_jax.train.optim import make_optimizer
from ascl_jax.train.state import create_train_state


def _np_ce(logits, y):
    p = np_softmax(logits)
    return float(np.mean(-np.log(p[np.arange(len(y)), y])))


def _np_kl_rows(ln, la):
    p, q = np_softmax(ln), np_softmax(la)
    return np.sum(p * (np.log(p) - np.log(q)), axis=1)


def test_ascl_trades_step_equals_float64_equation():
    c = load_config("default", "smoke")
    c.method = "ascl_trades"
    c.data.batch_size = 16
    c.loss.update(dict(trades_reduction="batchmean", nat_ce_weight=1.0, trades_beta=6.0, vat_weight=2.0))
    config_lib.validate(c)
    model, info = train.build_model(c)
    tx, _ = make_optimizer(c.optim, 10, 100)
    state = create_train_state(model, tx, jax.random.key(3), info["image_shape"])
    batch = next(data.make_train_iterator(c.data, seed=0))
    _, m = jax.jit(train_steps.make_train_step(c, model, jit=False))(state, batch)

    x, y = batch["image"], batch["label"]
    x_adv = jax.jit(lambda s, x: train_steps.kl_attack(model, s, c.attack, x, s.step_key()))(state, x)
    x_ce = jax.jit(lambda s, x, y: train_steps.ce_attack(model, s, c.attack, x, y, s.step_key()))(state, x, y)
    assert float(np.abs(np.asarray(x_adv) - x).max()) <= c.attack.eps + 1e-6
    assert not np.allclose(x_adv, x_ce)  # the KL attack, not ASCL's CE attack

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    # train-mode BN: the logits use the batch statistics (the running ones do not enter)
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    out_a, _ = model.apply(variables, x_adv, train=True, mutable=["batch_stats"])
    ln, la = (np.asarray(o["logits"], np.float64) for o in (out, out_a))
    zn, za = (np.asarray(o["z"], np.float64) for o in (out, out_a))
    b, n_cls = ln.shape
    kl_rows = _np_kl_rows(ln, la)
    trades = kl_rows.sum() / b
    vat = kl_rows.sum() / (b * n_cls)
    pos, neg = np_masks(np.tile(y, 2), np.concatenate([ln.argmax(1), la.argmax(1)]), "leaked")
    scl = np_contrastive(np.concatenate([zn, za]), pos, neg, "cosine", c.loss.temperature)[0]
    want = 1.0 * scl + 2.0 * vat + 1.0 * _np_ce(ln, y) + 6.0 * trades

    np.testing.assert_allclose(m["trades_kl"], trades, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(m["scl"], scl, rtol=1e-4)
    np.testing.assert_allclose(m["loss"], want, rtol=1e-4)
    assert "ce_adv" not in m


def test_ascl_trades_config_errors():
    c = load_config("default", "smoke")
    c.method = "ascl_trades"
    c.loss.trades_reduction = "sum"
    with pytest.raises(config_lib.ConfigError, match="loss.trades_reduction"):
        config_lib.validate(c)
    c.loss.trades_reduction = "batchmean"
    c.loss.two_views = True
    with pytest.raises(config_lib.ConfigError, match="num_views=2"):
        config_lib.validate(c)


def test_ascl_trades_cli_smoke(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ascl_jax.main",
            "--config=configs/default.py:smoke",
            f"--workdir={tmp_path}",
            "--config.method=ascl_trades",
            "--config.loss.trades_reduction=mean",
            "--config.num_train_steps=2",
            "--config.eval.attacks=('clean',)",
            "--config.eval.sanity=False",
            "--config.analysis.enabled=False",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["trades_kl"])
    assert json.load(open(tmp_path / "report.json"))["method"] == "ascl_trades"
