"""Checkpoint selection (eval.checkpoint='best'): the held-out split, the epoch of best metric kept
by orbax and evaluated as the headline beside the last, the best kept across a stop and resume,
the metric against written-out references, and the config errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ascl_jax import config as config_lib
from ascl_jax import data, parallel, train
from ascl_jax.evaluation import pgd as eval_pgd
from ascl_jax.train import selection

N, V = 256, 64  # the first 256 digits training images, the last 64 of them held out


def _data(**kw):
    return dict(name="digits", num_train=N, val_examples=V, batch_size=32, augment="none", **kw)


@pytest.mark.parametrize("process_count", [1, 2])
def test_val_split_is_held_out_of_training_and_deterministic(process_count):
    cfg = _data()
    assert data.steps_per_epoch(cfg) == (N - V) // 32
    seen = []
    for p in range(process_count):
        it = data.make_train_iterator(cfg, seed=0, process_index=p, process_count=process_count)
        seen += [next(it)["index"] for _ in range(data.steps_per_epoch(cfg))]
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(N - V))  # one epoch: the pool
    assert data.val_split(cfg) == (f"train[{N - V}:{N}]", V)
    x, y = data.load_val_arrays(cfg)
    full_x, full_y = data.load_eval_arrays(dict(name="digits"), "train", N)
    np.testing.assert_array_equal(x, full_x[N - V :])  # the tail of the training split ...
    np.testing.assert_array_equal(y, full_y[N - V :])
    x2, _ = data.load_val_arrays(cfg, 10)
    np.testing.assert_array_equal(x2, x[:10])  # ... the same on every call
    labelled, unlabelled = data.label_split(data.training_pool(dict(cfg, label_fraction=0.1)))
    assert max(labelled.max(), unlabelled.max()) < N - V  # subsets are of the pool only


def _config(**eval_kw):
    c = config_lib.load("default", "smoke")
    c.method = "nat"
    c.data.update(dict(num_train=N, val_examples=V, batch_size=32, eval_batch_size=64))
    c.num_train_steps = -1
    # 4 epochs at Adam 0.03, then 2 at 3.0, which wrecks the classifier: an earlier epoch is best
    c.optim.update(dict(learning_rate=0.03, num_epochs=6, decay_epochs=(4,), decay_factors=(100.0,)))
    e = dict(checkpoint="best", select_metric="clean", select_examples=V, attacks=("clean",))
    c.eval.update({**e, "sanity": False, "eps_sweep": (), **eval_kw})
    c.analysis.enabled = False
    c.log_every_steps = 6
    c.checkpoint_every_steps = 6
    return c


def _accuracy(model, state, x, y):
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)["logits"]
    return float(np.mean(np.asarray(logits).argmax(-1) == y))


def _pgd_reference(model, state, x, y, key, eps, step, steps):
    """PGD written out: uniform start, `steps` signed-gradient steps on the summed CE, projection."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def loss(xa):
        logits = model.apply(variables, xa, train=False)["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

    xa = eval_pgd.uniform_start(x, key, jnp.arange(len(y)), eps)
    for _ in range(steps):
        xa = jnp.clip(jnp.clip(xa + step * jnp.sign(jax.grad(loss)(xa)), x - eps, x + eps), 0.0, 1.0)
    return _accuracy(model, state, xa, y)


def test_best_epoch_is_kept_across_resume_and_reported_beside_the_last(tmp_path):
    wd = str(tmp_path / "run")
    c = _config()
    stopped = train.train_and_evaluate(c, wd, stop_after_steps=27, evaluate=False)  # inside epoch 5
    assert stopped.report == {"stopped_at_step": 27}
    report = train.train_and_evaluate(_config(), wd).report
    lines = [json.loads(s) for s in open(f"{wd}/metrics.jsonl")]
    sel = [(r["step"], r["select_clean_accuracy"]) for r in lines if "select_clean_accuracy" in r]
    assert [s for s, _ in sel] == [6, 12, 18, 24, 30, 36]  # every epoch, none repeated by the resume
    values = [v for _, v in sel]
    best_step = sel[int(np.argmax(values))][0]  # argmax: the first of the highest
    assert best_step < 27 < 36 and max(values) > values[-1]  # constructed: best before the stop
    # the best survived the resume (a reset would have chosen an epoch after it)
    assert report["selection"]["best_step"] == best_step == report["checkpoints"]["best"]["step"]
    assert report["selection"]["best_value"] == max(values)
    assert report["selection"]["split"] == "val" and report["selection"]["examples"] == V
    assert report["checkpoint"] == "best" and report["checkpoints"]["last"]["step"] == 36
    assert report["checkpoints"]["best"]["epoch"] == best_step // 6
    # the headline is the best checkpoint's evaluation; the last one's is beside it
    assert report["clean_accuracy"] == report["checkpoints"]["best"]["clean_accuracy"]
    eval_json = json.load(open(f"{wd}/eval.json"))
    assert eval_json["checkpoint"] == "best" and eval_json["checkpoints"] == report["checkpoints"]

    x, y = data.load_eval_arrays(dict(name="digits"), "train", N)
    x, y = x[N - V :], y[N - V :]
    cfg, model, best = train.restore_run(wd, checkpoint="best")
    _, _, last = train.restore_run(wd, checkpoint="last")
    assert int(best.step) == best_step and int(last.step) == 36
    assert _accuracy(model, best, x, y) == max(values)  # the logged metric is the best state's
    assert _accuracy(model, last, x, y) == values[-1]
    x_test, y_test = data.load_eval_arrays(dict(name="digits"), "test", 32)
    assert report["checkpoints"]["last"]["clean_accuracy"] == _accuracy(model, last, x_test, y_test)
    assert report["clean_accuracy"] == _accuracy(model, best, x_test, y_test)

    # the robust metric: PGD with the training attack's budget, eval-mode BN, against the reference
    cfg.unlock()
    cfg.eval.select_metric = "robust"
    mesh = parallel.make_mesh()
    a = cfg.attack
    ref = _pgd_reference(model, best, x, y, jax.random.key(cfg.seed), a.eps, a.step_size, a.num_steps)
    with jax.set_mesh(mesh):
        got = selection.make_metric(cfg, model, mesh)(best)
    assert abs(got - ref) <= 1 / V and got < max(values)

    # --mode evaluate (here with eval.checkpoint='last'): both again, the headline follows eval.checkpoint
    out = train.evaluate_workdir(wd, _config(checkpoint="last"))
    assert out["checkpoint"] == "last" and out["checkpoints"] == report["checkpoints"]
    assert out["clean_accuracy"] == report["checkpoints"]["last"]["clean_accuracy"]


def test_selection_settings_are_fixed_once_training_has_started(tmp_path):
    """Resuming with another eval.checkpoint / eval.select_* would select among the later epochs
    only: a WorkdirError naming the fields, before any step; the run's own settings resume."""
    from ascl_jax.workdir import WorkdirError

    wd = str(tmp_path / "last")
    train.train_and_evaluate(_config(checkpoint="last"), wd, stop_after_steps=8, evaluate=False)
    with pytest.raises(WorkdirError, match=r"eval.checkpoint: 'last' -> 'best'.*fresh --workdir"):
        train.train_and_evaluate(_config(), wd, evaluate=False)
    # stopped before the first selection (6 steps per epoch): no best kept yet, the rule still fixed
    wd = str(tmp_path / "best")
    train.train_and_evaluate(_config(), wd, stop_after_steps=3, evaluate=False)
    with pytest.raises(WorkdirError, match=r"eval.select_metric: 'clean' -> 'robust'"):
        train.train_and_evaluate(_config(select_metric="robust"), wd, stop_after_steps=3, evaluate=False)
    # the refused sitting trained nothing: the run resumes at step 3
    assert train.train_and_evaluate(_config(), wd, stop_after_steps=3, evaluate=False).report == {
        "stopped_at_step": 6
    }


def _error(c):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c)
    return str(e.value)


def test_bad_selection_configs_name_the_fields(tmp_path):
    c = _config()
    c.data.val_examples = 0
    msg = _error(c)
    assert "eval.checkpoint='best'" in msg and "data.val_examples=0" in msg and "select_on='val'" in msg
    c = _config()
    c.eval.select_every = 7
    msg = _error(c)
    assert "eval.select_every=7" in msg and "optim.num_epochs=6" in msg
    c = _config(select_metric="robustness")
    assert "eval.select_metric='robustness'" in _error(c) and "'clean'" in _error(c)
    c = _config(select_examples=0)
    assert "eval.select_examples=0" in _error(c)
    c = config_lib.load("acl_pretrain", "smoke")
    c.eval.checkpoint, c.eval.select_on = "best", "test"
    assert "method='acl_pretrain'" in _error(c)
    # with num_train_steps, the epoch count is known once the pool is: checked before training
    c = _config()
    c.num_train_steps, c.eval.select_every = 12, 3  # 2 epochs of 6 steps
    with pytest.raises(config_lib.ConfigError, match=r"select_every=3 epochs exceeds the run's 2 epoch"):
        train.train_and_evaluate(c, str(tmp_path / "a"))
    # a held-out split as large as the training split leaves nothing to train on
    c = _config()
    c.data.val_examples = N
    with pytest.raises(config_lib.ConfigError, match=r"data.val_examples=256 leaves no training pool"):
        train.train_and_evaluate(c, str(tmp_path / "b"))
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "b" / "checkpoints").exists()
