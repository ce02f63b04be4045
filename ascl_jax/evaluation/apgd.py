"""APGD (Croce & Hein, ICML 2020, Alg. 1), L-infinity, one restart, as a ``Program``.

Losses (per row; larger = more adversarial): the cross-entropy, the DLR loss and the *targeted* DLR
loss. Start ``x + eps * t / ||t||_inf`` with ``t ~ U(-1, 1)``; initial step ``2 eps``; momentum 0.75
(none on the first step). Step-size checkpoints at ``p_j N`` with ``p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (``apgd_checkpoints``; N = 100: after iterations
22, 41, 57, 70, 80, 87, 93, 99). At a checkpoint the step is halved and the iterate reset to the
best point if the loss rose in at most ``rho = 0.75`` of the window's steps, or if the step was not
halved at the previous checkpoint and the best loss has not improved since. The first oscillation
window compares the first loss with 0, as the reference's zero-initialised history does; the
result is the *first* misclassified point found (the reference keeps the last). The per-batch
function is ``autoattack.apgd_linf``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import attacks, losses
from ascl_jax.attacks import project_linf
from ascl_jax.evaluation.programs import Program, broadcast_rows, example_keys, linf_norms, ranked_target


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """CE per row in float32: logits [B, K], y [B] int -> [B] (``losses.cross_entropy``)."""
    return losses.cross_entropy(logits.astype(jnp.float32), y, reduction="none")


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Difference of Logits Ratio (Croce & Hein 2020, Eq. 5): -(z_y - max_{k!=y} z_k) / (z_pi1 - z_pi3).

    logits [B, K] (K >= 3), y [B] -> [B]. Shift- and scale-invariant in the logits.
    """
    zs = jnp.sort(logits, axis=-1)
    return attacks.logit_margin(logits, y) / (zs[:, -1] - zs[:, -3] + 1e-12)


def targeted_dlr_loss(logits: jax.Array, y: jax.Array, y_target: jax.Array) -> jax.Array:
    """Targeted DLR (Croce & Hein 2020, Eq. 6): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).

    logits [B, K] (K >= 4), y, y_target [B] -> [B].
    """
    zs = jnp.sort(logits, axis=-1)
    z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    z_t = jnp.take_along_axis(logits, y_target[:, None], axis=-1)[:, 0]
    return -(z_y - z_t) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)


def _loss_fn(name: str):
    if name == "ce":
        return lambda logits, y, t: cross_entropy(logits, y)
    if name == "dlr":
        return lambda logits, y, t: dlr_loss(logits, y)
    if name == "dlr-targeted":
        return targeted_dlr_loss
    if name == "ce-targeted":
        return lambda logits, y, t: -cross_entropy(logits, t)
    raise ValueError(
        f"unknown APGD loss {name!r}; choose one of ['ce', 'dlr', 'dlr-targeted', 'ce-targeted']"
    )


def apgd_checkpoints(n_iter: int) -> list[tuple[int, int]]:
    """(iteration, window length) of APGD's step-size checks, 0-based iterations.

    For N = 100: iterations 21, 40, 56, 69, 79, 86, 92, 98 with windows 22, 19, 16, 13, 10, 7, 6, 6.
    The first window is ``max(int(0.22 N), 1)`` iterations; each later one ``max(int(0.03 N), 1)``
    shorter, down to ``max(int(0.06 N), 1)``.
    """
    k = max(int(0.22 * n_iter), 1)
    k_min = max(int(0.06 * n_iter), 1)
    dec = max(int(0.03 * n_iter), 1)
    out, i = [], k - 1
    while i < n_iter:
        out.append((i, k))
        k = max(k - dec, k_min)
        i += k
    return out


def apgd_program(
    *, n_iter: int = 100, loss: str = "ce", rho: float = 0.75, y_target: jax.Array | None = None
) -> Program:
    """APGD (L-inf, one restart) as a Program; see ``autoattack.apgd_linf``.

    For the targeted losses the target is ``y_target`` if given, else the class ranked ``rank`` by
    the clean logits (``init``'s rank argument).
    """
    crit = _loss_fn(loss)
    targeted = loss in ("dlr-targeted", "ce-targeted")
    ck = apgd_checkpoints(n_iter)
    is_ck_np = np.zeros(n_iter, bool)
    k_of_np = np.ones(n_iter, np.float32)
    for i, k in ck:
        is_ck_np[i], k_of_np[i] = True, k

    def loss_grad(lf, xa, y, t):
        def total(z):
            logits = lf(z)
            per = crit(logits, y, t)
            return jnp.sum(per), (per, logits)

        (_, (per, logits)), g = jax.value_and_grad(total, has_aux=True)(xa)
        return per, jnp.argmax(logits, axis=-1) == y, g

    def init(lf, x, y, index, key, rank, eps):
        b = x.shape[0]
        if targeted:
            t = ranked_target(lf(x), rank) if y_target is None else y_target.astype(jnp.int32)
        else:
            t = y
        keys = example_keys(key, index)
        u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], jnp.float32, -1.0, 1.0))(keys)
        x_adv = jnp.clip(x + eps * u / (broadcast_rows(linf_norms(u), x) + 1e-12), 0.0, 1.0)
        l0, ok0, g0 = loss_grad(lf, x_adv, y, t)
        return dict(
            target=t,
            x_adv=x_adv,
            x_old=x_adv,
            g=g0,
            x_best=x_adv,
            g_best=g0,
            loss_best=l0,
            step=jnp.full((b,), 2.0 * eps, jnp.float32),
            ok=ok0,
            x_found=x_adv,
            n_incr=jnp.zeros((b,), jnp.float32),
            # The reference compares the first loss with an all-zero history row; kept.
            loss_prev=jnp.zeros((b,), jnp.float32),
            reduced_last=jnp.ones((b,), bool),
            loss_best_last=l0,
        )

    def step(lf, x, y, eps, i, s):
        is_ck, k_of = jnp.asarray(is_ck_np), jnp.asarray(k_of_np)
        a = jnp.where(i == 0, 1.0, 0.75)
        momentum = s["x_adv"] - s["x_old"]
        z = project_linf(s["x_adv"] + broadcast_rows(s["step"], x) * jnp.sign(s["g"]), x, eps)
        z = project_linf(s["x_adv"] + a * (z - s["x_adv"]) + (1.0 - a) * momentum, x, eps)
        loss, ok, g = loss_grad(lf, z, y, s["target"])
        s = dict(s, x_old=s["x_adv"], x_adv=z, g=g)
        s["x_found"] = jnp.where(broadcast_rows(~ok & s["ok"], x), z, s["x_found"])
        s["ok"] = s["ok"] & ok
        s["n_incr"] = s["n_incr"] + (loss > s["loss_prev"]).astype(jnp.float32)
        s["loss_prev"] = loss
        better = loss > s["loss_best"]
        s["x_best"] = jnp.where(broadcast_rows(better, x), z, s["x_best"])
        s["g_best"] = jnp.where(broadcast_rows(better, x), g, s["g_best"])
        s["loss_best"] = jnp.where(better, loss, s["loss_best"])
        # Step-size checkpoint: halve and restart from the best point on oscillation / no progress.
        c = is_ck[i]
        osc = s["n_incr"] <= k_of[i] * rho
        no_impr = (~s["reduced_last"]) & (s["loss_best_last"] >= s["loss_best"])
        red = c & (osc | no_impr)
        s["step"] = jnp.where(red, 0.5 * s["step"], s["step"])
        s["x_adv"] = jnp.where(broadcast_rows(red, x), s["x_best"], s["x_adv"])
        s["g"] = jnp.where(broadcast_rows(red, x), s["g_best"], s["g"])
        s["reduced_last"] = jnp.where(c, osc | no_impr, s["reduced_last"])
        s["loss_best_last"] = jnp.where(c, s["loss_best"], s["loss_best_last"])
        s["n_incr"] = jnp.where(c, 0.0, s["n_incr"])
        return s

    def finish(lf, x, y, eps, s):
        return project_linf(s["x_found"], x, eps), ~s["ok"]

    return Program(n_iter, init, step, finish, running=lambda s: s["ok"])
