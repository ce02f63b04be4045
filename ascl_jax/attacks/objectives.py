"""Attack objectives (x_adv [B, H, W, C] -> per-example value [B], maximised) and the model adapter.

Each objective is a closure over a ``logits_fn`` (or a projection function) and its targets; the
attacks of :mod:`ascl_jax.attacks.pgd` ascend the gradient of its sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ascl_jax import losses
from ascl_jax.attacks.checks import check_nonneg, is_concrete
from ascl_jax.config import BN_BRANCHES, BN_MODES

Array = jax.Array
Objective = Callable[[Array], Array]  # x [B, H, W, C] -> per-example value [B] (maximised)
LogitsFn = Callable[[Array], Array]  # x [B, H, W, C] -> logits [B, C]
OUTPUTS = ("logits", "proj", "z", None)


def ce_objective(logits_fn: LogitsFn, labels: Array) -> Objective:
    """Untargeted cross-entropy CE(logits_fn(x), labels) per example [B] (AT; SPEC 1.6).

    labels: int [B]. The sum is the reference's ``CE(..., reduction='sum')``.

    Example (a two-class linear ``logits_fn`` on the mean pixel; at mean 0.5 both logits are 0)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import attacks
        >>> def logits_fn(x):  # [B, H, W, C] -> [B, 2]: class 1 iff the mean pixel exceeds 0.5
        ...     m = x.mean(axis=(1, 2, 3))
        ...     return 10 * jnp.stack([0.5 - m, m - 0.5], axis=-1)
        >>> objective = attacks.ce_objective(logits_fn, jnp.array([0, 1]))
        >>> values = objective(jnp.full((2, 2, 2, 1), 0.5))  # [B] = [2]
        >>> [round(v, 4) for v in values.tolist()]
        [0.6931, 0.6931]
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
    valid: Array | None = None,
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
    valid: optional bool [N] valid pairs of a padded batch (``losses.nt_xent_rows``): padded pairs
    are no negatives and their terms are 0; the division is by the valid anchors' count.
    """
    if x_other_view is not None and other_proj is not None:
        raise ValueError("give at most one of x_other_view and other_proj")
    check_nonneg(temperature, "temperature")
    if is_concrete(temperature) and float(temperature) == 0.0:
        raise ValueError("temperature must be > 0, got 0")

    def objective(x):
        p = proj_fn(x)
        if x_other_view is None and other_proj is None:
            if p.shape[0] % 2:
                raise ValueError(
                    f"nt_xent_objective expects stacked views [2N, ...], got an odd batch of {p.shape[0]}"
                )
            n = p.shape[0] // 2
            if valid is None:
                return losses.nt_xent_rows(p[:n], p[n:], temperature=temperature) / p.shape[0]
            rows = losses.nt_xent_rows(p[:n], p[n:], temperature=temperature, valid=valid)
            return rows / (2 * jnp.maximum(jnp.sum(valid), 1)).astype(jnp.float32)
        fixed = other_proj if other_proj is not None else proj_fn(x_other_view)
        fixed = jax.lax.stop_gradient(fixed)
        n = p.shape[0]
        if valid is None:
            rows = losses.nt_xent_rows(p, fixed, temperature=temperature) / (2 * n)
        else:
            rows = losses.nt_xent_rows(p, fixed, temperature=temperature, valid=valid)
            rows = rows / (2 * jnp.maximum(jnp.sum(valid), 1)).astype(jnp.float32)
        return rows[:n] + rows[n:]  # attribute each pair's two anchors to the attacked row

    return objective


def model_forward(
    model,
    variables,
    *,
    bn: str = "clean",
    bn_mode: str = "eval",
    output: str | None = "logits",
    mask: Array | None = None,
) -> Callable[[Array], Any]:
    """f(x) -> model output for attacks: ``out[output]`` ('logits' [B, C], 'proj' [B, p],
    'z' [B, h]) or, with ``output=None``, the whole dict {'z', 'proj', 'logits'}.

    bn: BN branch of a dual-BN model ('clean' | 'adv'; ignored by single-BN models).
    bn_mode: 'eval' = running statistics (ACL's contrastive attack and ACL's TRADES, SPEC 3.3/3.6;
    evaluation), independent per example; 'train' also for ASCL's TRADES baseline (its trades.py
    calls model.train() before the attack); 'train' = batch statistics of the attacked batch with
    the running-statistics update discarded (ASCL's training attack runs in train mode, SPEC 1.6,
    but here the updates are not kept: deepmind ``test_local_stats``), which couples the rows of
    a batch.
    mask: optional bool [B] valid rows of a padded batch; with ``bn_mode='train'`` the batch
    statistics are taken over them only (``models.norm``). None: all rows.

    Example (the tiny model of :func:`ascl_jax.models.build_model` on 8x8 grey images)::

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from ascl_jax import attacks, models
        >>> model = models.build_model(dict(arch="tiny"), num_classes=3, image_shape=(8, 8, 1))
        >>> x = jnp.full((2, 8, 8, 1), 0.5)
        >>> variables = model.init(jax.random.key(0), x, train=False)
        >>> logits_fn = attacks.model_forward(model, variables, bn_mode="eval")
        >>> logits_fn(x).shape
        (2, 3)
        >>> sorted(attacks.model_forward(model, variables, output=None)(x))
        ['logits', 'proj', 'z']
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
        elif mask is None:
            out, _ = model.apply(variables, x, train=True, bn=bn, mutable=["batch_stats"])
        else:
            out, _ = model.apply(variables, x, train=True, bn=bn, mask=mask, mutable=["batch_stats"])
        return out if output is None else out[output]

    return f
