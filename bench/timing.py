"""Wall-clock timing shared by the bench scripts (standard library only, so the PyTorch script,
run by another interpreter, imports it too)."""

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
