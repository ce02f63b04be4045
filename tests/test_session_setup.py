"""The test session's set-up (tests/conftest.py): what every test and every subprocess it starts
runs under."""

import os
import subprocess
import sys

import jax


def test_eight_devices_one_cache_and_most_optimisations_off():
    assert jax.device_count() == 8
    assert os.path.isdir(os.environ["JAX_COMPILATION_CACHE_DIR"])
    # the suite's default; a caller's JAX_DISABLE_MOST_OPTIMIZATIONS=0 is kept
    assert jax.config.read("jax_disable_most_optimizations") == (
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
    )
    child = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.config.read('jax_disable_most_optimizations'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == str(os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1")
