"""Loop form of the evaluation attacks on XLA:CPU: the engine's one compiled while loop per batch
against chunks of unrolled iterations driven from the host.

A randomly initialised ResNet-20 (CIFAR-10 shapes, BN with running statistics), one batch of B
random images, eps 8/255, no early exit (every iteration runs). Attacks: APGD-CE (``--apgd-iters``,
default 100) and PGD (``--pgd-steps``, default 50; step eps/4), as the evaluation engine runs them
(``evaluation.autoattack.component_program`` / ``evaluation.pgd.pgd_program``). Loop forms:

  device      ``Engine.stage`` / ``run_stage``: init, then one ``lax.while_loop`` over single
              iterations (``programs.run_program``; with the CPU speed layer on, each loop body
              goes through ``xla_cpu.loops.canonicalize_convs``), then the verification, all one
              compiled call per batch.
  host<k>     the alternative the engine does not use: the host dispatches compiled chunks of k
              unrolled iterations (straight-line code, no while loop), the state staying on the
              device, then the same verification; built here from the Program's pieces.

Forms are interleaved within each repeat (A B A B ...) in one process; the figures are medians over
``--repeats``, after one untimed call per form (compilation). The machine may be shared: compare the
ratios of one run. Writes a JSON file (``--out``, default bench/results/eval_loop_cpu.json).

  .venv/bin/python bench/eval_loop.py [--batch 128] [--repeats 3] [--forms device,host5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ascl_jax.xla_cpu import flags  # noqa: E402

flags.tune_cpu_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ascl_jax import models, xla_cpu  # noqa: E402
from ascl_jax.evaluation import autoattack as aa  # noqa: E402
from ascl_jax.evaluation import engine as engine_lib  # noqa: E402
from ascl_jax.evaluation import pgd as eval_pgd  # noqa: E402

EPS = 8 / 255


def host_stage(logits_fn, prog, k: int):
    """(params, x, y, index, key, eps) -> (x_adv, fooled): prog's init, then ``n_steps / k`` compiled
    chunks of k unrolled iterations dispatched from the host, then finish and re-verification."""
    init = jax.jit(
        lambda p, x, y, index, key, eps: prog.init(lambda z: logits_fn(p, z), x, y, index, key, 0, eps)
    )

    def chunk(p, x, y, eps, state, i0):
        lf = lambda z: logits_fn(p, z)  # noqa: E731
        for j in range(k):
            state = prog.step(lf, x, y, eps, i0 + j, state)
        return state

    def finish(p, x, y, eps, state):
        lf = lambda z: logits_fn(p, z)  # noqa: E731
        x_adv, _ = prog.finish(lf, x, y, eps, state)
        x_adv = jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)
        return x_adv, jnp.argmax(lf(x_adv), -1) != y

    chunk_j, finish_j = jax.jit(chunk), jax.jit(finish)
    if prog.n_steps % k:
        raise SystemExit(f"host{k}: {prog.n_steps} iterations are not a multiple of {k}")

    def run(p, x, y, index, key, eps):
        state = init(p, x, y, index, key, eps)
        for c in range(prog.n_steps // k):
            state = chunk_j(p, x, y, eps, state, jnp.int32(c * k))
        return finish_j(p, x, y, eps, state)

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--apgd-iters", type=int, default=100)
    ap.add_argument("--pgd-steps", type=int, default=50)
    ap.add_argument("--attacks", default="apgd-ce,pgd")
    ap.add_argument("--forms", default="device,host5")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "eval_loop_cpu.json"))
    args = ap.parse_args(argv)

    model = models.build_model(
        dict(arch="resnet20", normalization="cifar10"), num_classes=10, image_shape=(32, 32, 3)
    )
    b = args.batch
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((2, 32, 32, 3)), train=False))(jax.random.key(0))
    logits_fn = lambda v, x: model.apply(v, x, train=False)["logits"]  # noqa: E731
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (b, 32, 32, 3)).astype(np.float32)
    y = np.asarray(jnp.argmax(logits_fn(variables, jnp.asarray(x)), -1)).astype(np.int32)
    rows = np.arange(b)
    key = jax.random.key(1)
    eng = engine_lib.Engine(logits_fn, params=variables, batch_size=b, progress=False)
    programs = {
        "apgd-ce": aa.component_program("apgd-ce", n_iter=args.apgd_iters),
        "pgd": eval_pgd.pgd_program(num_steps=args.pgd_steps, step_ratio=0.25),
    }

    def make(attack, form):
        prog = programs[attack]
        if form.startswith("host"):
            run = host_stage(logits_fn, prog, int(form[4:]))
            xd, yd, idx = jnp.asarray(x), jnp.asarray(y), jnp.asarray(rows, jnp.int32)
            return lambda: jax.block_until_ready(run(variables, xd, yd, idx, key, jnp.float32(EPS)))
        if form != "device":
            raise SystemExit(f"unknown form {form!r}")
        fn = eng.stage(("bench", attack), prog, early_stop=False)
        return lambda: eng.run_stage(fn, x, y, rows, rows, key, eps=EPS)

    attacks = args.attacks.split(",")
    forms = args.forms.split(",")
    calls = {(a, f): make(a, f) for a in attacks for f in forms}
    res = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_fast": xla_cpu.enabled(),
        "batch": b,
        "apgd_iters": args.apgd_iters,
        "pgd_steps": args.pgd_steps,
        "repeats": args.repeats,
        "load_avg_start": round(os.getloadavg()[0], 2),
        "rows": {},
    }
    first = {}
    for k, call in calls.items():
        t = time.perf_counter()
        call()
        first[k] = time.perf_counter() - t
        print(f"# {k[0]} {k[1]}: first call (compile + run) {first[k]:.1f} s", file=sys.stderr, flush=True)
    times = {k: [] for k in calls}
    for r in range(args.repeats):
        for k, call in calls.items():
            t = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - t)
            print(f"# repeat {r}: {k[0]} {k[1]} {times[k][-1]:.2f} s", file=sys.stderr, flush=True)
    for (a, f), ts in times.items():
        n = programs[a].n_steps
        med = statistics.median(ts)
        res["rows"][f"{a}/{f}"] = {
            "median_s": round(med, 3),
            "times_s": [round(t, 3) for t in ts],
            "ms_per_iteration": round(1000 * med / n, 1),
            "first_call_s": round(first[(a, f)], 2),
        }
    for a in attacks:
        base = res["rows"].get(f"{a}/device")
        for f in forms:
            row = res["rows"][f"{a}/{f}"]
            if base is not None:
                row["time_vs_device"] = round(row["median_s"] / base["median_s"], 3)
    res["load_avg_end"] = round(os.getloadavg()[0], 2)
    print(
        f"ResNet-20, batch {b}, eval-mode BN, {os.cpu_count()} CPUs, load {res['load_avg_start']}"
        f" -> {res['load_avg_end']}"
    )
    for name, row in res["rows"].items():
        print(
            f"{name:<22} {row['median_s']:8.2f} s  {row['ms_per_iteration']:7.1f} ms/it  "
            f"x{row.get('time_vs_device', float('nan')):.3f} of device  (compile+1st "
            f"{row['first_call_s']:.1f} s)"
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
