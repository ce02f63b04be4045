"""APGD (Croce & Hein, ICML 2020, Alg. 1) for L-inf and L2, and L1-APGD (Croce & Hein, ICCV 2021,
Alg. 1), one restart, as a ``Program``.

Losses (per row; larger = more adversarial): the cross-entropy, the DLR loss and the *targeted* DLR
loss. EoT (Athalye et al. 2018): the gradient is the mean over ``eot_iter`` forward passes of a
randomised model (each pass draws its own key); loss and prediction are the last pass's.

L-inf / L2. Start ``x + eps * t / ||t||_p`` (t ~ U(-1, 1) for L-inf, N(0, 1) for L2); initial step
``2 eps``; the step ``eta * sign(g)`` (L-inf) or ``eta * g / ||g||_2`` (L2), projected, then the
momentum combination ``x + 0.75 (z - x) + 0.25 (x - x_prev)`` (none on the first step), projected
(``projections.project_ball``). Step-size checkpoints at ``p_j N`` with ``p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (``apgd_checkpoints``). At a checkpoint the step
is halved and the iterate reset to the best point if the loss rose in at most ``rho = 0.75`` of the
window's steps, or if the step was not halved at the previous checkpoint and the best loss has not
improved since. The first oscillation window compares the first loss with 0, as the reference's
zero-initialised history does.

L1. Start: the projection of ``x + t``, t ~ N(0, 1), onto the L1 ball ∩ box
(``projections.project_l1_box``). Step: the sparse direction ``sign(g_S) / ||sign(g_S)||_1`` on
the set S of the ``topk`` fraction of coordinates of largest |g| (initially 20%), size ``eta``
(initially ``eps``), projected; no momentum. Every ``max(int(0.04 N), 1)`` iterations: with s the
number of nonzero coordinates of the best point's perturbation, ``topk = s / D / 1.5``; if s shrank
below 95% of its value at the previous check, the step resets to eps and the iterate to the best
point, else the step is divided by 1.5; the step stays in ``[eps / 10, eps]``. With
``use_largereps`` (AutoAttack-standard for L1) the run is three phases at radii 3 eps, 2 eps, eps of
``ceil(0.3 N)``, ``ceil(0.3 N)`` and the remaining iterations, each starting from the previous
phase's best point projected onto its ball (the first from ``x + t`` projected onto the 3 eps ball);
only the last phase's misclassifications count.

The result is the *first* misclassified point found (the reference keeps the last). The per-batch
function is ``autoattack.apgd``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import attacks, losses
from ascl_jax.evaluation.programs import Program, broadcast_rows, example_keys, ranked_target
from ascl_jax.evaluation.projections import check_norm, normalize, project_ball, random_direction

LOSSES = ("ce", "dlr", "dlr-targeted", "ce-targeted")


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
    raise ValueError(f"unknown APGD loss {name!r}; choose one of {list(LOSSES)}")


def apgd_checkpoints(n_iter: int) -> list[tuple[int, int]]:
    """(iteration, window length) of APGD's L-inf / L2 step-size checks, 0-based iterations.

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


def l1_phases(n_iter: int, use_largereps: bool) -> list[tuple[float, int]]:
    """(radius multiple, iterations) of L1-APGD's phases: [(1, N)], or with ``use_largereps``
    [(3, ceil(0.3 N)), (2, ceil(0.3 N)), (1, the rest)] (N = 100: 30, 30, 40)."""
    if not use_largereps:
        return [(1.0, n_iter)]
    a = math.ceil(0.3 * n_iter)
    return [(3.0, a), (2.0, a), (1.0, n_iter - 2 * a)]


def apgd_schedule(n_iter: int, norm: str = "Linf", use_largereps: bool = False) -> dict:
    """Per-iteration tables (numpy, length N) of an APGD run: ``eps_mult`` (radius multiple),
    ``restart`` (a phase starts before this iteration), ``phase``, ``is_ck`` (a step-size check
    after this iteration) and ``k`` (the check's window length)."""
    check_norm(norm)
    if use_largereps and norm != "L1":
        raise ValueError(f"use_largereps is L1-APGD's schedule; norm={norm!r}")
    t = dict(
        eps_mult=np.ones(n_iter, np.float32),
        restart=np.zeros(n_iter, bool),
        phase=np.zeros(n_iter, np.int32),
        is_ck=np.zeros(n_iter, bool),
        k=np.ones(n_iter, np.float32),
    )
    if norm != "L1":
        for i, k in apgd_checkpoints(n_iter):
            t["is_ck"][i], t["k"][i] = True, k
        return t
    start = 0
    for p, (mult, n) in enumerate(l1_phases(n_iter, use_largereps)):
        k = max(int(0.04 * n), 1)
        sl = slice(start, start + n)
        t["eps_mult"][sl], t["phase"][sl], t["k"][sl] = mult, p, k
        t["is_ck"][sl] = (np.arange(n) + 1) % k == 0
        t["restart"][start] = p > 0
        start += n
    return t


def apgd_program(
    *,
    n_iter: int = 100,
    loss: str = "ce",
    rho: float = 0.75,
    y_target: jax.Array | None = None,
    norm: str = "Linf",
    eot_iter: int = 1,
    use_largereps: bool = False,
    stochastic: bool = False,
) -> Program:
    """APGD (one restart) as a Program; see the module docstring and ``autoattack.apgd``.

    For the targeted losses the target is ``y_target`` if given, else the class ranked ``rank`` by
    the clean logits (``init``'s rank argument). ``stochastic``: the model is called as
    ``lf(x, key)`` with a fresh key per forward pass (keys from the stage key and the iteration).
    """
    crit = _loss_fn(loss)
    targeted = loss in ("dlr-targeted", "ce-targeted")
    tab = apgd_schedule(n_iter, norm, use_largereps)
    n_phases = int(tab["phase"][-1]) + 1 if n_iter else 1
    alpha = 1.0 if norm == "L1" else 2.0
    eot_iter = max(int(eot_iter), 1)

    def loss_grad(lf, xa, y, t, key):
        def one(k):
            def total(z):
                logits = lf(z, k) if stochastic else lf(z)
                per = crit(logits, y, t)
                return jnp.sum(per), (per, logits)

            (_, (per, logits)), g = jax.value_and_grad(total, has_aux=True)(xa)
            return per, logits, g

        if eot_iter == 1:
            per, logits, g = one(jax.random.fold_in(key, 0))
        else:

            def body(g_sum, j):
                per, logits, g = one(jax.random.fold_in(key, j))
                return g_sum + g, (per, logits)

            g, (pers, logits_all) = jax.lax.scan(body, jnp.zeros_like(xa), jnp.arange(eot_iter))
            per, logits, g = pers[-1], logits_all[-1], g / eot_iter
        return per, jnp.argmax(logits, axis=-1) == y, g

    def l0(d):
        return jnp.sum((d != 0).reshape(d.shape[0], -1), -1).astype(jnp.float32)

    def start_state(lf, x, y, t, x_adv, e, key, topk, sp_old):
        b = x.shape[0]
        l0_, ok0, g0 = loss_grad(lf, x_adv, y, t, key)
        s = dict(
            x_adv=x_adv,
            x_old=x_adv,
            g=g0,
            x_best=x_adv,
            g_best=g0,
            loss_best=l0_,
            step=jnp.full((b,), alpha, jnp.float32) * e,
            ok=ok0,
            x_found=x_adv,
        )
        if norm == "L1":
            s.update(topk=topk, sp_old=sp_old)
        else:
            s.update(
                n_incr=jnp.zeros((b,), jnp.float32),
                # The reference compares the first loss with an all-zero history row; kept.
                loss_prev=jnp.zeros((b,), jnp.float32),
                reduced_last=jnp.ones((b,), bool),
                loss_best_last=l0_,
            )
        return s

    def init(lf, x, y, index, key, rank, eps):
        b = x.shape[0]
        if targeted:
            t = ranked_target(lf(x), rank) if y_target is None else y_target.astype(jnp.int32)
        else:
            t = y
        keys = example_keys(key, index)
        mkey = jax.random.fold_in(key, 0x5EED)
        e0 = eps * float(tab["eps_mult"][0]) if n_iter else eps
        n_fts = float(np.prod(x.shape[1:]))
        topk = jnp.full((b,), 0.2, jnp.float32)
        sp_old = jnp.full((b,), n_fts, jnp.float32)
        if norm == "L1":
            noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], jnp.float32))(keys)
            x_adv = project_ball(x + noise, x, e0, "L1")
            if use_largereps:  # a given start: sparsity from the start point (reference's x_init)
                sp_old = l0(x_adv - x)
                topk = sp_old / n_fts / 1.5
        else:
            u = random_direction(keys, x.shape[1:], norm)
            x_adv = jnp.clip(x + eps * u, 0.0, 1.0)
        s = start_state(lf, x, y, t, x_adv, e0, jax.random.fold_in(mkey, 0), topk, sp_old)
        return dict(s, target=t, mkey=mkey, phase=jnp.int32(0))

    def new_phase(lf, x, y, e, i, s):
        """A phase of the L1 schedule: restart from the best point, projected onto the new ball."""
        x_adv = project_ball(s["x_best"], x, e, "L1")
        sp = l0(x_adv - x)
        n_fts = float(np.prod(x.shape[1:]))
        key = jax.random.fold_in(s["mkey"], 1_000_000 + i)
        fresh = start_state(lf, x, y, s["target"], x_adv, e, key, sp / n_fts / 1.5, sp)
        return dict(s, **fresh, phase=s["phase"] + 1)

    def grad_step(x, e, a, s):
        xa = s["x_adv"]
        momentum = xa - s["x_old"]
        if norm == "Linf":
            z = project_ball(xa + broadcast_rows(s["step"], x) * jnp.sign(s["g"]), x, e, norm)
            return project_ball(xa + a * (z - xa) + (1.0 - a) * momentum, x, e, norm)
        if norm == "L2":
            z = project_ball(xa + broadcast_rows(s["step"], x) * normalize(s["g"], "L2"), x, e, norm)
            return project_ball(xa + a * (z - xa) + (1.0 - a) * momentum, x, e, norm)
        # L1: sparse step on the top-k coordinates of |g| (ties at the threshold included).
        b = x.shape[0]
        ag = jnp.abs(s["g"]).reshape(b, -1)
        n_fts = ag.shape[-1]
        idx = jnp.clip((1.0 - s["topk"]) * n_fts, 0, n_fts - 1).astype(jnp.int32)
        thr = jnp.take_along_axis(jnp.sort(ag, axis=-1), idx[:, None], -1)
        sgn = jnp.sign(s["g"]) * (ag >= thr).reshape(s["g"].shape)
        l1 = jnp.sum(jnp.abs(sgn).reshape(b, -1), -1)
        z = xa + broadcast_rows(s["step"] / (l1 + 1e-10), x) * sgn
        return project_ball(z, x, e, "L1")

    def step(lf, x, y, eps, i, s):
        is_ck, k_of = jnp.asarray(tab["is_ck"]), jnp.asarray(tab["k"])
        e = eps * jnp.asarray(tab["eps_mult"])[i]
        if n_phases > 1:
            s = jax.lax.cond(
                jnp.asarray(tab["restart"])[i], lambda s: new_phase(lf, x, y, e, i, s), lambda s: s, s
            )
        a = jnp.where(i == 0, 1.0, 0.75)
        z = grad_step(x, e, a, s)
        loss, ok, g = loss_grad(lf, z, y, s["target"], jax.random.fold_in(s["mkey"], i + 1))
        s = dict(s, x_old=s["x_adv"], x_adv=z, g=g)
        s["x_found"] = jnp.where(broadcast_rows(~ok & s["ok"], x), z, s["x_found"])
        s["ok"] = s["ok"] & ok
        better = loss > s["loss_best"]
        s["x_best"] = jnp.where(broadcast_rows(better, x), z, s["x_best"])
        s["g_best"] = jnp.where(broadcast_rows(better, x), g, s["g_best"])
        s["loss_best"] = jnp.where(better, loss, s["loss_best"])
        c = is_ck[i]
        if norm == "L1":
            n_fts = float(np.prod(x.shape[1:]))
            sp = l0(s["x_best"] - x)
            red = c & (sp / s["sp_old"] < 0.95)
            new_step = jnp.clip(jnp.where(red, alpha * e, s["step"] / 1.5), alpha * e / 10.0, alpha * e)
            s["step"] = jnp.where(c, new_step, s["step"])
            s["topk"] = jnp.where(c, sp / n_fts / 1.5, s["topk"])
            s["sp_old"] = jnp.where(c, sp, s["sp_old"])
        else:
            s["n_incr"] = s["n_incr"] + (loss > s["loss_prev"]).astype(jnp.float32)
            s["loss_prev"] = loss
            # Halve and restart from the best point on oscillation / no progress.
            osc = s["n_incr"] <= k_of[i] * rho
            no_impr = (~s["reduced_last"]) & (s["loss_best_last"] >= s["loss_best"])
            red = c & (osc | no_impr)
            s["step"] = jnp.where(red, 0.5 * s["step"], s["step"])
            s["reduced_last"] = jnp.where(c, osc | no_impr, s["reduced_last"])
            s["loss_best_last"] = jnp.where(c, s["loss_best"], s["loss_best_last"])
            s["n_incr"] = jnp.where(c, 0.0, s["n_incr"])
        s["x_adv"] = jnp.where(broadcast_rows(red, x), s["x_best"], s["x_adv"])
        s["g"] = jnp.where(broadcast_rows(red, x), s["g_best"], s["g"])
        return s

    def finish(lf, x, y, eps, s):
        return project_ball(s["x_found"], x, eps, norm), ~s["ok"]

    # Rows fooled in an earlier (larger-radius) phase of the L1 schedule are not done.
    def running(s):
        return s["ok"] | (s["phase"] < n_phases - 1)

    return Program(n_iter, init, step, finish, running=running, norm=norm)
