"""Benchmark of ``evaluation.autoattack_callable``: AutoAttack examples/s of one version and norm
('standard', L-inf by default) on a CPU (or any JAX backend) model.

Models (``--model``):

* ``digits-linear``: softmax regression on sklearn's 8x8 digits (200 full-batch gradient steps),
  a hand-written ``x -> logits`` function; eps 0.1 (L-inf). Part of the test images stay robust,
  so every component runs its full budget on them.
* ``resnet20`` / ``cnn``: ascl_jax's randomly initialised architecture (CIFAR-10 shapes for
  resnet20, digits shapes for cnn) on random images labelled with its own predictions (clean
  accuracy 1); a random network breaks within a few iterations, so this is the cheap end.

Each figure is the second call (the compiled stages reused); the first call's time (with
compilation) is printed too. The comparison with the official PyTorch AutoAttack on the same
weights is ``scripts/crosscheck_autoattack.py``'s.

Run: ``python bench/autoattack_speed.py`` (digits-linear, 360 test images, 'standard', L-inf),
``--model resnet20 --examples 64``, ``--norm L2 --eps 0.5``, ``--version plus``, ``--json FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import models
from ascl_jax.evaluation import autoattack_callable


def digits_linear(n: int):
    """(predict, images [n, 8, 8, 1], labels [n]): softmax regression trained on the first 1437
    digits, evaluated on the next n."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    xtr, ytr = jnp.asarray(x[:1437].reshape(1437, -1)), jnp.asarray(y[:1437])

    def loss(p):
        logp = jax.nn.log_softmax(xtr @ p[0] + p[1])
        return -jnp.mean(jnp.take_along_axis(logp, ytr[:, None], -1))

    step = lambda _, p: jax.tree.map(lambda a, g: a - g, p, jax.grad(loss)(p))  # noqa: E731
    w, b = jax.jit(lambda p: jax.lax.fori_loop(0, 200, step, p))((jnp.zeros((64, 10)), jnp.zeros(10)))

    def predict(z):
        return z.reshape(z.shape[0], -1) @ w + b

    return predict, x[1437 : 1437 + n], y[1437 : 1437 + n]


def random_arch(arch: str, n: int, seed: int):
    shape, norm = ((32, 32, 3), "cifar10") if arch != "cnn" else ((8, 8, 1), "digits")
    model = models.build_model(dict(arch=arch, normalization=norm), num_classes=10, image_shape=shape)
    variables = model.init(jax.random.key(seed), jnp.zeros((2,) + shape), train=False)

    def predict(z):
        return model.apply(variables, z, train=False)["logits"]

    x = np.random.default_rng(seed).uniform(0, 1, (n,) + shape).astype(np.float32)
    y = np.asarray(jax.jit(predict)(jnp.asarray(x)).argmax(-1)).astype(np.int32)
    return predict, x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits-linear", choices=("digits-linear", "resnet20", "cnn"))
    ap.add_argument("--examples", type=int, default=360)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--norm", default="Linf")
    ap.add_argument("--version", default="standard")
    ap.add_argument("--eps", type=float, default=None, help="default: 0.1 (digits), 8/255 (resnet20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures to this file (must not exist)")
    args = ap.parse_args()
    if args.json and os.path.exists(args.json):
        raise SystemExit(f"--json {args.json} exists")

    if args.model == "digits-linear":
        predict, x, y = digits_linear(args.examples)
    else:
        predict, x, y = random_arch(args.model, args.examples, args.seed)
    eps = args.eps if args.eps is not None else (8 / 255 if args.model == "resnet20" else 0.1)
    kw = dict(eps=eps, norm=args.norm, version=args.version, batch_size=args.batch, seed=args.seed)
    print(
        f"{args.model}: {len(x)} examples {x.shape[1:]}, {jax.device_count()} {jax.default_backend()} "
        f"device(s), batch {args.batch}, AutoAttack '{args.version}' {args.norm} eps {eps:.4g}",
        flush=True,
    )
    t0 = time.perf_counter()
    autoattack_callable(predict, x, y, **kw)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = autoattack_callable(predict, x, y, **kw)
    dt = time.perf_counter() - t0
    out = dict(
        model=args.model,
        examples=len(x),
        version=args.version,
        norm=args.norm,
        eps=eps,
        batch=args.batch,
        backend=jax.default_backend(),
        devices=jax.device_count(),
        cpu_count=os.cpu_count(),
        examples_per_s=len(x) / dt,
        seconds=dt,
        first_call_with_compile_s=first,
        clean_accuracy=res.clean_accuracy,
        robust_accuracy=res.robust_accuracy,
        accuracy_after=res.accuracy_after,
    )
    print(
        f"ascl_jax AutoAttack '{args.version}' {args.norm}: {len(x) / dt:.2f} examples/s ({dt:.1f} s; "
        f"first call incl. compile {first:.1f} s); clean {res.clean_accuracy:.4f} -> robust "
        f"{res.robust_accuracy:.4f}; after each: {res.accuracy_after}",
        flush=True,
    )
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
