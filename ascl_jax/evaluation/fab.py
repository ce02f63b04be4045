"""FAB-T (Croce & Hein, ICML 2020b), the targeted Fast Adaptive Boundary attack, L-infinity, as a
``Program``.

A minimum-norm attack towards a target class: the iterate and the original point are projected
onto the linearised decision hyperplane (inside the [0, 1] box, ``project_linf_hyperplane_box``),
combined with weight ``alpha <= alpha_max = 0.1``, overshoot ``eta = 1.05``, backward step
``beta = 0.9`` after each success. Success: a point of norm <= eps. Targeted form only (the one
AutoAttack-standard uses), one restart. The per-batch function is ``autoattack.fab_targeted_linf``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ascl_jax.attacks import project_linf
from ascl_jax.evaluation.programs import Program, broadcast_rows, example_keys, linf_norms, ranked_target


def project_linf_hyperplane_box(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Minimum-L-inf step d onto the hyperplane <w, t + d> = b with t + d in [0, 1].

    t, w [B, D], b [B] -> d [B, D]. With lambda the L-inf radius, the best move changes every
    coordinate towards the hyperplane by min(lambda, room_i) (room = distance to the box face in
    that direction); the achieved change f(lambda) is piecewise linear and increasing, so lambda is
    found from the sorted rooms by a cumulative sum. If the hyperplane cannot be reached inside the
    box, every coordinate moves to its box face (the closest reachable point in that sense), as in
    FAB.
    """
    viol = jnp.sum(w * t, axis=-1) - b
    sgn = jnp.where(viol >= 0, 1.0, -1.0)
    w2 = w * sgn[:, None]  # now <w2, t + d> must decrease by c
    c = jnp.abs(viol)
    room = jnp.where(w2 > 0, t, 1.0 - t)
    room = jnp.where(w2 == 0, 0.0, room)
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


def fab_program(
    *,
    n_iter: int = 100,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    random_start: bool = False,
    y_target: jax.Array | None = None,
) -> Program:
    """FAB-T (L-inf, one restart) as a Program; see ``autoattack.fab_targeted_linf``."""

    def diff_grad(lf, x1, y, t):
        def total(z):
            logits = lf(z)
            z_y = jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
            z_t = jnp.take_along_axis(logits, t[:, None], -1)[:, 0]
            df = -(z_y - z_t)
            return jnp.sum(df), df

        (_, df), g = jax.value_and_grad(total, has_aux=True)(x1)
        return df, g.reshape(x1.shape[0], -1)

    def init(lf, x, y, index, key, rank, eps):
        b = x.shape[0]
        t = ranked_target(lf(x), rank) if y_target is None else y_target.astype(jnp.int32)
        x1 = x
        if random_start:
            keys = example_keys(key, index)
            u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], jnp.float32, -1.0, 1.0))(keys)
            x1 = jnp.clip(x + 0.5 * eps * u / (broadcast_rows(linf_norms(u), x) + 1e-12), 0.0, 1.0)
        return dict(
            target=t,
            x1=x1.reshape(b, -1),
            adv=x.reshape(b, -1),
            res=jnp.full((b,), 1e10, jnp.float32),
            eps=jnp.full((b,), eps, jnp.float32),
        )

    def step(lf, x, y, eps, i, s):
        b = x.shape[0]
        x0 = x.reshape(b, -1)
        x1 = s["x1"]
        df, w = diff_grad(lf, x1.reshape(x.shape), y, s["target"])
        bb = -df + jnp.sum(w * x1, axis=-1)
        d1 = project_linf_hyperplane_box(x1, w, bb)
        d2 = project_linf_hyperplane_box(x0, w, bb)
        a1 = jnp.maximum(jnp.max(jnp.abs(d1), -1), 1e-8)
        a2 = jnp.maximum(jnp.max(jnp.abs(d2), -1), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        xn = jnp.clip((x1 + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
        is_adv = jnp.argmax(lf(xn.reshape(x.shape)), axis=-1) != y
        nrm = jnp.max(jnp.abs(xn - x0), axis=-1)
        better = is_adv & (nrm < s["res"])
        return dict(
            s,
            adv=jnp.where(better[:, None], xn, s["adv"]),
            res=jnp.where(better, nrm, s["res"]),
            x1=jnp.where(is_adv[:, None], x0 + (xn - x0) * beta, xn),
        )

    def finish(lf, x, y, eps, s):
        found = s["res"] <= eps
        x_adv = jnp.where(found[:, None], s["adv"], x.reshape(x.shape[0], -1)).reshape(x.shape)
        return project_linf(x_adv, x, eps), found

    # A row is done once a point within eps is found; FAB would keep shrinking its norm, which
    # does not change the robustness verdict at this eps.
    return Program(n_iter, init, step, finish, running=lambda s: s["res"] > s["eps"])
