"""FAB (Croce & Hein, ICML 2020b), the Fast Adaptive Boundary attack, targeted (FAB-T) and
untargeted, for L-inf, L2 and L1, as a ``Program``.

A minimum-norm attack: each iteration linearises the decision boundary at the iterate (targeted:
``g = z_t - z_y``; untargeted: for every class k != y, ``g_k = z_k - z_y``, keeping the class whose
linearised boundary is nearest, ``|g_k| / ||grad g_k||_dual``), projects the iterate and the original
point onto the hyperplane ``{g = 0}`` inside [0, 1] (``projections.project_hyperplane_box``), and
takes the biased step ``(x1 + eta d1)(1 - alpha) + (x0 + eta d2) alpha`` with
``alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max)``, ``alpha_max = 0.1``, overshoot
``eta = 1.05``; after a success the point is recorded if its p-norm is the smallest so far and the
iterate moves back towards x0 by ``beta = 0.9``. Success: a misclassified point of norm <= eps.
A random start (the reference's, for restarts after the first) is ``x + 0.5 eps t / ||t||_p``
(t ~ U(-1, 1) for L-inf, N(0, 1) otherwise). The per-batch function is ``autoattack.fab``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ascl_jax.evaluation.programs import Program, example_keys, ranked_target
from ascl_jax.evaluation.projections import (
    DUAL,
    lp_norms,
    project_ball,
    project_hyperplane_box,
    project_linf_hyperplane_box,
    random_direction,
)


def fab_program(
    *,
    n_iter: int = 100,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    random_start: bool | None = False,
    y_target: jax.Array | None = None,
    norm: str = "Linf",
    targeted: bool = True,
) -> Program:
    """FAB (one restart) as a Program; see the module docstring and ``autoattack.fab``.

    Targeted: the target is ``y_target`` if given, else the class ranked ``rank`` by the clean
    logits. Untargeted: ``init``'s rank argument is the restart index. ``random_start``: True /
    False, or None for the reference's rule (a random start on restarts after the first; for the
    untargeted form the restart index is ``rank``).
    """

    def targeted_diff(lf, x1, y, t):
        def total(z):
            logits = lf(z)
            z_y = jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
            z_t = jnp.take_along_axis(logits, t[:, None], -1)[:, 0]
            df = -(z_y - z_t)
            return jnp.sum(df), df

        (_, df), g = jax.value_and_grad(total, has_aux=True)(x1)
        return df, g.reshape(x1.shape[0], -1)

    def nearest_diff(lf, x1, y):
        """Untargeted: the linearised boundary nearest to x1 under ``norm``: (f [B], grad f [B, D])."""
        logits, vjp = jax.vjp(lf, x1)
        n_cls = logits.shape[-1]
        jac = jax.vmap(lambda c: vjp(jnp.broadcast_to(c, logits.shape))[0])(
            jnp.eye(n_cls, dtype=logits.dtype)
        )
        b = x1.shape[0]
        jac = jnp.moveaxis(jac, 0, 1).reshape(b, n_cls, -1)  # [B, K, D]
        z_y = jnp.take_along_axis(logits, y[:, None], -1)
        j_y = jnp.take_along_axis(jac, y[:, None, None], 1)
        df = logits - z_y
        dg = jac - j_y
        dual = lp_norms(dg.reshape(b * n_cls, -1), DUAL[norm]).reshape(b, n_cls)
        dist = jnp.abs(df) / (dual + 1e-12)
        dist = jnp.where(jax.nn.one_hot(y, n_cls, dtype=bool), jnp.inf, dist)
        k = jnp.argmin(dist, axis=-1)
        f = jnp.take_along_axis(df, k[:, None], -1)[:, 0]
        w = jnp.take_along_axis(dg, k[:, None, None], 1)[:, 0]
        return f, w

    def init(lf, x, y, index, key, rank, eps):
        b = x.shape[0]
        if targeted:
            t = ranked_target(lf(x), rank) if y_target is None else y_target.astype(jnp.int32)
            rnd = jnp.asarray(bool(random_start))
        else:
            t = y
            rnd = jnp.asarray(rank > 0) if random_start is None else jnp.asarray(bool(random_start))
        keys = example_keys(key, index)
        u = random_direction(keys, x.shape[1:], norm)
        x1 = jnp.where(rnd, jnp.clip(x + 0.5 * eps * u, 0.0, 1.0), x)
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
        if targeted:
            df, w = targeted_diff(lf, x1.reshape(x.shape), y, s["target"])
        else:
            df, w = nearest_diff(lf, x1.reshape(x.shape), y)
        bb = -df + jnp.sum(w * x1, axis=-1)
        d1 = project_hyperplane_box(x1, w, bb, norm)
        d2 = project_hyperplane_box(x0, w, bb, norm)
        a1 = jnp.maximum(lp_norms(d1, norm), 1e-8)
        a2 = jnp.maximum(lp_norms(d2, norm), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        xn = jnp.clip((x1 + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
        is_adv = jnp.argmax(lf(xn.reshape(x.shape)), axis=-1) != y
        nrm = lp_norms(xn - x0, norm)
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
        return project_ball(x_adv, x, eps, norm), found

    # A row is done once a point within eps is found; FAB would keep shrinking its norm, which
    # does not change the robustness verdict at this eps.
    return Program(n_iter, init, step, finish, running=lambda s: s["res"] > s["eps"], norm=norm)


__all__ = ["fab_program", "project_linf_hyperplane_box"]
