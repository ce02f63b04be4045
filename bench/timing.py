"""Wall-clock timing and the machine's name, shared by the bench scripts and scripts/reproduce.py
(standard library only, so the PyTorch script, run by another interpreter, imports it too)."""

import platform
import statistics
import time


def median_ms(call, iters: int, warmup: int = 2) -> float:
    """Median wall time of ``call()`` in ms over ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def cpu_name():
    """The CPU this process runs on: /proc/cpuinfo's model name with its family and model numbers
    (virtual machines often report a generic name), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.readlines()
    except OSError:
        lines = []
    info = {}
    for line in lines:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    if info.get("model name"):
        return f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"
    return platform.processor() or platform.machine()
