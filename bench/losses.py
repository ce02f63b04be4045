"""Benchmark of the ASCL contrastive loss: forward + backward time and compiled peak temp memory.

For each n (rows of the contrastive batch, n = 2b) and d (latent size) it times, jitted and after a
warm-up, ``value_and_grad`` w.r.t. z of

* ``masks+loss leaked/cosine``: ``selection_masks(..., 'leaked')`` + ``masked_contrastive_loss``
  (cosine similarity, the paper's setting);
* ``masks+loss leaked/linf``: the same with ``neg_linf`` on L2-normalised z (the released run);
* ``supcon``: plain ``supcon_loss`` on the same rows as ``[n/2, 2, d]`` (normalised features).

Memory is ``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes`` (XLA's temp
buffer for the whole fwd+bwd program, excluding inputs and outputs).

Run: ``python bench/losses.py`` (full grid) or e.g. ``python bench/losses.py --n 256 --d 128``.
``--ref-step-ms`` prints each time as a percentage of a reference training-step time (e.g. a
ResNet-20 PGD-10 step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import losses


def _make_fns():
    def ascl_fn(similarity: str, normalize: bool):
        def f(z, labels, preds):
            pos, neg = losses.selection_masks(labels, preds, "leaked")
            return losses.masked_contrastive_loss(
                z, pos, neg, similarity=similarity, temperature=0.2, normalize=normalize
            )[0]

        return f

    def supcon_fn(z, labels, preds):
        del preds
        n, d = z.shape
        feats = jnp.swapaxes(jnp.reshape(losses.l2_normalize(z), (2, n // 2, d)), 0, 1)
        return losses.supcon_loss(feats, labels[: n // 2], temperature=0.2, base_temperature=0.2)

    return {
        "masks+loss leaked/cosine": ascl_fn("cosine", False),
        "masks+loss leaked/linf": ascl_fn("neg_linf", True),
        "supcon": supcon_fn,
    }


def _time(fn, args, reps: int, budget_s: float) -> tuple[float, int]:
    out = fn(*args)
    jax.block_until_ready(out)  # warm-up (compiled already)
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 1:
            break
    return statistics.median(times), len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--d", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions (median reported)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=20.0,
        help="stop repeating a case after this many seconds (at least one timed run)",
    )
    ap.add_argument(
        "--ref-step-ms",
        type=float,
        default=None,
        help="reference step time in ms; adds a column with the loss's share of it",
    )
    ap.add_argument("--only", nargs="+", default=None, help="subset of the case names")
    args = ap.parse_args()

    fns = _make_fns()
    names = [k for k in fns if args.only is None or any(o in k for o in args.only)]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print("value_and_grad w.r.t. z, jitted, median after warm-up; mem = XLA temp buffer")
    header = f"{'case':<26} {'n':>5} {'d':>4} {'time ms':>10} {'runs':>4} {'temp MiB':>9}"
    if args.ref_step_ms:
        header += f" {'% of step':>9}"
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for n in args.n:
        for d in args.d:
            z = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
            labels = jnp.asarray(np.tile(rng.integers(0, 10, n // 2), 2), jnp.int32)
            # predictions right ~80% of the time, like a robust model on adversarial rows
            wrong = rng.random(n) < 0.2
            preds = jnp.asarray(np.where(wrong, rng.integers(0, 10, n), np.asarray(labels)), jnp.int32)
            for name in names:
                f = jax.jit(jax.value_and_grad(fns[name]))
                compiled = f.lower(z, labels, preds).compile()
                mem = compiled.memory_analysis()
                temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20
                sec, runs = _time(compiled, (z, labels, preds), args.reps, args.budget_s)
                line = f"{name:<26} {n:>5} {d:>4} {sec * 1e3:>10.2f} {runs:>4} {temp:>9.1f}"
                if args.ref_step_ms:
                    line += f" {100 * sec * 1e3 / args.ref_step_ms:>8.2f}%"
                print(line, flush=True)


if __name__ == "__main__":
    main()
