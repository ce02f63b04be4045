"""Benchmark of the evaluation attacks: examples/s for PGD-20 and for the custom AutoAttack list
APGD-CE + APGD-T on a ResNet-20.

A randomly initialised ResNet-20 (``models.build_model(arch='resnet20')``, CIFAR-10 shapes 32x32x3) on
random images in [0, 1], labelled with the model's own predictions so that every example starts
correctly classified (otherwise the attacks would skip ~90% of them). eps 8/255, step 2/255.

Figures (all after compilation, which is timed separately):

* ``pgd20``: PGD-20 (uniform start), ``evaluate(attacks=('pgd20',))``: a fixed cost per example.
* ``autoattack_fast``: ``evaluate(attacks=('autoattack',), version='custom',
  autoattack_attacks=('apgd-ce', 'apgd-t'))`` with 1 APGD-CE restart (APGD-CE 100 iterations +
  APGD-T 9 targets x 100 iterations, on the rows still robust, early exit once a batch is broken).
  Its cost depends on the model: a random network breaks within a few iterations, so this figure is
  the *cheap* end. ``--no-early-stop`` disables the early exit.
* ``apgd_iteration``: seconds per APGD iteration (forward + backward) of one full batch without early
  exit, and from it the worst case of the custom list APGD-CE + APGD-T for a batch nobody breaks:
  (1 + 9 targets) x (100 + 1) iterations.

Run: ``python bench/evaluate.py`` (defaults: batch 128, 256 examples), ``--examples 128`` for a
quicker run, ``--unroll k`` for k iterations per compiled loop body, ``--skip-aa`` for PGD only.
Prints one line per figure and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import evaluation, models
from ascl_jax.evaluation import autoattack as aa
from ascl_jax.evaluation import engine as engine_lib


def _logits_fn(model):
    def f(variables, x):
        return model.apply(variables, x, train=False)["logits"]

    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--unroll", type=int, default=None)
    ap.add_argument("--skip-aa", action="store_true")
    ap.add_argument("--no-early-stop", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model = models.build_model(
        dict(arch=args.arch, normalization="cifar10"), num_classes=10, image_shape=(32, 32, 3)
    )
    variables = model.init(jax.random.key(args.seed), jnp.zeros((2, 32, 32, 3)), train=False)
    fn = _logits_fn(model)
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0, 1, (args.examples, 32, 32, 3)).astype(np.float32)
    y = np.concatenate(
        [
            np.asarray(jnp.argmax(fn(variables, jnp.asarray(x[i : i + 256])), -1))
            for i in range(0, len(x), 256)
        ]
    ).astype(np.int32)
    common = dict(
        params=variables,
        eps=8 / 255,
        step_size=2 / 255,
        batch_size=args.batch,
        seed=args.seed,
        sanity=False,
        progress=False,
        unroll=args.unroll,
    )
    eng = engine_lib.get_engine(
        fn, params=variables, batch_size=args.batch, unroll=args.unroll, progress=False
    )
    print(
        f"{args.arch}: {jax.device_count()} {jax.default_backend()} device(s), batch "
        f"{eng.batch_size}, {args.examples} examples, unroll={eng.unroll}",
        flush=True,
    )
    out = dict(
        arch=args.arch,
        batch=eng.batch_size,
        examples=args.examples,
        unroll=eng.unroll,
        backend=jax.default_backend(),
        devices=jax.device_count(),
    )

    def timed(attacks, **kw):
        t0 = time.perf_counter()
        evaluation.evaluate(fn, x[: eng.batch_size], y[: eng.batch_size], attacks=attacks, **common, **kw)
        t_first = time.perf_counter() - t0  # compile + one batch
        t0 = time.perf_counter()
        res = evaluation.evaluate(fn, x, y, attacks=attacks, **common, **kw)
        dt = time.perf_counter() - t0
        return res, dt, t_first

    res, dt, t_first = timed(("pgd20",))
    out["pgd20"] = dict(
        examples_per_s=args.examples / dt,
        seconds=dt,
        first_batch_with_compile_s=t_first,
        robust_accuracy=res["robust_accuracy"]["pgd20"],
    )
    print(
        f"PGD-20: {args.examples / dt:.2f} examples/s ({dt:.1f} s; first batch incl. compile "
        f"{t_first:.1f} s; robust acc {res['robust_accuracy']['pgd20']:.3f})",
        flush=True,
    )

    if not args.skip_aa:
        aa_opts = dict(early_stop=not args.no_early_stop, apgd_ce_restarts=1)
        res, dt, t_first = timed(
            ("autoattack",), version="custom", autoattack_attacks=("apgd-ce", "apgd-t"), aa_options=aa_opts
        )
        after = res["autoattack"]["autoattack-custom"]["accuracy_after"]
        out["autoattack_fast"] = dict(
            examples_per_s=args.examples / dt,
            seconds=dt,
            first_batch_with_compile_s=t_first,
            accuracy_after=after,
            early_stop=not args.no_early_stop,
        )
        print(
            f"the custom list APGD-CE + APGD-T: {args.examples / dt:.2f} examples/s ({dt:.1f} s; first batch "
            f"incl. compile {t_first:.1f} s; accuracy after {after})",
            flush=True,
        )

        # One APGD-CE chunk on a full batch without early exit: cost of an iteration.
        n_it = 10
        fn_stage = eng.stage(
            ("bench-apgd", n_it), aa.component_program("apgd-ce", n_iter=n_it), early_stop=False
        )
        rows = np.arange(eng.batch_size)
        key = jax.random.key(1)
        eng.run_stage(fn_stage, x, y, rows, rows, key, eps=8 / 255)  # compile
        t0 = time.perf_counter()
        eng.run_stage(fn_stage, x, y, rows, rows, key, eps=8 / 255)
        per_it = (time.perf_counter() - t0) / (n_it + 1)
        worst = per_it * 10 * 101
        out["apgd_iteration"] = dict(
            seconds_per_iteration=per_it,
            batch=eng.batch_size,
            worst_case_aa_fast_examples_per_s=eng.batch_size / worst,
        )
        print(
            f"APGD iteration (fwd+bwd, batch {eng.batch_size}): {per_it:.3f} s -> worst-case "
            f"the custom list APGD-CE + APGD-T {eng.batch_size / worst:.3f} examples/s",
            flush=True,
        )
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
