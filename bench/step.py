"""Images/s of the ResNet-20 adversarial-training work on this CPU, JAX beside PyTorch, in one run.

Rows (batch B = 128, 32x32x3, 10 classes, SPEC 1.6 / peer-bench):
  plain     forward + backward + SGD (momentum 0.9, Nesterov) update, train-mode BN
  pgd/<f>   PGD-10 attack only (Linf, eps 8/255, step 2/255, uniform start, CE, BN running
            statistics = torch ``model.eval()``), in loop form <f>:
              unroll  all steps unrolled in the traced function (ascl_jax.attacks default without
                      the CPU speed layer for attacks of <= MAX_UNROLL steps)
              fori    lax.fori_loop over single steps (unroll=1; ascl_jax.attacks default with the
                      CPU speed layer, ascl_jax.xla_cpu.loops)
              chunk5  lax.fori_loop over 2 chunks of 5 unrolled steps (unroll=5)
            with suffix _raw: without ``canonicalize_convs`` (the HWIO kernel rewrite that removes
            XLA:CPU's slow path for convolutions inside loop bodies, see ascl_jax/xla_cpu/loops.py)
  at        PGD-10 (library default form) + one update on [clean; adv] (2B rows, train-mode BN)
  trainbn_pgd  PGD-10 (library default form) with *batch-statistics* BN, the attack of the authors' ASCL code
            and of train.steps.ascl_step (no PyTorch column; opt in: --rows trainbn)

PyTorch column: /work/shared/peer-bench/torch_resnet20_at.py run with another interpreter
(--torch-python, default .venv-torch/bin/python; skipped if it is missing) with
``--threads 2 --channels-last``. Its ``pgd_only_ms`` is the PGD row, ``adv_ms`` the AT row.

  .venv/bin/python bench/step.py                      # tables + one JSON line
  .venv/bin/python bench/step.py --forms unroll,fori --iters 5 --no-torch
  .venv/bin/python bench/step.py --flag-sets=';--xla_cpu_use_onednn=true'   # XLA_FLAGS sweep
  .venv/bin/python bench/step.py --rows pgd --profile  # where PGD time goes (op categories)

Each XLA_FLAGS setting (--flag-sets, default: none and FAST_FLAGS) runs the JAX rows in a child
process, since XLA reads its flags once per process.

The machine is shared: the load average is printed beside the figures; compare ratios taken in
one run, and re-run when the machine is quiet.

Recorded results: bench/results/step_cpu2.json (2-core Xeon with AVX-512, jax/jaxlib 0.10.2,
torch 2.13.0 oneDNN channels-last).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = "/work/shared/peer-bench/torch_resnet20_at.py"
# XLA:CPU runs convolutions through YNNPACK fusions by default; ascl_jax.xla_cpu.flags turns them off.
FAST_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per row (median)")
    ap.add_argument(
        "--forms",
        default="unroll,fori,chunk5,fori_raw",
        help="PGD loop forms: unroll, fori, chunk<k>, each optionally with _raw",
    )
    ap.add_argument("--rows", default="plain,pgd,at")
    ap.add_argument("--torch-python", default=os.path.join(ROOT, ".venv-torch", "bin", "python"))
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile one PGD call (unroll form) and print time per op category",
    )
    ap.add_argument(
        "--flag-sets",
        default=";" + FAST_FLAGS,
        help="';'-separated XLA_FLAGS values, each run in a child process "
        "(default: none, and the YNNPACK-off setting)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# JAX side


def _timeit(fn, iters):
    """First call (compile + run), one warm-up, then `iters` timed calls: (first_s, median_ms,
    min_ms, cpu_util)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    fn()
    ts = []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    util = (time.process_time() - c0) / (time.perf_counter() - w0)
    ts.sort()
    return first, 1000 * ts[len(ts) // 2], 1000 * ts[0], round(util, 2)


def _form(form: str):
    """Loop form name -> (unroll, canonicalize) for attacks.pgd_linf."""
    base, raw = (form[:-4], True) if form.endswith("_raw") else (form, False)
    canon = False if raw else None
    if base == "unroll":
        return None, canon
    if base == "fori":
        return 1, canon
    m = re.fullmatch(r"chunk(\d+)", base)
    if not m:
        raise SystemExit(f"unknown loop form {form!r}: use unroll, fori or chunk<k> [+ _raw]")
    return int(m.group(1)), canon


def run_jax(args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from ascl_jax import attacks, models

    b, eps, alpha = args.batch, 8 / 255, 2 / 255
    model = models.build_model(
        dict(arch="resnet20", bn="single", normalization="cifar10"), num_classes=10, image_shape=(32, 32, 3)
    )
    kx, ky, ki, ka = jax.random.split(jax.random.key(0), 4)
    x = jax.random.uniform(kx, (b, 32, 32, 3))
    y = jax.random.randint(ky, (b,), 0, 10)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(ki, x)
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    opt_state = tx.init(params)
    rows = set(args.rows.split(","))
    res = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "batch": b,
        "pgd_steps": args.steps,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "devices": jax.device_count(),
    }

    def update(params, batch_stats, opt_state, xb, yb):
        def loss_fn(p):
            out, upd = model.apply(
                {"params": p, "batch_stats": batch_stats}, xb, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], yb).mean()
            return loss, upd["batch_stats"]

        (loss, bs), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        u, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, u), bs, opt_state, loss

    def pgd(params, batch_stats, xb, yb, key, unroll=None, canonicalize=None, bn_mode="eval"):
        logits_fn = attacks.model_forward(
            model, {"params": params, "batch_stats": batch_stats}, bn_mode=bn_mode
        )
        return attacks.pgd_linf(
            attacks.ce_objective(logits_fn, yb),
            xb,
            key,
            eps=eps,
            step_size=alpha,
            num_steps=args.steps,
            unroll=unroll,
            canonicalize=canonicalize,
        )

    def adv_update(params, batch_stats, opt_state, xb, yb, key):
        xa = pgd(params, batch_stats, xb, yb, key)
        return update(params, batch_stats, opt_state, jnp.concatenate([xb, xa]), jnp.concatenate([yb, yb]))

    def record(name, fn, n_img):
        first, med, mn, util = _timeit(fn, args.iters)
        res[name] = {
            "first_call_s": round(first, 2),
            "ms": round(med, 1),
            "min_ms": round(mn, 1),
            "img_per_s": round(n_img / (med / 1000), 1),
            "cpu_util": util,
        }
        print(f"# jax {name}: {res[name]}", file=sys.stderr, flush=True)

    if "plain" in rows:
        f = jax.jit(update)
        record("plain", lambda: jax.block_until_ready(f(params, batch_stats, opt_state, x, y)), b)
    if "pgd" in rows:
        for form in args.forms.split(","):
            unroll, canon = _form(form)
            unroll = args.steps if unroll is None else unroll  # 'unroll': every step unrolled
            f = jax.jit(lambda p, s, xb, yb, k, u=unroll, c=canon: pgd(p, s, xb, yb, k, u, c))
            record(f"pgd_{form}", lambda f=f: f(params, batch_stats, x, y, ka).block_until_ready(), b)
    if "trainbn" in rows:
        f = jax.jit(lambda p, s, xb, yb, k: pgd(p, s, xb, yb, k, bn_mode="train"))
        record("trainbn_pgd", lambda: f(params, batch_stats, x, y, ka).block_until_ready(), b)
    if "at" in rows:
        f = jax.jit(adv_update)
        record("at", lambda: jax.block_until_ready(f(params, batch_stats, opt_state, x, y, ka)), b)
    if args.profile:
        f = jax.jit(lambda p, s, xb, yb, k: pgd(p, s, xb, yb, k))
        res["profile_pgd"] = profile(lambda: f(params, batch_stats, x, y, ka).block_until_ready(), args.steps)
    return res


def profile(fn, steps, top=14) -> dict:
    """Thread time per op category (HLO name without its numeric suffix) for one call of fn."""
    import glob
    import tempfile

    import jax

    fn()
    d = tempfile.mkdtemp(prefix="bench_prof_")
    with jax.profiler.trace(d):
        fn()
    pb = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(pb)
    agg = collections.defaultdict(float)
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for ev in line.events:
                if ev.name.startswith(("ThunkExecutor", "end:")):
                    continue
                agg[re.sub(r"\.\d+$", "", ev.name)] += ev.duration_ns / 1e6
    total = sum(agg.values())
    out = {k: round(v, 1) for k, v in sorted(agg.items(), key=lambda kv: -kv[1])[:top]}
    print(f"# profile (PGD-{steps}, default form), op thread-time total {total:.0f} ms:", file=sys.stderr)
    for k, v in out.items():
        print(f"#   {v:8.1f} ms {100 * v / max(total, 1e-9):5.1f}%  {k}", file=sys.stderr)
    return {"total_ms": round(total, 1), "top_ms": out}


# ----------------------------------------------------------------------------------------------
# PyTorch side


def run_torch(args) -> dict | None:
    py = args.torch_python
    if args.no_torch or not py or not os.path.exists(py) or not os.path.exists(PEER):
        return None
    cmd = [
        py,
        PEER,
        "--threads",
        str(args.torch_threads),
        "--channels-last",
        "--batch",
        str(args.batch),
        "--iters",
        str(max(args.iters, 2)),
        "--pgd-steps",
        str(args.steps),
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"# torch peer failed: {e}", file=sys.stderr)
        return None
    if p.returncode != 0:
        print(f"# torch peer failed (rc {p.returncode}): {p.stderr[-2000:]}", file=sys.stderr)
        return None
    out = json.loads(p.stdout[p.stdout.index("{") :])
    b = args.batch
    out["pgd_img_per_s"] = b / (out["pgd_only_ms"] / 1000)
    print(
        f"# torch: plain {out['plain_img_per_s']:.1f} img/s, pgd {out['pgd_img_per_s']:.1f} "
        f"img/s, at {out['adv_img_per_s']:.1f} img/s",
        file=sys.stderr,
        flush=True,
    )
    return out


# ----------------------------------------------------------------------------------------------


def table(jres: dict, tres: dict | None) -> str:
    lines = [
        f"{'row':<14}{'JAX img/s':>11}{'JAX ms':>10}{'compile+1st s':>15}{'torch img/s':>13}{'JAX/torch':>11}"
    ]
    for name, r in jres.items():
        if not isinstance(r, dict) or "img_per_s" not in r:
            continue
        t = None
        if tres is not None:
            t = {"plain": tres["plain_img_per_s"], "at": tres["adv_img_per_s"]}.get(
                name, tres["pgd_img_per_s"] if name.startswith("pgd") else None
            )
        ts = f"{t:13.1f}" if t else f"{'-':>13}"
        ratio = f"{r['img_per_s'] / t:11.2f}" if t else f"{'-':>11}"
        lines.append(f"{name:<14}{r['img_per_s']:11.1f}{r['ms']:10.1f}{r['first_call_s']:15.1f}{ts}{ratio}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    if args.child:
        print(json.dumps(run_jax(args)))
        return
    load0 = os.getloadavg()
    results = {}
    for flags in args.flag_sets.split(";"):
        flags = flags.strip()
        env = dict(os.environ, XLA_FLAGS=flags)
        child = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--iters",
            str(args.iters),
            "--forms",
            args.forms,
            "--rows",
            args.rows,
        ] + (["--profile"] if args.profile else [])
        print(f"# JAX rows with XLA_FLAGS={flags!r}", file=sys.stderr, flush=True)
        p = subprocess.run(child, env=env, stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:
            print(f"# XLA_FLAGS={flags!r}: child failed (rc {p.returncode})", file=sys.stderr)
            continue
        results[flags] = json.loads(p.stdout.strip().splitlines()[-1])
    load1 = os.getloadavg()
    tres = run_torch(args)
    load2 = os.getloadavg()
    print(
        f"ResNet-20, batch {args.batch}, PGD-{args.steps}, {os.cpu_count()} CPUs; load average "
        f"(1 min) {load0[0]:.1f} at start, {load1[0]:.1f} after JAX, {load2[0]:.1f} after torch"
    )
    for flags, r in results.items():
        print(f"\nJAX {r['jax']} with XLA_FLAGS={flags or '(none)'}")
        print(table(r, tres))
    summary = {"jax": results, "load_avg": [round(v, 2) for v in (load0[0], load1[0], load2[0])]}
    if tres is not None:
        summary["torch"] = {
            k: tres[k]
            for k in (
                "torch",
                "threads",
                "channels_last",
                "plain_ms",
                "pgd_only_ms",
                "adv_ms",
                "plain_img_per_s",
                "pgd_img_per_s",
                "adv_img_per_s",
                "cpu_util_plain_pgd_adv",
            )
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
