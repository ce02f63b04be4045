"""Test helpers: N local processes x D CPU devices joined by jax.distributed, started through
launch/local_multiprocess.sh (tests/test_multihost.py, tests/test_preemption.py).

`launch` runs the launcher with this interpreter, this checkout on PYTHONPATH and a coordinator on
127.0.0.1 at a port that was free a moment before (`free_port`); the launcher prints each
process's pid and exit status, which `pids` and `exit_statuses` read back from its output.
`cache_env` shares a persistent compilation cache between the processes of a run (and between runs
of the same programs). `TEST_XLA_FLAG`: the XLA flag that tests/conftest.py appends to XLA_FLAGS on
a CPU-only session; `one_device_xla_flags`: the session's XLA_FLAGS for a CLI subprocess that runs
on one CPU device, as a user's would.
"""

import contextlib
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
_PID = re.compile(r"^local_multiprocess: process (\d+) pid (\d+)$", re.M)
_EXIT = re.compile(r"^local_multiprocess: process (\d+) exited with status (\d+)$", re.M)
_GIVEN = set()
# LLVM -O1 for the tests' compilations (tests/conftest.py says why)
TEST_XLA_FLAG = "--xla_backend_optimization_level=1"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count="  # + the number of simulated CPU devices


def free_port() -> int:
    """A TCP port that nothing is bound to now, below the kernel's ephemeral range (so no outgoing
    connection, e.g. another run's gloo, takes it before the coordinator binds it), and not
    returned before by this process."""
    try:
        low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 10000), low)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free TCP port in [{low - 10000}, {low})")


def one_device_xla_flags() -> str:
    """This session's XLA_FLAGS without its simulated device count: a subprocess given it sees one
    CPU device and compiles as the session does (tests/conftest.py)."""
    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG))


def cache_env(cache_dir) -> dict:
    """Environment entries for a persistent compilation cache in `cache_dir` that every program is
    written to and that its users lock (JAX_COMPILATION_CACHE_MAX_SIZE > 0)."""
    return dict(
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        JAX_COMPILATION_CACHE_MAX_SIZE=str(2**32),
    )


def launch(nproc, ndev, config, workdir, *flags, env=None, log=None, **popen_kw) -> subprocess.Popen:
    """`launch/local_multiprocess.sh NPROC NDEV CONFIG WORKDIR FLAGS...` (CONFIG: a config file or a
    chain .json). env: the environment (default this process's); log: a file that receives the
    launcher's and the processes' stdout and stderr (else `popen_kw` says where they go)."""
    env = dict(os.environ if env is None else env, PY=sys.executable, PYTHONPATH=str(ROOT))
    env.update(COORDINATOR_HOST="127.0.0.1", PORT=str(free_port()))
    cmd = ["bash", "launch/local_multiprocess.sh", str(nproc), str(ndev), str(config), str(workdir)]
    if log is not None:
        with open(log, "a") as f:  # O_APPEND: the processes' lines land whole
            return subprocess.Popen([*cmd, *flags], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    return subprocess.Popen([*cmd, *flags], cwd=ROOT, env=env, **popen_kw)


def pids(log, nproc: int, proc: subprocess.Popen, timeout: float = 60) -> list[int]:
    """The pids of the `nproc` processes of a launch whose output goes to `log`, in process order."""
    deadline = time.time() + timeout
    while True:
        found = {int(i): int(p) for i, p in _PID.findall(pathlib.Path(log).read_text())}
        if len(found) == nproc:
            return [found[i] for i in range(nproc)]
        assert proc.poll() is None and time.time() < deadline, pathlib.Path(log).read_text()[-3000:]
        time.sleep(0.05)


def exit_statuses(output: str) -> dict[int, int]:
    """{process index: exit status} of a finished launch, from its output."""
    return {int(i): int(rc) for i, rc in _EXIT.findall(output)}


def stop(proc: subprocess.Popen, log) -> None:
    """Ends a launch that is still running: SIGKILL to those of its processes (the pids it printed)
    that are still the launcher's children, then to the launcher."""
    if proc.poll() is not None:
        return
    for _, pid in _PID.findall(pathlib.Path(log).read_text()):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # it has exited already
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == proc.pid:  # its parent: the launcher
                os.kill(int(pid), signal.SIGKILL)
    proc.kill()
    proc.wait()
