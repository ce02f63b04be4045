"""Where the test suite's CPU goes: a pytest plugin that records, per test, the CPU seconds of the
test process (all threads: XLA compiles and runs) and of the child processes it waited for (the
CLI, multi-process and emulator tests), and the wall seconds; and a summary per test file.

  PYTHONPATH=bench PYTEST_ADDOPTS="-p pytest_cpu_profile" CPU_PROFILE_OUT=/tmp/cpu.jsonl make test
  .venv/bin/python bench/pytest_cpu_profile.py /tmp/cpu.jsonl   # per-file and top-test sums

Each xdist worker appends one JSON line per test ({id, self, children, wall}) to CPU_PROFILE_OUT
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    del nextitem
    s0, c0 = _cpu()
    t0 = time.time()
    yield
    s1, c1 = _cpu()
    rec = dict(id=item.nodeid, self=s1 - s0, children=c1 - c0, wall=time.time() - t0)
    with open(os.environ.get("CPU_PROFILE_OUT", "cpu_profile.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


def summary(path: str, top: int = 20) -> None:
    """Prints the total, the per-file sums and the `top` tests by CPU seconds (self + children)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    per_file = collections.Counter()
    for r in rows:
        per_file[r["id"].split("::")[0]] += r["self"] + r["children"]
    print(f"{len(rows)} test runs, {sum(per_file.values()):.0f} CPU s (self + children)")
    for name, s in per_file.most_common():
        print(f"{s:8.0f}  {name}")
    print(f"top {top} tests:")
    for r in sorted(rows, key=lambda r: -(r["self"] + r["children"]))[:top]:
        cpu, kids, wall = r["self"] + r["children"], r["children"], r["wall"]
        print(f"{cpu:8.0f}  (children {kids:.0f}, wall {wall:.0f})  {r['id']}")


if __name__ == "__main__":
    summary(sys.argv[1] if len(sys.argv) > 1 else "cpu_profile.jsonl")
