"""Square Attack (Andriushchenko et al., ECCV 2020), L-infinity, as a ``Program``.

Score-based (logits only), margin loss, vertical-stripe initialisation, squares covering a fraction
``p`` of the image with ``p_init = 0.8`` halved after queries 10, 50, 200, 500, 1000, 2000, 4000,
6000, 8000 (``square_p``). The square position and colours are drawn per example (the reference
draws one square per batch) and the position covers every valid offset ``0..H-s`` (the reference
never picks the last). The per-batch function is ``autoattack.square_linf``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ascl_jax.attacks import project_linf
from ascl_jax.evaluation.programs import Program, broadcast_rows, example_keys, robust_margin

SQUARE_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(i: jax.Array, p_init: float, n_queries: int, rescale: bool = False) -> jax.Array:
    """Fraction of pixels per square at iteration i (p_init halved after 10, 50, 200, ... 8000)."""
    it = i
    if rescale:
        it = (i * 10000) // n_queries
    halvings = sum((it > t).astype(jnp.int32) for t in SQUARE_THRESHOLDS)
    return p_init / (2.0 ** halvings.astype(jnp.float32))


def square_program(*, n_queries: int = 5000, p_init: float = 0.8, rescale_schedule: bool = False) -> Program:
    """Square Attack (L-inf, margin loss, one restart) as a Program; see ``autoattack.square_linf``."""

    def init(lf, x, y, index, key, rank, eps):
        b, h, w, ch = x.shape
        keys = example_keys(key, index)
        init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        stripes = jax.vmap(lambda k: jax.random.rademacher(k, (1, w, ch), jnp.float32))(init_keys)
        x_best = jnp.clip(x + eps * stripes, 0.0, 1.0)
        m0 = robust_margin(lf(x_best), y)
        return dict(
            x_best=x_best, margin=m0, loss=m0, keys=jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        )

    def step(lf, x, y, eps, i, s):
        b, h, w, ch = x.shape
        p = square_p(i, p_init, n_queries, rescale_schedule)
        side = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 1, min(h, w))
        rows = jnp.arange(h)[:, None]
        cols = jnp.arange(w)[None, :]

        def draw(k):
            k1, k2, k3 = jax.random.split(jax.random.fold_in(k, i), 3)
            vh = jax.random.randint(k1, (), 0, h - side + 1)
            vw = jax.random.randint(k2, (), 0, w - side + 1)
            col = jax.random.rademacher(k3, (ch,), jnp.float32)
            inside = (rows >= vh) & (rows < vh + side) & (cols >= vw) & (cols < vw + side)
            return inside[:, :, None] * (2.0 * eps) * col[None, None, :]

        x_new = project_linf(s["x_best"] + jax.vmap(draw)(s["keys"]), x, eps)
        m = robust_margin(lf(x_new), y)
        todo = s["margin"] > 0
        improved = m < s["loss"]
        take = todo & (improved | (m <= 0))
        return dict(
            s,
            x_best=jnp.where(broadcast_rows(take, x), x_new, s["x_best"]),
            margin=jnp.where(take, m, s["margin"]),
            loss=jnp.where(todo & improved, m, s["loss"]),
        )

    def finish(lf, x, y, eps, s):
        return project_linf(s["x_best"], x, eps), s["margin"] <= 0

    return Program(n_queries, init, step, finish, running=lambda s: s["margin"] > 0)
