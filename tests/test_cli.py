"""The command line: overrides, clear errors with exit code 2, nothing overwritten."""

import os
import pathlib
import subprocess
import sys

import local_processes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = local_processes.one_device_xla_flags()
    return subprocess.run(
        [sys.executable, "-m", "ascl_jax.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bad_config_value_names_field_and_allowed_values(tmp_path):
    r = _run(
        "--config", "configs/default.py:smoke", "--workdir", str(tmp_path), "--config.loss.strategy=nearest"
    )
    assert r.returncode == 2
    assert "loss.strategy='nearest'" in r.stderr and "'leaked'" in r.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_dataset_is_a_clear_error(tmp_path):
    r = _run(
        "--config",
        "configs/ascl_table2.py:smoke",
        "--workdir",
        str(tmp_path / "w"),
        f"--config.data.data_dir={tmp_path / 'empty'}",
    )
    assert r.returncode == 2
    assert "cifar10" in r.stderr and "tfds build" in r.stderr


def test_evaluate_mode_without_checkpoint(tmp_path):
    r = _run("--mode", "evaluate", "--workdir", str(tmp_path))
    assert r.returncode == 2 and "config.json is missing" in r.stderr
