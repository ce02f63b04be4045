"""Square Attack (Andriushchenko et al., ECCV 2020) for L-inf and L2, and its L1 version (Croce &
Hein, ICCV 2021), as a ``Program``.

Score-based (logits only), margin loss; a proposal is kept if it lowers the margin loss or
misclassifies, and rows already misclassified stop changing. Squares cover a fraction ``p`` of the
image, ``p_init = 0.8`` halved after queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
(``square_p``).

* L-inf: vertical-stripe start ``x + eps * s`` (a random sign per column and channel); each query
  sets an s x s window to ``+-2 eps`` per channel, projected to the ball and the box.
* L2 / L1: the start tiles the image with ``h // 5``-sized blocks of the ``eta`` pattern (two
  opposite-signed stacks of nested rectangles weighted ``1 / (k + 1)^2`` for L2, ``1 / (k + 1)^4``
  for L1, ``square_eta``) with a random sign per channel, scaled to norm eps (L2) or projected onto
  the L1 ball ∩ box (L1). Each query takes two s x s windows (s odd, >= 3): the perturbation's
  mass in the union of both is moved into the first as a new ``eta`` pattern (random sign per
  channel, random orientation) plus the window's old direction, scaled to use the budget left
  (L2: ``sqrt(max(eps^2 - ||delta||^2, 0) / C + ||delta_W||^2)`` per channel; L1:
  ``(max(eps - ||delta||_1, 0) / C + ||delta_W||_1) * C``), the second window is cleared, and the
  result rescaled to norm eps (L2) or projected onto the L1 ball ∩ box at ``eps (1 - 1e-6)`` (L1).

The window positions, signs and orientations are drawn per example (the reference draws one window
position and orientation per batch) and cover every valid offset ``0..H-s`` (the reference never
picks the last). The per-batch function is ``autoattack.square``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax.evaluation.programs import Program, broadcast_rows, example_keys, robust_margin
from ascl_jax.evaluation.projections import lp_norms, normalize, project_ball, project_l1_box

SQUARE_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(i: jax.Array, p_init: float, n_queries: int, rescale: bool = False) -> jax.Array:
    """Fraction of pixels per square at iteration i (p_init halved after 10, 50, 200, ... 8000)."""
    it = i
    if rescale:
        it = (i * 10000) // n_queries
    halvings = sum((it > t).astype(jnp.int32) for t in SQUARE_THRESHOLDS)
    return p_init / (2.0 ** halvings.astype(jnp.float32))


def _rectangles(nx: int, ny: int, power: int) -> np.ndarray:
    """Nested rectangles centred at (nx // 2, ny // 2), ring k weighted 1 / (k + 1)^power, unit L2
    (power 2) or L1 (power 4) norm; [nx, ny] float64 (empty when nx = 0)."""
    d = np.zeros((nx, ny))
    xc, yc = nx // 2 + 1, ny // 2 + 1
    for k in range(max(xc, yc)):
        d[max(xc - 1 - k, 0) : min(xc + k, nx), max(yc - 1 - k, 0) : min(yc + k, ny)] += (
            1.0 / (k + 1) ** power
        )
    return d / _norm(d, power)


def _norm(d: np.ndarray, power: int) -> float:
    n = np.sqrt((d * d).sum()) if power == 2 else np.abs(d).sum()
    return n if n > 0 else 1.0


def square_eta(s: int, norm: str) -> np.ndarray:
    """The s x s proposal pattern of Square-L2 / L1: the top s // 2 rows a positive and the rest a
    negative stack of nested rectangles, unit L2 / L1 norm; [s, s] float32."""
    power = 2 if norm == "L2" else 4
    d = np.concatenate([_rectangles(s // 2, s, power), -_rectangles(s - s // 2, s, power)], axis=0)
    return (d / _norm(d, power)).astype(np.float32)


def _eta_table(smax: int, norm: str) -> np.ndarray:
    """square_eta(s) for s = 0..smax, zero-padded to [smax + 1, smax, smax]."""
    t = np.zeros((smax + 1, smax, smax), np.float32)
    for s in range(1, smax + 1):
        t[s, :s, :s] = square_eta(s, norm)
    return t


def _start_blocks(h: int, w: int, norm: str) -> np.ndarray:
    """The start's blocks: [n_blocks, 2, H, W], each block's eta pattern as is and transposed, at
    its tile position (``h // 5`` blocks from offset ``(h - 5 s) // 2``, cut at the image edge)."""
    s = max(h // 5, 1)
    sp = (h - 5 * s) // 2
    eta = square_eta(s, norm)
    out = []
    for bi in range(h // s):
        for bj in range(w // s):
            vh, vw = sp + bi * s, sp + bj * s
            if vh >= h or vw >= w:
                continue
            blk = np.zeros((2, h + s, w + s), np.float32)
            blk[0, vh : vh + s, vw : vw + s] = eta
            blk[1, vh : vh + s, vw : vw + s] = eta.T
            out.append(blk[:, :h, :w])
    return np.stack(out)


def _window(h, w, vh, vw, side):
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    return (rows >= vh) & (rows < vh + side) & (cols >= vw) & (cols < vw + side)


def _start_state(lf, y, x_best, keys):
    """The state at the start point x_best [B, H, W, C]: its margin loss as both ``margin`` and
    ``loss``, and the per-example query keys ``fold_in(keys, 1)``."""
    m0 = robust_margin(lf(x_best), y)
    return dict(x_best=x_best, margin=m0, loss=m0, keys=jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys))


def _accept(lf, x, y, x_new, s):
    """One query's acceptance: a row still running (margin > 0) takes the proposal x_new if it
    lowers the margin loss or misclassifies; ``loss`` follows only the lowered ones."""
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


def _program(n_queries, init, step, norm):
    """The Program of init / step: finish projects x_best onto the ``norm`` eps-ball; a row runs
    while its margin is > 0."""

    def finish(lf, x, y, eps, s):
        return project_ball(s["x_best"], x, eps, norm), s["margin"] <= 0

    return Program(n_queries, init, step, finish, running=lambda s: s["margin"] > 0, norm=norm)


def square_program(
    *, n_queries: int = 5000, p_init: float = 0.8, rescale_schedule: bool = False, norm: str = "Linf"
) -> Program:
    """Square Attack (one restart) as a Program; see the module docstring and ``autoattack.square``."""
    if norm == "Linf":
        return _square_linf(n_queries, p_init, rescale_schedule)

    def fit(x, delta, eps):
        """A perturbation delta -> the image: norm eps (L2) or onto the L1 ball ∩ box (L1)."""
        if norm == "L2":
            return jnp.clip(x + normalize(delta, "L2") * eps, 0.0, 1.0)
        return jnp.clip(x + delta + project_l1_box(x, delta, eps * (1.0 - 1e-6)), 0.0, 1.0)

    def init(lf, x, y, index, key, rank, eps):
        b, h, w, ch = x.shape
        blocks = jnp.asarray(_start_blocks(h, w, norm))  # [nb, 2, H, W]
        keys = example_keys(key, index)

        def start(k):
            k1, k2 = jax.random.split(jax.random.fold_in(k, 0))
            tr = jax.random.bernoulli(k1, 0.5, (blocks.shape[0],))
            sign = jax.random.rademacher(k2, (blocks.shape[0], ch), jnp.float32)
            sel = jnp.where(tr[:, None, None], blocks[:, 1], blocks[:, 0])
            return jnp.einsum("nhw,nc->hwc", sel, sign)

        return _start_state(lf, y, fit(x, jax.vmap(start)(keys), eps), keys)

    def step(lf, x, y, eps, i, s):
        b, h, w, ch = x.shape
        smax = min(h, w)
        table = jnp.asarray(_eta_table(smax, norm))
        p = square_p(i, p_init, n_queries, rescale_schedule)
        side = jnp.maximum(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 3)
        side = jnp.minimum(side + (side % 2 == 0), smax)
        eps_sq = eps * eps

        def propose(delta, k):
            ks = jax.random.split(jax.random.fold_in(k, i), 6)
            vh, vw, vh2, vw2 = (
                jax.random.randint(kk, (), 0, lim - side + 1) for kk, lim in zip(ks[:4], (h, w, h, w))
            )
            pat = jnp.where(jax.random.bernoulli(ks[4]), table[side].T, table[side])
            canvas = jnp.zeros((h + smax, w + smax), jnp.float32)
            eta = jax.lax.dynamic_update_slice(canvas, pat, (vh, vw))[:h, :w]
            sign = jax.random.rademacher(ks[5], (ch,), jnp.float32)
            m1 = _window(h, w, vh, vw, side)[:, :, None]
            m2 = _window(h, w, vh2, vw2, side)[:, :, None]
            both = m1 | m2
            if norm == "L2":
                n_w1 = jnp.sqrt(jnp.sum(jnp.where(m1, delta * delta, 0.0), (0, 1)))
                n_img = jnp.sqrt(jnp.sum(delta * delta))
                n_both = jnp.sqrt(jnp.sum(jnp.where(both, delta * delta, 0.0), (0, 1)))
            else:
                n_w1 = jnp.sum(jnp.where(m1, jnp.abs(delta), 0.0), (0, 1))
                n_img = jnp.sum(jnp.abs(delta))
                n_both = jnp.sum(jnp.where(both, jnp.abs(delta), 0.0), (0, 1))
            new = eta[:, :, None] * sign + jnp.where(m1, delta, 0.0) / (1e-12 + n_w1)
            if norm == "L2":
                scale = jnp.sqrt(jnp.maximum(eps_sq - n_img**2, 0.0) / ch + n_both**2)
                new = new / (1e-12 + jnp.sqrt(jnp.sum(new * new, (0, 1)))) * scale
            else:
                scale = (jnp.maximum(eps - n_img, 0.0) / ch + n_both) * ch
                new = new / (1e-12 + jnp.sum(jnp.abs(new), (0, 1))) * scale
            return jnp.where(m1, new, jnp.where(m2, 0.0, delta))

        delta = jax.vmap(propose)(s["x_best"] - x, s["keys"])
        return _accept(lf, x, y, fit(x, delta, eps), s)

    return _program(n_queries, init, step, norm)


def _square_linf(n_queries: int, p_init: float, rescale_schedule: bool) -> Program:
    def init(lf, x, y, index, key, rank, eps):
        b, h, w, ch = x.shape
        keys = example_keys(key, index)
        init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        stripes = jax.vmap(lambda k: jax.random.rademacher(k, (1, w, ch), jnp.float32))(init_keys)
        return _start_state(lf, y, jnp.clip(x + eps * stripes, 0.0, 1.0), keys)

    def step(lf, x, y, eps, i, s):
        b, h, w, ch = x.shape
        p = square_p(i, p_init, n_queries, rescale_schedule)
        side = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 1, min(h, w))

        def draw(k):
            k1, k2, k3 = jax.random.split(jax.random.fold_in(k, i), 3)
            vh = jax.random.randint(k1, (), 0, h - side + 1)
            vw = jax.random.randint(k2, (), 0, w - side + 1)
            col = jax.random.rademacher(k3, (ch,), jnp.float32)
            return _window(h, w, vh, vw, side)[:, :, None] * (2.0 * eps) * col[None, None, :]

        x_new = project_ball(s["x_best"] + jax.vmap(draw)(s["keys"]), x, eps, "Linf")
        return _accept(lf, x, y, x_new, s)

    return _program(n_queries, init, step, "Linf")


__all__ = ["SQUARE_THRESHOLDS", "square_eta", "square_p", "square_program", "lp_norms"]
