"""Preemption: a real SIGTERM sent to a real training process (`python -m ascl_jax.main`) stops it
after a step with a checkpoint, complete metrics and the resume command (exit code 143); the
resumed run equals an uninterrupted one bit for bit: parameters, optimizer state, BN statistics,
every metrics.jsonl line, the best checkpoint kept by selection, and the report's numbers."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import chex
import jax

from ascl_jax import config as config_lib
from ascl_jax import train
from ascl_jax.train import preemption, selection

ROOT = pathlib.Path(__file__).resolve().parents[1]
# 10 epochs of 6 steps (192 training examples, 64 held out) with selection every epoch; a
# periodic checkpoint only at step 30, so the SIGTERM checkpoint is its own; windows of 4 steps
# do not align with epochs, so a stop usually falls inside one.
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


def _config():
    c = config_lib.load("default", "smoke")
    for key, value in OVERRIDES.items():
        *path, leaf = key.split(".")
        node = c
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def _cli_args(workdir):
    args = ["-m", "ascl_jax.main", "--config", "configs/default.py:smoke", "--workdir", str(workdir)]
    for key, value in OVERRIDES.items():
        args.append(f"--config.{key}={value!r}" if isinstance(value, tuple) else f"--config.{key}={value}")
    return args


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
    deadline = time.time() + 240
    while not any("loss" in line for line in _lines(wd / "metrics.jsonl")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # training (metrics show a logged window)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, err[-3000:]
    assert "preempted (SIGTERM): stopped after step" in err and "resume with:" in err
    resume_cmd = err.split("resume with:\n", 1)[1].strip().splitlines()[0]
    assert f"--workdir {wd}" in resume_cmd and "--config configs/default.py:smoke" in resume_cmd
    stopped = int(err.split("stopped after step ", 1)[1].split(",")[0])
    assert 4 <= stopped < N_STEPS  # stopped part way, after the step it was computing
    assert _state(wd, "last").step == stopped  # the checkpoint of that step
    assert not (wd / "report.json").exists()
    lines = _lines(wd / "metrics.jsonl")
    assert max(line["step"] for line in lines) <= stopped  # flushed, nothing after the stop

    r = subprocess.run(
        [sys.executable, *_cli_args(wd)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]

    ref = tmp_path / "ref"
    full = train.train_and_evaluate(_config(), str(ref))
    resumed = _state(wd, "last")
    assert resumed.step == N_STEPS
    for field in ("params", "batch_stats", "opt_state", "rng"):
        chex.assert_trees_all_equal(getattr(resumed, field), getattr(jax.device_get(full.state), field))
    assert _lines(wd / "metrics.jsonl") == _lines(ref / "metrics.jsonl")  # every line, every bit
    # the best checkpoint survived the stop: the same step, metric and state as without it
    assert selection.best_record(str(wd)) == selection.best_record(str(ref))
    chex.assert_trees_all_equal(_state(wd, "best").params, _state(ref, "best").params)
    a, b = (json.load(open(w / "report.json")) for w in (wd, ref))
    for key in ("final_train_metrics", "clean_accuracy", "robust_accuracy", "checkpoints", "selection"):
        assert a[key] == b[key], key
