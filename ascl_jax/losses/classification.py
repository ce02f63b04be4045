"""Classification-space losses: cross entropy, KL, TRADES, distillation, ACL's semi-supervised loss.

ASCL Eq. 4 (adversarial training CE) and Eq. 5 (VAT KL); TRADES fine-tuning (SPEC §3.6) and ACL's
semi-supervised distillation (ACL Eq. 3, SPEC §3.7). Logits are ``[N, C]``, labels int ``[N]``; every
loss works under ``jax.jit`` and ``jax.grad`` and computes in the floating dtype of the logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ascl_jax.losses.checks import (
    Array,
    check_choice,
    check_ndim,
    check_positive,
    check_same_shape,
    float_dtype,
)

KL_REDUCTIONS = ("batchmean", "mean", "sum", "none")
CE_REDUCTIONS = ("mean", "sum", "none")


def _valid_rows(valid: Array, n: int) -> Array:
    """bool ``[N]`` valid-row mask (the padded last batch of an epoch), shape-checked."""
    if jnp.shape(valid) != (n,):
        raise ValueError(f"valid must have shape [N] = ({n},), got {tuple(jnp.shape(valid))}")
    return jnp.asarray(valid, bool)


def _count(valid: Array, dtype) -> Array:
    """The number of valid rows as ``dtype`` (at least 1, so an all-padding batch gives 0, not NaN)."""
    return jnp.maximum(jnp.sum(valid), 1).astype(dtype)


def kl_divergence(
    logits_p: Array, logits_q: Array, *, reduction: str = "batchmean", valid: Array | None = None
) -> Array:
    """``KL(softmax(logits_p) || softmax(logits_q))`` per row: ASCL Eq. 5 (VAT), TRADES.

    SPEC §1.1 (VAT), §3.6 (TRADES).

    Gradients flow through both arguments (the authors' VAT and TRADES do not stop either).

    Args:
        logits_p, logits_q: float ``[N, C]``.
        reduction: ``'batchmean'`` (sum / N, paper Eq. 5), ``'mean'`` (sum / (N*C), PyTorch
            ``KLDivLoss(reduction='mean')`` as in the authors' VAT term, SPEC §1.4), ``'sum'``, or
            ``'none'`` (per-row ``[N]``).
        valid: optional bool ``[N]``; only these rows count (N becomes their number; padded rows
            give 0 under ``'none'``). None: every row (the unmasked arithmetic).

    Returns:
        Scalar, or ``[N]`` for ``'none'``.

    Example (row 0: equal distributions; row 1: KL([1/2, 1/2] || [1/4, 3/4]) = log(4/3) / 2)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> logits_p = jnp.zeros((2, 2))  # [N, C] = [2, 2], uniform
        >>> logits_q = jnp.log(jnp.array([[1.0, 1.0], [1.0, 3.0]]))
        >>> kl = losses.kl_divergence(logits_p, logits_q, reduction="none")  # [2]
        >>> [round(v, 4) for v in kl.tolist()], round(float(losses.kl_divergence(logits_p, logits_q)), 4)
        ([0.0, 0.1438], 0.0719)
    """
    check_choice("reduction", reduction, KL_REDUCTIONS)
    check_ndim("logits_p", logits_p, 2, "[N, C]")
    check_same_shape("logits_p", logits_p, "logits_q", logits_q)
    dtype = float_dtype(logits_p)
    log_p = jax.nn.log_softmax(logits_p, axis=-1)
    log_q = jax.nn.log_softmax(logits_q, axis=-1)
    per_row = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    if valid is not None:
        valid = _valid_rows(valid, logits_p.shape[0])
        per_row = jnp.where(valid, per_row, 0)
        n = _count(valid, dtype)
    else:
        n = logits_p.shape[0]
    if reduction == "none":
        return per_row
    total = jnp.sum(per_row)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / n
    return total / (n * logits_p.shape[1])


def cross_entropy(
    logits: Array, labels: Array, *, reduction: str = "mean", valid: Array | None = None
) -> Array:
    """Softmax cross-entropy with integer labels: ASCL Eq. 4, AT / TRADES natural term (SPEC §1.1).

    Args:
        logits: float ``[N, C]``.
        labels: int ``[N]`` in ``[0, C)``.
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (per-row ``[N]``).
        valid: optional bool ``[N]``; only these rows count (the mean is over them; padded rows
            give 0 under ``'none'``). None: every row (the unmasked arithmetic).

    Returns:
        Scalar, or ``[N]`` for ``'none'``.

    Example (uniform logits over C = 3 classes: log 3 per row)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> ce = losses.cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 2]), reduction="none")  # [2]
        >>> [round(v, 4) for v in ce.tolist()]
        [1.0986, 1.0986]
    """
    check_choice("reduction", reduction, CE_REDUCTIONS)
    check_ndim("logits", logits, 2, "[N, C]")
    float_dtype(logits)
    if jnp.shape(labels) != logits.shape[:1]:
        raise ValueError(
            f"labels must have shape [N] = ({logits.shape[0]},) for logits of shape "
            f"{logits.shape}, got {tuple(jnp.shape(labels))}"
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
    log_p = jax.nn.log_softmax(logits, axis=-1)
    per_row = -jnp.take_along_axis(log_p, jnp.asarray(labels)[:, None], axis=-1)[:, 0]
    if valid is not None:
        valid = _valid_rows(valid, logits.shape[0])
        per_row = jnp.where(valid, per_row, 0)
        if reduction == "mean":
            return jnp.sum(per_row) / _count(valid, per_row.dtype)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return jnp.sum(per_row)
    return jnp.mean(per_row)


def trades_kl(logits_nat: Array, logits_adv: Array, *, valid: Array | None = None) -> Array:
    """TRADES robust term ``sum_i KL(p_nat,i || p_adv,i) / b`` (SPEC §3.6, ``trades.py``).

    Args:
        logits_nat, logits_adv: float ``[b, C]``; gradients flow through both.
        valid: optional bool ``[b]`` valid rows (b = their number), as :func:`kl_divergence`.

    Returns:
        Scalar.

    Example (the rows of :func:`kl_divergence`'s example, mean over b = 2)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> logits_adv = jnp.log(jnp.array([[1.0, 1.0], [1.0, 3.0]]))
        >>> round(float(losses.trades_kl(jnp.zeros((2, 2)), logits_adv)), 4)
        0.0719
    """
    return kl_divergence(logits_nat, logits_adv, reduction="batchmean", valid=valid)


def _distillation_rows(logits: Array, teacher_logits: Array, t: Array) -> Array:
    """``D(a, p) = sum_c -log_softmax(a/T)_c softmax(p/T)_c`` per row: [N, C], [N, C] -> [N]."""
    return jnp.sum(
        -jax.nn.log_softmax(logits / t, axis=-1) * jax.nn.softmax(teacher_logits / t, axis=-1), axis=-1
    )


def soft_distillation(logits: Array, teacher_logits: Array, temperature: float = 1.0) -> Array:
    """ACL semi-supervised distillation ``mean_rows sum_c -log_softmax(a/T) * softmax(p/T)``.

    SPEC §3.7 (``train_trades_cifar10_semisupervised.py``).

    The ``T^2`` factor and the per-part weighting of ACL Eq. 3 are left to the caller. The teacher
    logits are used as given (the pseudo-labels are constants in ACL; pass them as data).

    Args:
        logits: float ``[N, C]`` student logits ``a``.
        teacher_logits: float ``[N, C]`` teacher logits ``p``.
        temperature: T > 0.

    Returns:
        Scalar.

    Example (student = teacher = [1/4, 3/4]: the entropy of that distribution)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> logits = jnp.log(jnp.array([[1.0, 3.0]]))  # [N, C] = [1, 2]
        >>> round(float(losses.soft_distillation(logits, logits, temperature=1.0)), 4)
        0.5623
    """
    check_positive("temperature", temperature)
    check_ndim("logits", logits, 2, "[N, C]")
    check_same_shape("logits", logits, "teacher_logits", teacher_logits)
    dtype = float_dtype(logits)
    t = jnp.asarray(temperature, dtype)
    return jnp.mean(_distillation_rows(logits, teacher_logits, t))


def acl_semi_supervised_loss(
    logits_nat: Array,
    logits_adv: Array,
    labels: Array,
    teacher_logits: Array,
    labelled: Array,
    *,
    alpha: float = 0.5,
    temperature: float = 1.0,
    beta: float = 6.0,
    valid: Array | None = None,
) -> tuple[Array, dict]:
    """ACL Eq. 3 (semi-supervised step iii; the authors' code as in SPEC §3.7).

    ``[(1-alpha) sum_l CE(a_l, y_l) + alpha T^2 sum_l D(a_l, p_l) + T^2 sum_u D(a_u, p_u)] / b
    + beta sum_i KL(softmax(f(x_i)) || softmax(f(x_adv_i))) / b``, with a = adversarial logits,
    p = teacher (pseudo-label) logits, D(a, p) = sum_c -log_softmax(a/T)_c softmax(p/T)_c
    (the per-row term of :func:`soft_distillation`) and b = batch size (labelled + unlabelled).

    Args:
        logits_nat, logits_adv: float ``[b, C]`` student logits on clean / adversarial images.
        labels: int ``[b]`` (only the labelled rows' values are used).
        teacher_logits: float ``[b, C]`` soft pseudo-labels (constants).
        labelled: bool ``[b]``, True for rows with a true label.
        alpha: CE / distillation mix on labelled rows, in [0, 1]. temperature: T > 0. beta: KL weight.
        valid: optional bool ``[b]``; only these rows count and b is their number (None: all).

    Returns:
        (loss, aux) with aux = {'ce_labelled', 'distill', 'trades_kl'} (sums / b as used in the loss).

    Example (b = 2 rows, row 0 labelled; all logits uniform over C = 2, so each CE and
    distillation term is log 2 and the KL is 0)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> zeros = jnp.zeros((2, 2))  # [b, C]
        >>> loss, aux = losses.acl_semi_supervised_loss(
        ...     zeros, zeros, jnp.array([0, 1]), zeros, jnp.array([True, False])
        ... )
        >>> round(float(loss), 4), {k: round(float(v), 4) for k, v in aux.items()}
        (0.6931, {'ce_labelled': 0.3466, 'distill': 0.5199, 'trades_kl': 0.0})
    """
    check_positive("temperature", temperature)
    check_same_shape("logits_nat", logits_nat, "logits_adv", logits_adv)
    check_same_shape("logits_adv", logits_adv, "teacher_logits", teacher_logits)
    dtype = float_dtype(logits_adv)
    b = logits_adv.shape[0]
    t = jnp.asarray(temperature, dtype)
    lab = jnp.asarray(labelled, bool)
    ce = cross_entropy(logits_adv, labels, reduction="none")
    distill = _distillation_rows(logits_adv, jax.lax.stop_gradient(teacher_logits), t)
    weight = jnp.where(lab, alpha, 1.0)
    if valid is not None:
        valid = _valid_rows(valid, b)
        b = _count(valid, dtype)
        lab = lab & valid
        weight = jnp.where(valid, weight, 0.0)
    ce_term = jnp.sum(jnp.where(lab, ce, 0.0)) / b
    distill_term = t * t * jnp.sum(weight * distill) / b
    kl = trades_kl(logits_nat, logits_adv, valid=valid)
    loss = (1.0 - alpha) * ce_term + distill_term + beta * kl
    return loss, {"ce_labelled": ce_term, "distill": distill_term, "trades_kl": kl}
