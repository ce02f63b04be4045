"""L-infinity attacks as pure, jit-able functions over an objective closure (STYLE P6).

An *objective* maps x_adv [B, H, W, C] to a per-example value [B] that the attack MAXIMISES; every
attack ascends the gradient of its sum. Because the sum's cotangent is 1 for every row, the gradient
for row i depends only on row i whenever the model treats rows independently (BN with running
statistics, ``bn_mode='eval'``), so PGD / FGSM / mPGD are then independent per example. Two cases
couple rows and are documented where they arise: ``bn_mode='train'`` (batch statistics) and the
NT-Xent objective (the contrastive loss couples every row with every other).

Images are NHWC float32 in [0, 1]; eps and step sizes are in that pixel scale (normalisation is the
model's first operation). Every attack returns ``stop_gradient(x_adv)`` with
``|x_adv - x| <= eps`` and ``0 <= x_adv <= 1``.

References: PGD (Madry et al. 2018; ASCL ``pgd.py::pgd_attack``, SPEC 1.6), ACL's contrastive PGD
(``train_simCLR.py::PGD_contrastive``, SPEC 3.3), TRADES/VAT KL attack (``trades.py``, SPEC 3.6),
FGSM (Goodfellow et al. 2015), multi-targeted PGD (Gowal et al. 2019, "An alternative surrogate loss
for PGD-based adversarial testing").

Loop form. A step is one forward+backward pass. ``unroll`` (steps per loop iteration) or
``max_unroll`` choose the form on any backend (:func:`resolve_unroll`): attacks of at most
``max_unroll`` (default ``MAX_UNROLL``) steps are unrolled, longer ones run a ``lax.fori_loop``
over chunks of ``DEFAULT_CHUNK`` unrolled steps with the remainder unrolled after the loop. When
neither is given and the CPU speed layer is on (:func:`ascl_jax.xla_cpu.enabled`), the gradient
goes through ``canonicalize_convs`` and the steps run as a ``lax.fori_loop`` over single steps
(:mod:`ascl_jax.xla_cpu.loops`); ``canonicalize`` forces the rewrite on or off.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import losses
from ascl_jax.config import ATTACK_INITS as INITS
from ascl_jax.config import BN_BRANCHES, BN_MODES
from ascl_jax.xla_cpu import loops as cpu_loops
from ascl_jax.xla_cpu.loops import canonicalize_convs

Array = jax.Array
Objective = Callable[[Array], Array]  # x [B, H, W, C] -> per-example value [B] (maximised)
LogitsFn = Callable[[Array], Array]  # x [B, H, W, C] -> logits [B, C]

MAX_UNROLL = 20  # attacks with at most this many steps are fully unrolled (resolve_unroll)
DEFAULT_CHUNK = 10  # steps unrolled inside one iteration of the loop for longer attacks
OUTPUTS = ("logits", "proj", "z", None)
NORMAL_INIT_STD = 0.001  # TRADES start: x + 0.001 * N(0, 1) (trades.py, SPEC 3.6)


# ----------------------------------------------------------------------------------------------
# Validation


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_images(x, name: str = "x") -> None:
    """x must be NHWC (rank 4); a concrete x must lie in [0, 1]."""
    if np.ndim(x) != 4:
        raise ValueError(
            f"{name} must be a batch of NHWC images of rank 4, got shape "
            f"{tuple(np.shape(x))} (rank {np.ndim(x)})"
        )
    if _is_concrete(x) and getattr(x, "is_fully_addressable", True):
        v = np.asarray(x)  # host-side check: no op is staged even under an outer trace
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        if not (lo >= 0.0 and hi <= 1.0):  # also rejects NaN
            raise ValueError(
                f"{name} must hold images in [0, 1] (normalisation is the model's "
                f"first operation); got values in [{lo:.4g}, {hi:.4g}]"
            )


def _check_nonneg(value, field: str) -> None:
    """A concrete number must be finite and >= 0 (traced values are left to the caller)."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")


def _check_steps(num_steps, field: str = "num_steps") -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 0:
        raise ValueError(f"{field} must be a Python int >= 0 (it fixes the compiled loop), got {num_steps!r}")
    return int(num_steps)


def _is_zero(value) -> bool:
    return _is_concrete(value) and np.ndim(value) == 0 and float(value) == 0.0


# ----------------------------------------------------------------------------------------------
# Objectives (each: x [B, H, W, C] -> [B], maximised)


def ce_objective(logits_fn: LogitsFn, labels: Array) -> Objective:
    """Untargeted cross-entropy CE(logits_fn(x), labels) per example [B] (AT; SPEC 1.6).

    labels: int [B]. The sum is the reference's ``CE(..., reduction='sum')``.
    """

    def objective(x):
        return losses.cross_entropy(
            logits_fn(x).astype(jnp.float32), labels.astype(jnp.int32), reduction="none"
        )

    return objective


def kl_objective(logits_fn: LogitsFn, clean_logits: Array) -> Objective:
    """KL(softmax(clean_logits) || softmax(logits_fn(x))) per example [B] (TRADES / VAT attack).

    clean_logits [B, C] are held under ``stop_gradient``. The sum equals TRADES's
    ``KLDivLoss(size_average=False)(log_softmax(f(x_adv)), softmax(f(x)))`` (SPEC 3.6).
    """
    log_p = jax.nn.log_softmax(jax.lax.stop_gradient(clean_logits).astype(jnp.float32), axis=-1)
    p = jnp.exp(log_p)

    def objective(x):
        log_q = jax.nn.log_softmax(logits_fn(x).astype(jnp.float32), axis=-1)
        return jnp.sum(p * (log_p - log_q), axis=-1)

    return objective


def targeted_ce_objective(logits_fn: LogitsFn, targets: Array) -> Objective:
    """-CE(logits_fn(x), targets) per example [B]; maximising it pushes x towards targets [B]."""
    ce = ce_objective(logits_fn, targets)
    return lambda x: -ce(x)


def margin_objective(logits_fn: LogitsFn, labels: Array, targets: Array | None = None) -> Objective:
    """Logit margin per example [B]: z_t - z_y (targeted) or max_{j != y} z_j - z_y (untargeted).

    Positive exactly when x is misclassified (as t, for the targeted form). Multi-targeted PGD uses
    the targeted form (Gowal et al. 2019).
    """

    def objective(x):
        logits = logits_fn(x).astype(jnp.float32)
        return logit_margin(logits, labels, targets)

    return objective


def logit_margin(logits: Array, labels: Array, targets: Array | None = None) -> Array:
    """Misclassification margin per row [B]: z_t - z_y, or max_{j != y} z_j - z_y without targets.

    logits [B, C]; labels, targets int [B]. Positive exactly when the row is misclassified (as t,
    for the targeted form); its negation is the robustness margin z_y - max_{j != y} z_j.
    """
    z_y = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    if targets is not None:
        z_t = jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
    else:
        own = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
        z_t = jnp.max(jnp.where(own, -jnp.inf, logits), axis=-1)
    return z_t - z_y


def nt_xent_objective(
    proj_fn: Callable[[Array], Array],
    x_other_view: Array | None = None,
    *,
    temperature: float = 0.5,
    other_proj: Array | None = None,
) -> Objective:
    """ACL's contrastive attack objective (SPEC 3.3): the NT-Xent loss between two views.

    Joint form (``x_other_view is None and other_proj is None``, ACL A2A/DS): the attacked x is the
    stacked views ``[view1; view2]`` of shape [2N, H, W, C] (row i and row N+i are the two views of
    image i); the objective returns [2N] per-anchor terms divided by 2N, so its **sum is the NT-Xent
    loss** (mean over the 2N anchors) of ``proj_fn(x)`` split into [N] + [N].

    One-view form (A2S, ``PGD_contrastive(singleImg=True)``): x [N, H, W, C] is the attacked view
    and the other view is fixed, given either as images ``x_other_view`` [N, H, W, C] (projected
    with ``proj_fn`` under ``stop_gradient``) or directly as projections ``other_proj`` [N, d]
    (when it goes through a different BN branch). Returns [N] values whose sum is the NT-Xent loss.

    NT-Xent couples all rows, so this objective (unlike CE/KL) is not independent per example:
    attacking a sub-batch gives a different result. Temperature 0.5 is ACL's (SPEC 3.1).
    """
    if x_other_view is not None and other_proj is not None:
        raise ValueError("give at most one of x_other_view and other_proj")
    _check_nonneg(temperature, "temperature")
    if _is_concrete(temperature) and float(temperature) == 0.0:
        raise ValueError("temperature must be > 0, got 0")

    def objective(x):
        p = proj_fn(x)
        if x_other_view is None and other_proj is None:
            if p.shape[0] % 2:
                raise ValueError(
                    f"nt_xent_objective expects stacked views [2N, ...], got an odd batch of {p.shape[0]}"
                )
            n = p.shape[0] // 2
            return losses.nt_xent_rows(p[:n], p[n:], temperature=temperature) / p.shape[0]
        fixed = other_proj if other_proj is not None else proj_fn(x_other_view)
        fixed = jax.lax.stop_gradient(fixed)
        n = p.shape[0]
        rows = losses.nt_xent_rows(p, fixed, temperature=temperature) / (2 * n)
        return rows[:n] + rows[n:]  # attribute each pair's two anchors to the attacked row

    return objective


# ----------------------------------------------------------------------------------------------
# Model adapter


def model_forward(
    model, variables, *, bn: str = "clean", bn_mode: str = "eval", output: str | None = "logits"
) -> Callable[[Array], Any]:
    """f(x) -> model output for attacks: ``out[output]`` ('logits' [B, C], 'proj' [B, p],
    'z' [B, h]) or, with ``output=None``, the whole dict {'z', 'proj', 'logits'}.

    bn: BN branch of a dual-BN model ('clean' | 'adv'; ignored by single-BN models).
    bn_mode: 'eval' = running statistics (ACL's contrastive attack and TRADES, SPEC 3.3/3.6;
    evaluation), independent per example; 'train' = batch statistics of the attacked batch with
    the running-statistics update discarded (ASCL's training attack runs in train mode, SPEC 1.6,
    but here the updates are not kept: deepmind ``test_local_stats``), which couples the rows of
    a batch.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    if bn not in BN_BRANCHES:
        raise ValueError(f"bn must be one of {BN_BRANCHES}, got {bn!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")

    def f(x):
        if bn_mode == "eval":
            out = model.apply(variables, x, train=False, bn=bn)
        else:
            out, _ = model.apply(variables, x, train=True, bn=bn, mutable=["batch_stats"])
        return out if output is None else out[output]

    return f


# ----------------------------------------------------------------------------------------------
# PGD core


def project_linf(x_adv: Array, x: Array, eps) -> Array:
    """clip(clip(x_adv, x - eps, x + eps), 0, 1): onto the L-inf eps-ball around x, then onto
    [0, 1] (ASCL pgd.py order). x_adv, x [B, ...]; eps a scalar or an array broadcasting to x."""
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)


def _loop(step: Callable[[Array], Array], state: Array, num_steps: int, unroll: int) -> Array:
    """state <- step(state), num_steps times: unrolled when ``unroll >= num_steps``, else a
    ``lax.fori_loop`` over ``num_steps // unroll`` chunks of ``unroll`` unrolled steps followed by
    the ``num_steps % unroll`` remaining steps unrolled."""
    if unroll >= num_steps:
        for _ in range(num_steps):
            state = step(state)
        return state
    n_chunks, rest = divmod(num_steps, unroll)

    def chunk(_, s):
        for _ in range(unroll):
            s = step(s)
        return s

    state = jax.lax.fori_loop(0, n_chunks, chunk, state)
    for _ in range(rest):
        state = step(state)
    return state


def resolve_unroll(num_steps: int, unroll: int | None = None, max_unroll: int = MAX_UNROLL) -> int:
    """Steps unrolled per loop iteration: all of them when ``num_steps <= max_unroll`` (or when
    ``unroll >= num_steps``), else ``unroll`` (default ``DEFAULT_CHUNK``). ``unroll=1`` is a plain
    ``fori_loop`` over steps."""
    if unroll is not None:
        if isinstance(unroll, bool) or not isinstance(unroll, numbers.Integral) or unroll < 1:
            raise ValueError(f"unroll must be a Python int >= 1 or None, got {unroll!r}")
        return int(unroll)
    if isinstance(max_unroll, bool) or not isinstance(max_unroll, numbers.Integral) or max_unroll < 0:
        raise ValueError(f"max_unroll must be a Python int >= 0, got {max_unroll!r}")
    return max(num_steps, 1) if num_steps <= max_unroll else DEFAULT_CHUNK


def _policy_unroll(num_steps: int, unroll: int | None, max_unroll: int | None, canon: bool) -> int:
    """Steps per loop iteration (module docstring): the CPU speed layer's form when the gradient is
    canonicalised and the caller leaves the form open (``xla_cpu.loops.attack_unroll``), otherwise
    :func:`resolve_unroll` with ``MAX_UNROLL``."""
    fast = cpu_loops.attack_unroll(unroll, max_unroll, canon)
    if fast is not None:
        return fast
    return resolve_unroll(num_steps, unroll, MAX_UNROLL if max_unroll is None else max_unroll)


def pgd_linf(
    objective: Objective,
    x: Array,
    key: Array | None,
    *,
    eps,
    step_size,
    num_steps: int,
    random_start: bool = True,
    init: str = "uniform",
    clip_start: bool = True,
    x_init: Array | None = None,
    unroll: int | None = None,
    max_unroll: int | None = None,
    canonicalize: bool | None = None,
) -> Array:
    """L-inf PGD ascending ``sum(objective(x_adv))`` (Madry et al. 2018; SPEC 1.6, 3.3, 3.6).

    x: [B, H, W, C] in [0, 1]; key: PRNG key for the random start (may be None without one).
    Start: ``init='uniform'``: x + U(-eps, eps) (ASCL/ACL); ``init='normal'``: x + 0.001·N(0, 1)
    (TRADES); ``random_start=False``: x; ``x_init`` [B, H, W, C]: an explicit start (overrides the
    random start; lets callers make the start independent of the batch composition).
    ``clip_start``: clip the start to [0, 1] (ASCL); ACL's contrastive PGD and TRADES do not
    (``clip_start=False``). Each of the ``num_steps`` steps: x_adv <- x_adv + step_size·sign(grad),
    then projection onto the eps-ball around x and onto [0, 1]. With ``num_steps=0`` the projected
    start is returned. ``eps == 0`` returns x unchanged.

    All steps are one traced computation (no host round trip); ``unroll``/``max_unroll`` choose the
    loop form (module docstring; ``resolve_unroll``); ``canonicalize`` (default:
    ``xla_cpu.enabled()``) passes the gradient through ``canonicalize_convs``. ``eps`` and
    ``step_size`` may be traced; ``num_steps``, ``init``, ``random_start``, ``unroll`` are static.

    Returns ``stop_gradient(x_adv)`` [B, H, W, C].
    """
    _check_images(x)
    _check_nonneg(eps, "eps")
    _check_nonneg(step_size, "step_size")
    num_steps = _check_steps(num_steps)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if x_init is not None and np.shape(x_init) != np.shape(x):
        raise ValueError(
            f"x_init must have the shape of x {tuple(np.shape(x))}, got {tuple(np.shape(x_init))}"
        )
    canon = cpu_loops.use_canonical(canonicalize)
    n_unroll = _policy_unroll(num_steps, unroll, max_unroll, canon)
    if random_start and x_init is None and key is None and not _is_zero(eps):
        raise ValueError("random_start=True needs a PRNG key (or pass x_init)")
    return _pgd_linf(
        objective,
        jnp.asarray(x),
        key,
        eps=eps,
        step_size=step_size,
        num_steps=num_steps,
        random_start=random_start,
        init=init,
        clip_start=clip_start,
        x_init=x_init,
        n_unroll=n_unroll,
        canonicalize=canon,
    )


def _pgd_linf(
    objective,
    x,
    key,
    *,
    eps,
    step_size,
    num_steps,
    random_start,
    init,
    clip_start,
    x_init,
    n_unroll,
    canonicalize=False,
):
    """pgd_linf without input validation (arguments already checked)."""
    if _is_zero(eps):
        return jax.lax.stop_gradient(x)

    if x_init is not None:
        start = jnp.asarray(x_init, x.dtype)
    elif random_start:
        if init == "uniform":
            noise = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
        else:
            noise = NORMAL_INIT_STD * jax.random.normal(key, x.shape, x.dtype)
        start = x + noise
    else:
        start = x
    if clip_start:
        start = jnp.clip(start, 0.0, 1.0)
    if num_steps == 0:
        return jax.lax.stop_gradient(project_linf(start, x, eps))

    grad_fn = jax.grad(lambda z: jnp.sum(objective(z)))
    if canonicalize:
        grad_fn = canonicalize_convs(grad_fn)

    def step(xa):
        return project_linf(xa + step_size * jnp.sign(grad_fn(xa)), x, eps)

    return jax.lax.stop_gradient(_loop(step, start, num_steps, n_unroll))


def fgsm(objective: Objective, x: Array, *, eps, canonicalize: bool | None = None) -> Array:
    """FGSM (Goodfellow et al. 2015): clip(x + eps·sign(grad sum(objective)(x)), 0, 1).

    x [B, H, W, C] in [0, 1] -> stop_gradient(x_adv) [B, H, W, C]; eps == 0 returns x.
    ``canonicalize`` as in ``pgd_linf`` (matters when the caller runs FGSM inside a loop).
    """
    _check_images(x)
    _check_nonneg(eps, "eps")
    x = jnp.asarray(x)
    if _is_zero(eps):
        return jax.lax.stop_gradient(x)
    grad_fn = jax.grad(lambda z: jnp.sum(objective(z)))
    if cpu_loops.use_canonical(canonicalize):
        grad_fn = canonicalize_convs(grad_fn)
    g = grad_fn(x)
    return jax.lax.stop_gradient(project_linf(x + eps * jnp.sign(g), x, eps))


# ----------------------------------------------------------------------------------------------
# Multi-targeted PGD


def mpgd_targets(clean_logits: Array, labels: Array, num_targets: int | None = None) -> Array:
    """Target classes [T, B] for mPGD: the non-true classes ranked by the clean logits, highest
    first (Gowal et al. 2019); T = num_targets (default and at most C - 1)."""
    c = clean_logits.shape[-1]
    t = c - 1 if num_targets is None else min(int(num_targets), c - 1)
    masked = jnp.where(jax.nn.one_hot(labels, c, dtype=bool), -jnp.inf, clean_logits.astype(jnp.float32))
    order = jnp.argsort(-masked, axis=-1, stable=True)  # true class last
    return order[:, :t].T.astype(jnp.int32)


def multi_targeted_pgd(
    logits_fn: LogitsFn,
    x: Array,
    labels: Array,
    key: Array | None,
    *,
    num_classes: int,
    eps,
    step_size,
    num_steps: int,
    num_targets: int | None = None,
    loss: str = "margin",
    random_start: bool = True,
    target_batch_size: int | None = None,
    unroll: int | None = None,
    max_unroll: int | None = None,
    canonicalize: bool | None = None,
) -> Array:
    """Multi-targeted PGD (mPGD; Gowal et al. 2019; ASCL evaluation, SPEC 1.6).

    For each target rank k < T (T = num_targets, default num_classes - 1), a targeted L-inf PGD run
    drives every example towards its k-th most likely wrong class under the clean logits, maximising
    the margin z_t - z_y (``loss='margin'``) or -CE to the target (``loss='ce'``). Per example the
    run whose final true-class margin ``z_y - max_{j != y} z_j`` is lowest is kept, so an example is
    misclassified if any run succeeds. Run k uses ``fold_in(key, k)`` for its random start.

    x [B, H, W, C] in [0, 1], labels int [B] -> stop_gradient(x_adv) [B, H, W, C].
    Runs go through a ``lax.scan`` over targets that keeps the running worst case (memory of one
    run); ``target_batch_size`` = g runs g targets at once (vmapped: a batch of g·B rows per
    pass, more memory). With a threefry key the result does not depend on g (RBG keys draw
    differently under vmap). With BN in eval mode each example is independent of the rest of the
    batch; with ``bn_mode='train'`` each run normalises with its own batch statistics.
    """
    _check_images(x)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be a Python int >= 2, got {num_classes!r}")
    if num_targets is not None and (
        isinstance(num_targets, bool)
        or not isinstance(num_targets, numbers.Integral)
        or not 1 <= num_targets <= num_classes - 1
    ):
        raise ValueError(f"num_targets must be None or an int in [1, {num_classes - 1}], got {num_targets!r}")
    if loss not in ("margin", "ce"):
        raise ValueError(f"loss must be one of ('margin', 'ce'), got {loss!r}")
    if target_batch_size is not None and (
        isinstance(target_batch_size, bool)
        or not isinstance(target_batch_size, numbers.Integral)
        or target_batch_size < 1
    ):
        raise ValueError(f"target_batch_size must be None or an int >= 1, got {target_batch_size!r}")
    _check_nonneg(eps, "eps")
    _check_nonneg(step_size, "step_size")
    num_steps = _check_steps(num_steps)
    n_unroll = _policy_unroll(num_steps, unroll, max_unroll, cpu_loops.use_canonical(canonicalize))
    x = jnp.asarray(x)
    if _is_zero(eps):
        return jax.lax.stop_gradient(x)
    if random_start and key is None:
        raise ValueError("random_start=True needs a PRNG key")

    clean_logits = jax.lax.stop_gradient(logits_fn(x))
    if clean_logits.shape[-1] != num_classes:
        raise ValueError(f"logits_fn gives {clean_logits.shape[-1]} classes, num_classes={num_classes}")
    targets = mpgd_targets(clean_logits, labels, num_targets)  # [T, B]
    run_keys = (
        jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.arange(targets.shape[0]))
        if random_start
        else jnp.zeros((targets.shape[0],))
    )

    def run(args):
        tgt, k = args
        if loss == "margin":
            obj = margin_objective(logits_fn, labels, tgt)
        else:
            obj = targeted_ce_objective(logits_fn, tgt)
        xa = _pgd_linf(
            obj,
            x,
            k if random_start else None,
            eps=eps,
            step_size=step_size,
            num_steps=num_steps,
            random_start=random_start,
            init="uniform",
            clip_start=True,
            x_init=None,
            n_unroll=n_unroll,
            canonicalize=cpu_loops.use_canonical(canonicalize),
        )
        # robustness margin of the final iterate: < 0 means misclassified
        return xa, -logit_margin(logits_fn(xa).astype(jnp.float32), labels)

    def merge(best, xs, ms):
        """Keeps per example the lowest margin; xs [g, B, ...], ms [g, B] (first wins ties)."""
        best_x, best_m = best
        i = jnp.argmin(ms, axis=0)
        m = jnp.take_along_axis(ms, i[None], axis=0)[0]
        xg = jnp.take_along_axis(xs, i[None, :, None, None, None], axis=0)[0]
        better = m < best_m
        return jnp.where(better[:, None, None, None], xg, best_x), jnp.where(better, m, best_m)

    n_t = targets.shape[0]
    g = 1 if target_batch_size is None else max(1, min(int(target_batch_size), n_t))
    n_groups, rest = divmod(n_t, g)
    best = (x, jnp.full(x.shape[:1], jnp.inf, jnp.float32))

    def group(best, args):
        return merge(best, *jax.vmap(run)(args)), None

    grouped = jax.tree.map(
        lambda a: a[: n_groups * g].reshape((n_groups, g) + a.shape[1:]), (targets, run_keys)
    )
    best, _ = jax.lax.scan(group, best, grouped)  # a running best: memory O(g·B), not O(T·B)
    if rest:
        best, _ = group(best, jax.tree.map(lambda a: a[n_groups * g :], (targets, run_keys)))
    return jax.lax.stop_gradient(best[0])


__all__ = [
    "pgd_linf",
    "fgsm",
    "multi_targeted_pgd",
    "mpgd_targets",
    "ce_objective",
    "kl_objective",
    "targeted_ce_objective",
    "margin_objective",
    "nt_xent_objective",
    "model_forward",
    "resolve_unroll",
    "canonicalize_convs",
    "MAX_UNROLL",
    "DEFAULT_CHUNK",
    "BN_MODES",
    "project_linf",
    "logit_margin",
]
