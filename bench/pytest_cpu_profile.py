"""Where the test suite's CPU goes: a pytest plugin that records, per test, the CPU seconds of the
test process (all threads: XLA compiles and runs) and of the child processes it waited for (the
CLI, multi-process and emulator tests), the wall seconds, and the test process's own JAX
compilations (from `jax.monitoring`: wall seconds in XLA's backend compile, persistent-cache loads
included, and in tracing + lowering, where a function traced inside another's trace counts in both;
persistent-cache hits and misses; subprocesses' compilations are not seen); and a summary per test
file.

  PYTHONPATH=bench PYTEST_ADDOPTS="-p pytest_cpu_profile" CPU_PROFILE_OUT=/tmp/cpu.jsonl make test
  .venv/bin/python bench/pytest_cpu_profile.py /tmp/cpu.jsonl   # per-file and top-test sums

Each xdist worker appends one JSON line per test ({id, self, children, wall, compile_s, trace_s,
cache_hits, cache_misses}) to CPU_PROFILE_OUT
(default cpu_profile.jsonl in the working directory). Children count once they are waited for, so a
test's own subprocesses are charged to it.
"""

import collections
import json
import os
import resource
import sys
import time

import pytest


def _cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


_JAX = collections.Counter()  # this process's compile figures so far (_listen)
_LISTENING = []  # non-empty once the listeners are registered
_EVENTS = {
    "/jax/core/compile/backend_compile_duration": "compile_s",
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "trace_s",
    "/jax/compilation_cache/cache_hits": "cache_hits",
    "/jax/compilation_cache/cache_misses": "cache_misses",
}


def _listen():
    """Registers the jax.monitoring listeners once, after the tests' conftest has imported JAX (an
    earlier import would read JAX's environment settings, e.g. the compilation cache, too soon)."""
    if _LISTENING or "jax" not in sys.modules:
        return
    from jax import monitoring

    def on_duration(event, seconds, **kw):
        del kw
        if event in _EVENTS:
            _JAX[_EVENTS[event]] += seconds

    def on_event(event, **kw):
        del kw
        if event in _EVENTS:
            _JAX[_EVENTS[event]] += 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    _LISTENING.append(True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    del nextitem
    _listen()
    j0 = collections.Counter(_JAX)
    s0, c0 = _cpu()
    t0 = time.time()
    yield
    s1, c1 = _cpu()
    rec = dict(id=item.nodeid, self=s1 - s0, children=c1 - c0, wall=time.time() - t0)
    rec.update({k: round(_JAX[k] - j0[k], 3) for k in set(_EVENTS.values())})
    with open(os.environ.get("CPU_PROFILE_OUT", "cpu_profile.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


def summary(path: str, top: int = 20) -> None:
    """Prints the total, the per-file sums and the `top` tests by CPU seconds (self + children)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    per_file = collections.Counter()
    for r in rows:
        per_file[r["id"].split("::")[0]] += r["self"] + r["children"]
    compile_ = collections.Counter()
    for r in rows:
        compile_[r["id"].split("::")[0]] += r.get("compile_s", 0.0) + r.get("trace_s", 0.0)
    hits, misses = (sum(r.get(k, 0) for r in rows) for k in ("cache_hits", "cache_misses"))
    print(f"{len(rows)} test runs, {sum(per_file.values()):.0f} CPU s (self + children)")
    print(
        f"in the test processes: {sum(r.get('compile_s', 0.0) for r in rows):.0f} s in XLA compiles (wall), "
        f"{sum(r.get('trace_s', 0.0) for r in rows):.0f} s tracing + lowering; persistent cache "
        f"{hits:.0f} hits, {misses:.0f} misses"
    )
    print("  CPU s  compile+trace s  file")
    for name, s in per_file.most_common():
        print(f"{s:8.0f}  {compile_[name]:8.0f}  {name}")
    print(f"top {top} tests:")
    for r in sorted(rows, key=lambda r: -(r["self"] + r["children"]))[:top]:
        cpu, kids, wall = r["self"] + r["children"], r["children"], r["wall"]
        print(f"{cpu:8.0f}  (children {kids:.0f}, wall {wall:.0f})  {r['id']}")


if __name__ == "__main__":
    summary(sys.argv[1] if len(sys.argv) > 1 else "cpu_profile.jsonl")
