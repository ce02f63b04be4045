"""Preemption: a real SIGTERM sent to a real training process (`python -m ascl_jax.main`) stops it
after a step with a checkpoint, complete metrics and the resume command (exit code 143); the
resumed run equals an uninterrupted one bit for bit: parameters, optimizer state, BN statistics,
every metrics.jsonl line, the best checkpoint kept by selection, and the report's numbers.

The same with 2 processes x 4 CPU devices joined by jax.distributed (launch/local_multiprocess.sh,
as tests/test_multihost.py launches it): SIGTERM to one process, as a preempted pod VM gets, stops
both after the same step through JAX's preemption sync point (its notifier polls for SIGTERM
every second, so the stop comes a few steps later); both exit 143, and process 0 prints the
resume command. The resumed 2-process run equals an uninterrupted 2-process run exactly (same
programs, same gloo reduction order: measured, no difference in any bit). The reference runs
beside the resumed run, not the interrupted one, so that both load every program from the
compilation cache the interrupted run filled (four processes compiling at once cost more CPU).
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import local_processes

from ascl_jax import config as config_lib
from ascl_jax import train
from ascl_jax.train import preemption, selection

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Both tests: 10 epochs of 6 steps (192 training examples, 64 held out) with selection every
# epoch; a periodic checkpoint only at step 30, so the SIGTERM checkpoint is its own; windows of
# 4 steps do not align with epochs, so a stop usually falls inside one.
OVERRIDES = {
    "method": "nat",
    "data.num_train": 256,
    "data.val_examples": 64,
    "data.batch_size": 32,
    "data.eval_batch_size": 64,
    "num_train_steps": -1,
    "optim.num_epochs": 10,
    "optim.learning_rate": 0.01,
    "attack.num_steps": 2,  # the selection metric's PGD-2
    "eval.checkpoint": "best",
    "eval.select_examples": 64,
    "eval.attacks": ("clean",),
    "eval.sanity": False,
    "eval.eps_sweep": (),
    "analysis.enabled": False,
    "log_every_steps": 4,
    "checkpoint_every_steps": 30,
}
N_STEPS = 60
CONFIG = "configs/default.py:smoke"


def _config():
    c = config_lib.load("default", "smoke")
    for key, value in OVERRIDES.items():
        *path, leaf = key.split(".")
        node = c
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def _flags(overrides):
    return [
        f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}" for k, v in overrides.items()
    ]


def _cli_args(workdir):
    return ["-m", "ascl_jax.main", "--config", CONFIG, "--workdir", str(workdir), *_flags(OVERRIDES)]


def _env():
    # the same 8 simulated devices and CPU flags as this process (tests/conftest.py)
    return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")


def _lines(path):
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _state(workdir, checkpoint):
    _, _, state = train.restore_run(str(workdir), checkpoint=checkpoint)
    return jax.device_get(state)


def _wait_for_training(workdir, proc, output):
    """Until metrics.jsonl shows a logged training window (the process is training)."""
    deadline = time.time() + 240
    while not any("loss" in line for line in _lines(workdir / "metrics.jsonl")):
        assert proc.poll() is None and time.time() < deadline, output()[-3000:]
        time.sleep(0.02)


def _check_stopped(workdir, stopped, n_steps):
    """Stopped part way, after the step it was computing: the checkpoint of that step, every
    training window up to it in metrics.jsonl and nothing after it, no report."""
    assert 4 <= stopped < n_steps
    assert _state(workdir, "last").step == stopped
    assert not (workdir / "report.json").exists()
    lines = _lines(workdir / "metrics.jsonl")
    every = OVERRIDES["log_every_steps"]
    assert [r["step"] for r in lines if "loss" in r] == list(range(every, stopped + 1, every))
    assert max(r["step"] for r in lines) <= stopped


def _check_equal_runs(workdir, ref, n_steps):
    """The resumed run in `workdir` equals the uninterrupted `ref` bit for bit."""
    resumed, full = _state(workdir, "last"), _state(ref, "last")
    assert resumed.step == full.step == n_steps
    for field in ("params", "batch_stats", "opt_state", "rng"):
        chex.assert_trees_all_equal(getattr(resumed, field), getattr(full, field))
    assert _lines(workdir / "metrics.jsonl") == _lines(ref / "metrics.jsonl")  # every line, every bit
    # the best checkpoint survived the stop: the same step, metric and state as without it
    assert selection.best_record(str(workdir)) == selection.best_record(str(ref))
    chex.assert_trees_all_equal(_state(workdir, "best").params, _state(ref, "best").params)
    a, b = (json.load(open(w / "report.json")) for w in (workdir, ref))
    for key in ("final_train_metrics", "clean_accuracy", "robust_accuracy", "checkpoints", "selection"):
        assert a[key] == b[key], key


def test_sigterm_checkpoints_and_resume_equals_uninterrupted(tmp_path):
    wd = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, *_cli_args(wd)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_training(wd, proc, lambda: (proc.kill(), proc.communicate()[1])[1])
    proc.send_signal(signal.SIGTERM)  # training (metrics show a logged window)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, err[-3000:]
    assert "preempted (SIGTERM): stopped after step" in err and "resume with:" in err
    resume_cmd = err.split("resume with:\n", 1)[1].strip().splitlines()[0]
    assert f"--workdir {wd}" in resume_cmd and f"--config {CONFIG}" in resume_cmd
    _check_stopped(wd, int(err.split("stopped after step ", 1)[1].split(",")[0]), N_STEPS)

    r = subprocess.run(
        [sys.executable, *_cli_args(wd)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    train.train_and_evaluate(_config(), str(tmp_path / "ref"))
    _check_equal_runs(wd, tmp_path / "ref", N_STEPS)


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
    # one compilation cache for the three launches: the resumed run and the reference (started
    # together once the interrupted run has compiled every program) load them from it
    env = dict(os.environ, **local_processes.cache_env(tmp_path / "cache"))
    wd, ref = tmp_path / "run", tmp_path / "ref"
    logs = {name: tmp_path / f"{name}.log" for name in ("run", "ref", "resume")}
    launches = {}

    def start(name, workdir):
        launches[name] = local_processes.launch(
            2, 4, CONFIG, workdir, *_flags(OVERRIDES), env=env, log=logs[name]
        )
        return launches[name]

    def finish(name):
        launches[name].wait(timeout=300)
        return logs[name].read_text()

    try:
        run = start("run", wd)
        pids = local_processes.pids(logs["run"], 2, run)
        _wait_for_training(wd, run, logs["run"].read_text)
        os.kill(pids[1], signal.SIGTERM)  # one process, not the coordinator's
        out = finish("run")
        code = preemption.PREEMPTED_EXIT_CODE
        assert local_processes.exit_statuses(out) == {0: code, 1: code}, out[-4000:]
        stops = re.findall(r"^ascl_jax: preempted: checkpoint of step (\d+) saved", out, re.M)
        assert len(stops) == 2 and stops[0] == stops[1], out[-4000:]  # both, after the same step
        stopped = int(stops[0])
        assert f"preempted (SIGTERM): stopped after step {stopped}," in out  # process 0's message
        resume_cmd = out.split("resume with:\n", 1)[1].strip().splitlines()[0]
        assert f"--workdir {wd}" in resume_cmd and "--multihost" in resume_cmd
        _check_stopped(wd, stopped, N_STEPS)

        start("resume", wd)  # the same launch
        start("ref", ref)  # the uninterrupted 2-process run
        for name in ("resume", "ref"):
            out = finish(name)
            assert local_processes.exit_statuses(out) == {0: 0, 1: 0}, f"{name}:\n{out[-4000:]}"
    finally:
        for name, proc in launches.items():
            local_processes.stop(proc, logs[name])
    _check_equal_runs(wd, ref, N_STEPS)


def test_orbax_managers_never_query_the_preemption_sync_point(tmp_path, monkeypatch):
    """Only the train loop asks JAX's sync point for the stop step, with the loop's step: orbax's
    managers (periodic, with its background commit, and best) do not, whatever they save."""
    from jax.experimental import multihost_utils

    from ascl_jax import checkpointing

    calls = []
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: calls.append(step))
    state = {"w": jax.numpy.arange(4.0)}
    mngr = checkpointing.make_manager(str(tmp_path), save_every=1, max_to_keep=2)
    for step in (1, 2, 3):
        assert checkpointing.save(mngr, step, state)
    checkpointing.save_with_metadata(mngr, 4, state, {"a": 1})
    mngr.wait_until_finished()
    checkpointing.save_best(checkpointing.make_best_manager(str(tmp_path)), 4, state, 0.5, {})
    assert mngr.all_steps() == [3, 4]
    assert calls == []
