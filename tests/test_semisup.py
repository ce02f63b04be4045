"""ACL semi-supervised: the Eq. 3 loss against a numpy reference, and the 3-stage routine."""

import json
import os

import numpy as np
import pytest

from ascl_jax import losses


def _np_log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


def _reference(ln, la, y, t, lab, alpha, T, beta):
    """SPEC 3.7, written out row by row."""
    b = len(y)
    ce_l, dist_l, dist_u, kl = 0.0, 0.0, 0.0, 0.0
    for i in range(b):
        lsa = _np_log_softmax(la[i : i + 1])[0]
        d = -(_np_log_softmax(la[i : i + 1] / T)[0] * np.exp(_np_log_softmax(t[i : i + 1] / T)[0])).sum()
        if lab[i]:
            ce_l += -lsa[y[i]]
            dist_l += d
        else:
            dist_u += d
        pn = np.exp(_np_log_softmax(ln[i : i + 1])[0])
        kl += (pn * (np.log(pn) - lsa)).sum()
    return ((1 - alpha) * ce_l + alpha * T * T * dist_l + T * T * dist_u) / b + beta * kl / b


@pytest.mark.parametrize("seed,T", [(0, 1.0), (1, 2.0)])
def test_semi_supervised_loss_matches_reference(seed, T):
    rng = np.random.default_rng(seed)
    b, c = 12, 5
    ln, la, t = (rng.normal(size=(b, c)).astype(np.float32) for _ in range(3))
    y = rng.integers(0, c, b).astype(np.int32)
    lab = rng.random(b) < 0.3
    loss, aux = losses.acl_semi_supervised_loss(ln, la, y, t, lab, alpha=0.5, temperature=T, beta=6.0)
    np.testing.assert_allclose(loss, _reference(ln, la, y, t, lab, 0.5, T, 6.0), rtol=1e-5)


def test_semi_supervised_routine_runs_and_resumes(tmp_path):
    from test_train import load_config

    from ascl_jax import train

    c = load_config("acl_semisup", "smoke")
    for s in ("teacher", "student"):
        c.stages[s].eval.sanity = False
        c.stages[s].eval.attacks = ("clean",)
    report = train.run(c, str(tmp_path))
    for d in ("1_pretrain", "2_teacher", "3_student"):
        assert os.path.exists(tmp_path / d / "checkpoints")
    z = np.load(tmp_path / "pseudo_labels.npz")
    assert z["logits"].shape == (1437, 10)
    assert report["method"] == "semi_supervised" and "teacher_clean_accuracy" in report
    mtime = os.path.getmtime(tmp_path / "pseudo_labels.npz")
    again = train.run(c, str(tmp_path))  # every stage done: nothing retrains
    assert os.path.getmtime(tmp_path / "pseudo_labels.npz") == mtime
    assert again["clean_accuracy"] == report["clean_accuracy"]
    with open(tmp_path / "3_student" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    train_rows = [r for r in rows if "distill" in r]  # the others: checkpoint-selection rows
    assert train_rows and {"distill", "ce_labelled", "trades_kl"} <= set(train_rows[-1])
