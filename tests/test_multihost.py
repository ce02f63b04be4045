"""The multi-host path: 2 local processes x 4 CPU devices joined by jax.distributed (localhost
coordinator, launch/local_multiprocess.sh) equal one process with 8 devices reading the same
two input streams (config.input_processes=2)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = [
    "--config.num_train_steps=4",
    "--config.eval.attacks=('clean', 'pgd')",
    "--config.eval.sanity=False",
    "--config.analysis.enabled=False",
    "--config.data.batch_size=32",
    "--config.input_processes=2",
]


def _final_metrics(workdir):
    with open(workdir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return rows[-1]


def test_two_processes_equal_one(tmp_path):
    env = dict(os.environ, PY=sys.executable, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    mp = tmp_path / "mp"
    r = subprocess.run(
        [
            "bash",
            str(ROOT / "launch/local_multiprocess.sh"),
            "2",
            "4",
            "configs/default.py:smoke",
            str(mp),
            *OVERRIDES,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    sp = tmp_path / "sp"
    env1 = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ascl_jax.main",
            "--config",
            "configs/default.py:smoke",
            "--workdir",
            str(sp),
            *OVERRIDES,
        ],
        cwd=ROOT,
        env=env1,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _final_metrics(mp), _final_metrics(sp)
    assert a["step"] == b["step"] == 4
    for k in ("loss", "param_norm", "acc_adv"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    ra = json.load(open(mp / "report.json"))
    rb = json.load(open(sp / "report.json"))
    assert ra["clean_accuracy"] == pytest.approx(rb["clean_accuracy"])
    assert ra["robust_accuracy"] == pytest.approx(rb["robust_accuracy"])
