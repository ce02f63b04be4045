"""Test set-up: 8 simulated CPU devices and LLVM at -O1, before JAX starts a backend; one
compilation cache for the session; the slowest tests scheduled first.

XLA flags: each of ``--xla_force_host_platform_device_count=8`` and, on a CPU-only session (GPUs
hidden, as below, unless the caller names one in CUDA_VISIBLE_DEVICES),
``local_processes.TEST_XLA_FLAG`` (``--xla_backend_optimization_level=1``) is appended to
XLA_FLAGS unless the caller's XLA_FLAGS already sets it. The tests compile far more than they run;
LLVM's -O1 instead of XLA's default 3 takes a fifth off the suite's wall time (2 cores: 780 s ->
629 s; docs/testing.md). The level sets LLVM's optimisation only, no HLO pass; results may differ
from the default level's by float rounding. The library itself and bench/ keep XLA's default.

Compilation cache: the first process of a session (pytest itself, or xdist's controller) creates a
temporary persistent-cache directory and exports it (JAX_COMPILATION_CACHE_DIR); the xdist workers
and the subprocesses the tests start inherit it (except those given a cache of their own:
tests/test_multihost.py, tests/test_preemption.py, tests/test_bench_profile.py), so a program that
one process compiled (the smoke config's train step, an evaluation program) is loaded by the next
instead of compiled again. A hit is the same executable, so results are unchanged; the cache's
file lock (on whenever its size limit is set) serialises concurrent writers. The directory is
removed when that first process exits. A JAX_COMPILATION_CACHE_DIR set by the caller is used as it
is and kept.
"""

import atexit
import os
import shutil
import tempfile

import local_processes

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
_flags = os.environ.get("XLA_FLAGS", "")
_wanted = [local_processes.DEVICE_COUNT_FLAG + "8"]
if not os.environ["CUDA_VISIBLE_DEVICES"]:
    _wanted.append(local_processes.TEST_XLA_FLAG)
for _flag in _wanted:
    if _flag.split("=")[0] + "=" not in _flags:
        _flags = f"{_flags} {_flag}".strip()
os.environ["XLA_FLAGS"] = _flags
from ascl_jax.xla_cpu import flags as xla_flags  # noqa: E402

xla_flags.tune_cpu_flags()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="ascl_jax_tests_jit_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        JAX_COMPILATION_CACHE_MAX_SIZE=str(2**33),  # > 0 turns the file lock on
    )

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

# Run first (in this order): the tests that take minutes. With `-n 2 --dist worksteal` (make test)
# they start at once and the short tests fill the other worker, instead of one of them starting last.
SLOW_FIRST = (
    "tests/test_multihost.py",
    "tests/test_storage.py",
    "tests/test_preemption.py",
    "tests/test_notebook.py::test_example_notebook_executes",
    "tests/test_train.py::test_train_resume_is_bit_identical_with_partial_batches",
    "tests/test_train.py::test_one_vs_eight_devices",
    "tests/test_train.py::test_acl_pretrain_then_finetune_and_linear_eval",
    "tests/test_selection.py",
    "tests/test_semisup.py",
    "tests/test_train.py::test_train_resume_is_bit_identical",
)


def _rank(item):
    for i, prefix in enumerate(SLOW_FIRST):
        if item.nodeid.startswith(prefix):
            return i
    return len(SLOW_FIRST)


def pytest_collection_modifyitems(config, items):
    del config
    items.sort(key=_rank)  # stable: the order within each group is kept
