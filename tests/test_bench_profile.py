"""bench/pytest_cpu_profile.py: the plugin records a test's CPU seconds and its JAX compilations,
and the summary prints them (run on a one-test file in a fresh pytest process)."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = """
import jax, jax.numpy as jnp, numpy as np

def test_two_programs():
    f = jax.jit(lambda x: jnp.sin(x) * 2)
    assert float(f(np.float32(0.0))) == 0.0
    assert f(np.ones(3, np.float32)).shape == (3,)  # a second shape: a second compilation
"""


def test_records_cpu_and_compilations(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    out = tmp_path / "cpu.jsonl"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "bench"),
        CPU_PROFILE_OUT=str(out),
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "pytest_cpu_profile", "-p", "no:cacheprovider"]
    r = subprocess.run([*cmd, "test_sample.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["id"] == "test_sample.py::test_two_programs"
    assert rec["self"] > 0 and rec["wall"] >= rec["compile_s"] > 0 and rec["trace_s"] > 0
    assert rec["cache_misses"] == 2 and rec["cache_hits"] == 0
    s = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pytest_cpu_profile.py"), str(out)],
        capture_output=True,
        text=True,
    )
    assert s.returncode == 0, s.stderr
    assert "1 test runs" in s.stdout and "2 misses" in s.stdout and "test_sample.py" in s.stdout
