"""Norms and projections of the evaluation attacks, per threat model ``norm`` in ``NORMS``.

Rows are flattened examples: ``[B, D]`` (or ``[B, H, W, C]`` where noted), images in [0, 1].

* ``lp_norms`` / ``normalize``: the per-row p-norm and ``d / (||d||_p + 1e-12)``.
* ``project_ball(x_adv, x, eps, norm)``: onto the eps-ball around x and the box [0, 1]. L-inf:
  clip to the ball, then to the box. L2: ``x + d / (||d|| + 1e-12) * min(eps, ||d||)``, then clip
  to the box (APGD's L2 projection, Croce & Hein 2020). L1: the Euclidean projection onto
  ``{||d||_1 <= eps} ∩ {x + d in [0, 1]}`` (``project_l1_box``; Croce & Hein 2021, Lemma 1).
* ``project_hyperplane_box(t, w, b, norm)``: the minimum-p-norm step d with ``<w, t + d> = b`` and
  ``t + d in [0, 1]`` (FAB's projection step, Croce & Hein 2020b, Sec. 3.1): L-inf
  (``project_linf_hyperplane_box``), L2 and L1; when the hyperplane cannot be reached inside the
  box, every coordinate with w != 0 moves to its face towards the hyperplane.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ascl_jax.config import NORMS

# The dual exponent's norm of a gradient: the distance to a linearised boundary under ``norm`` is
# |f| / ||grad f||_dual (FAB, Croce & Hein 2020b, Eq. 4).
DUAL = {"Linf": "L1", "L2": "L2", "L1": "Linf"}


def check_norm(norm: str, name: str = "norm") -> str:
    """``norm`` must be one of ``NORMS`` (case-sensitive, as the reference code)."""
    if norm not in NORMS:
        raise ValueError(f"{name}={norm!r} is not a threat model; choose one of {list(NORMS)}")
    return norm


def _rows(d: jax.Array) -> jax.Array:
    return d.reshape(d.shape[0], -1)


def lp_norms(d: jax.Array, norm: str) -> jax.Array:
    """||d_i||_p per row: [B, ...] -> [B] (p = inf, 2 or 1)."""
    r = _rows(d)
    if norm == "Linf":
        return jnp.max(jnp.abs(r), axis=-1)
    if norm == "L2":
        return jnp.sqrt(jnp.sum(r * r, axis=-1))
    if norm == "L1":
        return jnp.sum(jnp.abs(r), axis=-1)
    raise ValueError(check_norm(norm))


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.reshape(v, jnp.shape(v) + (1,) * (x.ndim - jnp.ndim(v)))


def normalize(d: jax.Array, norm: str) -> jax.Array:
    """d / (||d||_p + 1e-12) per row, same shape as d."""
    return d / (_bcast(lp_norms(d, norm), d) + 1e-12)


def project_l1_box(x: jax.Array, y: jax.Array, eps) -> jax.Array:
    """The step r with x + y + r the Euclidean projection of x + y onto the L1 ball of radius eps
    around x intersected with [0, 1]: z = y + r minimises ||z - y||_2 s.t. ||z||_1 <= eps and
    0 <= x + z <= 1.

    x, y [B, ...] (x in [0, 1]); eps a scalar or [B]. Returns r, shaped like y. The solution is
    ``z_i = sign(y_i) (|y_i| - clip(lambda, e_i, |y_i|))`` with ``e_i`` the part of |y_i| beyond the
    box face and the smallest lambda >= 0 meeting the L1 budget; the piecewise-linear budget
    ``f(lambda) = sum_i clip(lambda, e_i, |y_i|)`` is evaluated at its 2D sorted breakpoints.
    """
    shape = y.shape
    x2, y2 = _rows(x).astype(jnp.float32), _rows(y).astype(jnp.float32)
    b, d = y2.shape
    eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), (b,))
    a = jnp.abs(y2)
    cap = jnp.where(y2 >= 0, 1.0 - x2, x2)
    e = jnp.maximum(a - cap, 0.0)
    target = jnp.sum(a, -1) - eps  # the amount lambda must remove in total
    live = (e < a).astype(jnp.float32)
    v = jnp.concatenate([e, a], axis=-1)
    tags = jnp.concatenate([live, -live], axis=-1)
    order = jnp.argsort(v, axis=-1)
    vs = jnp.take_along_axis(v, order, -1)
    slope = jnp.cumsum(jnp.take_along_axis(tags, order, -1), -1)  # slope of f right of vs[k]
    f0 = jnp.sum(e, -1, keepdims=True)
    seg = slope[:, :-1] * (vs[:, 1:] - vs[:, :-1])
    f = jnp.concatenate([f0, f0 + jnp.cumsum(seg, -1)], axis=-1)  # f(vs[k])
    k = jnp.clip(jnp.sum(f <= target[:, None], -1) - 1, 0, 2 * d - 1)
    fk = jnp.take_along_axis(f, k[:, None], -1)[:, 0]
    vk = jnp.take_along_axis(vs, k[:, None], -1)[:, 0]
    sk = jnp.take_along_axis(slope, k[:, None], -1)[:, 0]
    lam = vk + (target - fk) / jnp.maximum(sk, 1.0)
    lam = jnp.where(target > f0[:, 0], lam, 0.0)  # budget met after the box clip alone
    z = jnp.sign(y2) * (a - jnp.clip(lam[:, None], e, a))
    return (z - y2).reshape(shape)


def project_ball(x_adv: jax.Array, x: jax.Array, eps, norm: str) -> jax.Array:
    """``x_adv`` onto the eps-ball (``norm``) around ``x`` and onto [0, 1]; eps a scalar or [B]."""
    if norm == "Linf":
        e = _bcast(jnp.asarray(eps, jnp.float32), x)
        return jnp.clip(jnp.clip(x_adv, x - e, x + e), 0.0, 1.0)
    d = x_adv - x
    if norm == "L2":
        n = _bcast(lp_norms(d, "L2"), x)
        e = _bcast(jnp.asarray(eps, jnp.float32), x)
        return jnp.clip(x + d / (n + 1e-12) * jnp.minimum(e, n), 0.0, 1.0)
    if norm == "L1":
        return jnp.clip(x + d + project_l1_box(x, d, eps), 0.0, 1.0)
    raise ValueError(check_norm(norm))


def random_direction(key: jax.Array, shape, norm: str) -> jax.Array:
    """One random start direction per row, unit p-norm: U(-1, 1) for L-inf, N(0, 1) otherwise
    (the reference's starts). key [B] (one typed key per row); shape the per-row shape."""
    if norm == "Linf":
        t = jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0))(key)
    else:
        t = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(key)
    return normalize(t, norm)


# ----------------------------------------------------------------------------------------------
# FAB's projections onto a hyperplane inside the box.


def _flip(t, w, b):
    """Signs so that <w2, t + d> must *decrease* by c >= 0; room_i: how far coordinate i can move
    in the decreasing direction inside [0, 1] (0 where w_i = 0)."""
    viol = jnp.sum(w * t, axis=-1) - b
    sgn = jnp.where(viol >= 0, 1.0, -1.0)
    w2 = w * sgn[:, None]
    room = jnp.where(w2 > 0, t, 1.0 - t)
    return w2, jnp.abs(viol), jnp.where(w2 == 0, 0.0, room)


def project_linf_hyperplane_box(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Minimum-L-inf step d onto the hyperplane <w, t + d> = b with t + d in [0, 1].

    t, w [B, D], b [B] -> d [B, D]. With lambda the L-inf radius, the best move changes every
    coordinate towards the hyperplane by min(lambda, room_i) (room = distance to the box face in
    that direction); the achieved change f(lambda) is piecewise linear and increasing, so lambda is
    found from the sorted rooms by a cumulative sum. If the hyperplane cannot be reached inside the
    box, every coordinate moves to its box face (the closest reachable point in that sense), as in
    FAB.
    """
    w2, c, room = _flip(t, w, b)
    aw = jnp.abs(w2)
    order = jnp.argsort(room, axis=-1)
    r = jnp.take_along_axis(room, order, axis=-1)
    a = jnp.take_along_axis(aw, order, axis=-1)
    cum_ar = jnp.cumsum(a * r, axis=-1)
    cum_a = jnp.cumsum(a, axis=-1)
    total_a = cum_a[:, -1:]
    f = cum_ar + r * (total_a - cum_a)  # change achieved at lambda = r_k
    kstar = jnp.sum(f < c[:, None], axis=-1)  # first k with f(r_k) >= c
    d_dim = t.shape[-1]
    feasible = kstar < d_dim
    kprev = jnp.clip(kstar - 1, 0, d_dim - 1)
    s_prev = jnp.where(kstar > 0, jnp.take_along_axis(cum_ar, kprev[:, None], -1)[:, 0], 0.0)
    a_used = jnp.where(kstar > 0, jnp.take_along_axis(cum_a, kprev[:, None], -1)[:, 0], 0.0)
    a_rem = total_a[:, 0] - a_used
    lam = jnp.maximum((c - s_prev) / jnp.maximum(a_rem, 1e-30), 0.0)
    lam = jnp.where(feasible, lam, jnp.inf)
    return -jnp.sign(w2) * jnp.minimum(lam[:, None], room)


def project_l2_hyperplane_box(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Minimum-L2 step d onto <w, t + d> = b with t + d in [0, 1]; t, w [B, D], b [B] -> [B, D].

    KKT: ``d_i = -sign(w_i) min(lambda |w_i|, room_i)``; the change ``h(lambda) = sum_i |w_i|
    min(lambda |w_i|, room_i)`` is piecewise linear in lambda with breakpoints room_i / |w_i|,
    solved from the sorted breakpoints. Coordinates with |w_i| < 1e-8 do not move (as FAB).
    """
    w = jnp.where(jnp.abs(w) < 1e-8, 0.0, w)
    w2, c, room = _flip(t, w, b)
    aw = jnp.abs(w2)
    brk = jnp.where(aw > 0, room / jnp.where(aw > 0, aw, 1.0), jnp.inf)
    order = jnp.argsort(brk, axis=-1)
    r = jnp.take_along_axis(brk, order, -1)
    a = jnp.take_along_axis(aw, order, -1)
    rm = jnp.take_along_axis(room, order, -1)
    sat = jnp.cumsum(a * rm, -1)  # change of the saturated coordinates (breakpoints <= r_k)
    w_rest = jnp.sum(a * a, -1, keepdims=True) - jnp.cumsum(a * a, -1)  # sum of w^2 beyond k
    h = sat + jnp.where(jnp.isfinite(r), r, 0.0) * w_rest  # h(r_k)
    h = jnp.where(jnp.isfinite(r), h, sat)
    d_dim = t.shape[-1]
    k = jnp.sum(h < c[:, None], -1)  # first k with h(r_k) >= c
    feasible = k < d_dim
    kp = jnp.clip(k - 1, 0, d_dim - 1)
    sat_prev = jnp.where(k > 0, jnp.take_along_axis(sat, kp[:, None], -1)[:, 0], 0.0)
    w_from_k = jnp.where(
        k > 0, jnp.take_along_axis(w_rest, kp[:, None], -1)[:, 0], jnp.sum(a * a, -1)
    )  # sum of w^2 over coordinates k, k+1, ...
    lam = jnp.maximum((c - sat_prev) / jnp.maximum(w_from_k, 1e-30), 0.0)
    lam = jnp.where(feasible, lam, jnp.inf)
    return -jnp.sign(w2) * jnp.minimum(lam[:, None] * aw, room)


def project_l1_hyperplane_box(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Minimum-L1 step d onto <w, t + d> = b with t + d in [0, 1]; t, w [B, D], b [B] -> [B, D].

    The L1 cost of a unit change of <w, d> through coordinate i is 1 / |w_i|, so the coordinates are
    used by decreasing |w_i|: each moves to its box face until the remainder is covered by a partial
    move of the next one. Coordinates with |w_i| < 1e-8 do not move (as FAB).
    """
    w = jnp.where(jnp.abs(w) < 1e-8, 0.0, w)
    w2, c, room = _flip(t, w, b)
    aw = jnp.abs(w2)
    order = jnp.argsort(-aw, axis=-1)
    a = jnp.take_along_axis(aw, order, -1)
    cap = jnp.cumsum(a * jnp.take_along_axis(room, order, -1), -1)
    d_dim = t.shape[-1]
    k = jnp.sum(cap < c[:, None], -1)  # the coordinate (sorted position) that finishes the move
    feasible = k < d_dim
    kc = jnp.clip(k, 0, d_dim - 1)
    before = jnp.where(k > 0, jnp.take_along_axis(cap, jnp.clip(k - 1, 0)[:, None], -1)[:, 0], 0.0)
    part = (c - before) / jnp.maximum(jnp.take_along_axis(a, kc[:, None], -1)[:, 0], 1e-30)
    rank = jnp.argsort(order, axis=-1)  # sorted position of each coordinate
    move = jnp.where(rank < k[:, None], room, 0.0)
    move = jnp.where(rank == k[:, None], jnp.minimum(part[:, None], room), move)
    move = jnp.where(feasible[:, None], move, room)
    return -jnp.sign(w2) * move


def project_hyperplane_box(t: jax.Array, w: jax.Array, b: jax.Array, norm: str) -> jax.Array:
    """FAB's projection for ``norm`` (``project_{linf,l2,l1}_hyperplane_box``)."""
    fn = {
        "Linf": project_linf_hyperplane_box,
        "L2": project_l2_hyperplane_box,
        "L1": project_l1_hyperplane_box,
    }.get(norm)
    if fn is None:
        raise ValueError(check_norm(norm))
    return fn(t, w, b)
