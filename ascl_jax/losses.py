"""Loss library: every loss equation used by ASCL and ACL, as pure JAX functions.

References (see ``SPEC.md`` in the shared folder for the exact code semantics):

* ASCL = Bui et al., "Understanding and Achieving Efficient Robustness with Adversarial Supervised
  Contrastive Learning", arXiv 2101.10027. Eq. 1-3 (SCL loss of a natural / adversarial anchor and
  its batch mean), Eq. 4 (adversarial training CE), Eq. 5 (VAT), Eq. 6 (total), Table 1 (Global,
  Hard-LS, Soft-LS and Leaked-LS selection). Official code: ``contrastive_losses_v2.py::soft_lcscl``
  and ``distance.py::distance`` (SPEC §1.2, §1.3, §1.4).
* SupCon = Khosla et al. 2020; ``HobbitLong/SupContrast: losses.py::SupConLoss`` (SPEC §2).
* ACL = Jiang et al., NeurIPS 2020. NT-Xent ``utils.py::nt_xent`` (SPEC §3.1), TRADES fine-tuning
  (SPEC §3.6) and the semi-supervised distillation term (SPEC §3.7).

Every function is vectorised (no Python loop over rows), works under ``jax.jit`` and ``jax.grad``,
and computes in the floating dtype of its input (float32 or float64). The L1 / L2 / Linf distances
carry a custom reverse-mode gradient (see ``_self_distance``), so ``jax.jvp`` / forward mode is not
available for those three similarities. Argument checks that raise ``ValueError`` look only at
shapes, dtypes and Python values, so they fire at trace time under jit.

Row convention of the contrastive batch (SPEC notation): with ``b`` natural images the batch has
``n = 2b`` rows ``[natural; adversarial]``; row ``i`` and row ``b + i`` are views of one image.
Masks are ``[n, n]`` with entry ``[i, j]`` meaning "row j for anchor row i".
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "STRATEGIES",
    "SIMILARITIES",
    "selection_masks",
    "pairwise_similarity",
    "masked_contrastive_loss",
    "ascl_loss",
    "supcon_loss",
    "nt_xent_loss",
    "kl_divergence",
    "cross_entropy",
    "trades_kl",
    "soft_distillation",
    "l2_normalize",
]

# Table 1 of ASCL, plus the code-only 'merge' (hard OR soft negatives,
# `soft_lcscl(neg_type='merge')`).
STRATEGIES = ("global", "hard", "soft", "leaked", "merge")
# sim = -distance / tau (SPEC §1.3); 'cosine' = cos / tau, 'dot' = z_i . z_j / tau ('matmul').
SIMILARITIES = ("cosine", "dot", "neg_l1", "neg_l2", "neg_linf")
KL_REDUCTIONS = ("batchmean", "mean", "sum", "none")
CE_REDUCTIONS = ("mean", "sum", "none")
CONTRAST_MODES = ("all", "one")

# Matmuls of the contrastive head run at full float32 precision (no TF32 / bf16 passes), like the
# reference code (PyTorch does not use TF32 for matmuls by default). The cost is negligible next to
# the encoder.
_PRECISION = jax.lax.Precision.HIGHEST
# Pairwise L1 / L2 / Linf distances materialise z_k - z_j in blocks of rows; one block holds at most
# this many elements ([rows, n, d]), so memory stays bounded for large n (all of n = 4096, d = 512
# would be 8.6e9 elements). None = per backend: 2^18 on CPU (cache-sized blocks were fastest in
# bench/losses.py), 2^26 on accelerators (fewer sequential lax.map steps).
DEFAULT_MAX_BLOCK_ELEMENTS = None

Array = jax.Array


# ------------------------------------------------------------------------------------------------
# argument checks (static: shapes, dtypes and Python values only)
# ------------------------------------------------------------------------------------------------
def _check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; allowed values: {', '.join(allowed)}")
    return value


def _check_positive(field: str, value: Any) -> None:
    """Raises for a non-positive concrete value; traced values cannot be checked and pass."""
    try:
        v = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return
    if not v > 0.0:
        raise ValueError(f"{field} must be positive, got {value!r}")


def _check_ndim(field: str, x: Array, ndim: int, what: str) -> None:
    if jnp.ndim(x) != ndim:
        raise ValueError(f"{field} must have shape {what}, got shape {tuple(jnp.shape(x))}")


def _check_same_shape(field_a: str, a: Array, field_b: str, b: Array) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{field_a} and {field_b} must have the same shape, got {tuple(jnp.shape(a))} "
            f"and {tuple(jnp.shape(b))}")


def _float_dtype(x: Array) -> Any:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"expected a floating-point array, got dtype {dtype}")
    return dtype


def _mask_value(dtype: Any) -> Array:
    """Finite large negative logit for excluded entries (never -inf, so no 0 * inf anywhere)."""
    return jnp.asarray(jnp.finfo(dtype).min / 2, dtype)


# ------------------------------------------------------------------------------------------------
# similarities
# ------------------------------------------------------------------------------------------------
def _safe_norm(x: Array, axis: int = -1, keepdims: bool = True) -> Array:
    """||x||_2 with a finite (zero) gradient at x = 0."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1)), 0)


def l2_normalize(x: Array, *, eps: float = 1e-12) -> Array:
    """``x / max(||x||_2, eps)`` along the last axis (``torch.nn.functional.normalize``).

    The gradient flows through the normalisation (SPEC §1.2 ``hidden_norm``). Shape is preserved.
    """
    return x / jnp.maximum(_safe_norm(x), eps)


def _map_rows(row_fn, xs: tuple[Array, ...], rows_per_block: int) -> Array:
    """``vmap(row_fn)(*xs)``, in blocks of ``rows_per_block`` rows under ``lax.map`` when needed."""
    n = xs[0].shape[0]
    if rows_per_block >= n:
        return jax.vmap(row_fn)(*xs)
    return jax.lax.map(lambda a: row_fn(*a), xs, batch_size=rows_per_block)


def _default_block_elements() -> int:
    return 1 << 18 if jax.default_backend() == "cpu" else 1 << 26


def _rows_per_block(x: Array, max_block_elements: int) -> int:
    n, d = x.shape
    return max(1, int(max_block_elements) // max(n * d, 1))


def _self_distance_forward(x: Array, kind: str, max_block_elements: int) -> Array:
    def row(xk: Array) -> Array:  # [d] -> [n]
        diff = xk[None, :] - x
        if kind == "sq":
            return jnp.sum(jnp.square(diff), axis=-1)
        if kind == "l1":
            return jnp.sum(jnp.abs(diff), axis=-1)
        return jnp.max(jnp.abs(diff), axis=-1)

    return _map_rows(row, (x,), _rows_per_block(x, max_block_elements))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _self_distance(x: Array, kind: str, max_block_elements: int) -> Array:
    """``D[k, j] = sum_c (x_kc - x_jc)^2`` (``'sq'``), ``sum_c |.|`` (``'l1'``) or ``max_c |.|``
    (``'linf'``) for ``x`` ``[n, d]``, from direct differences in row blocks.

    Direct differences (not the Gram form ``|x_k|^2 + |x_j|^2 - 2 x_k.x_j``) avoid cancellation for
    near-identical rows (an anchor and its adversarial view). No block holds more than about
    ``max_block_elements`` elements of ``x_k - x_j``, in the forward or the backward pass.

    The custom VJP (reverse mode only) uses ``dL/dx_k = sum_j (G + G^T)_kj dD_kj/dx_k`` with the
    diagonal of ``G + G^T`` zeroed (``D_kk`` is identically 0), one batched mat-vec per row, instead
    of autodiff's reductions over the broadcast axes (much slower on CPU). It also makes the result
    robust to XLA recomputing ``x`` inside fusions with different rounding (e.g. FMA contraction
    after a normalisation): with plain autodiff under ``jit`` that turned ``x_k - x_k`` into +-1 ulp
    and broke ``jnp.max``'s arg-max test, giving wrong L-inf gradients on CPU.
    """
    return _self_distance_forward(x, kind, max_block_elements)


def _self_distance_fwd(x: Array, kind: str, max_block_elements: int):
    dist = _self_distance_forward(x, kind, max_block_elements)
    return dist, (x, dist)


def _self_distance_bwd(kind: str, max_block_elements: int, res, g: Array):
    x, dist = res
    n = x.shape[0]
    a = jnp.where(jnp.eye(n, dtype=bool), 0, g + g.T)
    # L-inf: ties (and near-ties within a few ulps, which rounding cannot separate) share the
    # gradient evenly, like jnp.max; the tolerance scales with the largest |x| of the two rows.
    scale = jnp.max(jnp.abs(x), axis=-1)
    eps = jnp.finfo(x.dtype).eps

    def row(xk: Array, ak: Array, dk: Array, sk: Array) -> Array:  # -> [d]
        diff = xk[None, :] - x
        if kind == "sq":
            coef = 2 * diff
        elif kind == "l1":
            coef = jnp.sign(diff)
        else:  # sign(diff) at the coordinates where |diff| reaches the max (within tolerance)
            threshold = (dk - 8 * eps * (dk + sk + scale))[:, None]
            coef = jnp.where(diff >= threshold, 1, 0).astype(x.dtype) - jnp.where(
                diff <= -threshold, 1, 0).astype(x.dtype)
            ak = ak / jnp.maximum(jnp.sum(jnp.abs(coef), axis=-1), 1)
        return jnp.matmul(ak, coef, precision=_PRECISION)

    grad = _map_rows(row, (x, a, dist, scale), _rows_per_block(x, max_block_elements))
    return (grad.astype(x.dtype),)


_self_distance.defvjp(_self_distance_fwd, _self_distance_bwd)


def pairwise_similarity(
    z: Array,
    similarity: str = "cosine",
    *,
    max_block_elements: int | None = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> Array:
    """Pairwise similarity ``s(z_i, z_j)`` of the rows of z, before the temperature (ASCL Eq. 1,
    SPEC §1.3: ``sim = -distance``).

    Args:
        z: float ``[n, d]``.
        similarity: ``'cosine'`` (cos(z_i, z_j), norms clamped at 1e-8 like
            ``torch.cosine_similarity``), ``'dot'`` (z_i . z_j, the code's ``'matmul'``), or minus a
            distance computed from direct differences like ``distance.py``: ``'neg_l1'``
            (-sum|.|), ``'neg_l2'`` (-sqrt(sum (.)^2), true L2 with a diagonal-safe square root so
            the gradient is finite (zero) at distance 0, where the authors' code gives NaN),
            ``'neg_linf'`` (-max|.|; on ties the gradient is shared evenly by the arg-max
            coordinates). The three distances have a custom reverse-mode gradient (no forward-mode
            differentiation).
        max_block_elements: memory bound for the blockwise distance computation (elements of
            ``z_k - z_j`` per block); None picks a per-backend default.

    Returns:
        ``[n, n]`` array in the dtype of ``z``.
    """
    _check_choice("similarity", similarity, SIMILARITIES)
    _check_ndim("z", z, 2, "[n, d]")
    _float_dtype(z)
    if max_block_elements is None:
        max_block_elements = _default_block_elements()
    if similarity == "cosine":
        zn = z / jnp.maximum(_safe_norm(z), 1e-8)
        return jnp.matmul(zn, zn.T, precision=_PRECISION)
    if similarity == "dot":
        return jnp.matmul(z, z.T, precision=_PRECISION)
    if similarity == "neg_l2":
        sq = _self_distance(z, "sq", int(max_block_elements))
        positive = sq > 0  # diagonal-safe sqrt: finite (zero) gradient at distance 0
        return -jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)
    kind = "l1" if similarity == "neg_l1" else "linf"
    return -_self_distance(z, kind, int(max_block_elements))


# ------------------------------------------------------------------------------------------------
# selection (ASCL Table 1)
# ------------------------------------------------------------------------------------------------
def selection_masks(
    labels: Array,
    preds: Array,
    strategy: str,
    *,
    instance_ids: Array | None = None,
    always_pull_own_view: bool = False,
) -> tuple[Array, Array]:
    """Positive and negative selection masks of ASCL Table 1, authors' code semantics (SPEC §1.2).

    Args:
        labels: int ``[n]`` true labels of the rows (``[y; y]`` for ``[natural; adversarial]``).
        preds: int ``[n]`` predictions of the rows (``[p; p^a]``); an adversarial row carries its
            own adversarial prediction.
        strategy: one of
            * ``'global'``: POS = same label, NEG = different label.
            * ``'hard'`` (Hard-LS): POS = same label, NEG = different label AND
              ``preds[j] == labels[i]`` (predicted as the anchor's true label).
            * ``'soft'`` (Soft-LS): POS = same label, NEG = different label AND
              ``preds[j] == preds[i]`` (predicted as the anchor's own prediction).
            * ``'leaked'`` (Leaked-LS, code ``'leaking'``): POS = same label AND same prediction,
              NEG = different label AND same prediction.
            * ``'merge'`` (code only, not in the paper): NEG = hard OR soft.
        instance_ids: optional int ``[n]``; rows with equal id are views of the same image. Default:
            ``arange(n) % (n // 2)``, i.e. row ``i`` and row ``n/2 + i`` (requires even n). Use it
            for the two-augmentation variant (4b rows: ``tile(arange(b), 4)``).
        always_pull_own_view: if True, an anchor's other views are always positives (and never
            negatives): the paper's wording for Leaked-LS ("each anchor x_i and its adversarial
            example x^a_i are always pulled close together", Eq. 1 sums over Z+_i U {z^a_i}). The
            default False follows the authors' code, where under Leaked the own view is a positive
            only if ``p^a_i == p_i`` and is excluded from the softmax otherwise. For Global / Hard /
            Soft the switch changes nothing (the own view has the same label).

    Returns:
        ``(positive, negative)``: two disjoint bool ``[n, n]`` masks; ``[i, j]`` = row j for
        anchor i. The diagonal is never set.
    """
    _check_choice("strategy", strategy, STRATEGIES)
    labels = jnp.asarray(labels)
    preds = jnp.asarray(preds)
    _check_ndim("labels", labels, 1, "[n]")
    _check_same_shape("labels", labels, "preds", preds)
    n = labels.shape[0]
    if instance_ids is None:
        if n % 2:
            raise ValueError(
                f"the number of rows n={n} is odd: the default row pairing [natural; adversarial] "
                "needs an even n; pass instance_ids to define which rows are views of one image")
        instance_ids = jnp.arange(n) % (n // 2)
    else:
        _check_same_shape("labels", labels, "instance_ids", instance_ids)
    off_diag = ~jnp.eye(n, dtype=bool)
    same_label = labels[:, None] == labels[None, :]
    diff_label = ~same_label  # the diagonal is never a different label
    same_pred = preds[:, None] == preds[None, :]
    hard = diff_label & (preds[None, :] == labels[:, None])
    soft = diff_label & same_pred
    positive = same_label & off_diag
    if strategy == "global":
        negative = diff_label
    elif strategy == "hard":
        negative = hard
    elif strategy == "soft":
        negative = soft
    elif strategy == "merge":
        negative = hard | soft
    else:  # leaked
        positive = positive & same_pred
        negative = soft
    if always_pull_own_view:
        instance_ids = jnp.asarray(instance_ids)
        own = (instance_ids[:, None] == instance_ids[None, :]) & off_diag
        positive = positive | own
        negative = negative & ~own
    return positive, negative


# ------------------------------------------------------------------------------------------------
# ASCL contrastive loss
# ------------------------------------------------------------------------------------------------
def masked_contrastive_loss(
    z: Array,
    positive: Array,
    negative: Array,
    *,
    similarity: str = "cosine",
    temperature: float = 0.07,
    normalize: bool = False,
) -> tuple[Array, dict[str, Array]]:
    """Supervised contrastive loss with explicit selection masks: ASCL Eq. 1-3, code form.

    SPEC §1.2 (``soft_lcscl``).

    For anchor i with positives P_i and selected negatives N_i (both exclude i)::

        logprob[i, j] = sim(z_i, z_j)/tau - log sum_{k in P_i U N_i} exp(sim(z_i, z_k)/tau)
        loss_i        = -sum_{j in P_i} logprob[i, j] / max(|P_i|, 1)
        loss          = mean_i loss_i            (over all n anchors, SPEC §1.4: 0.5 x paper Eq. 3)

    The softmax runs over P_i U N_i only (excluded entries get a finite large negative logit via
    ``jnp.where``). An anchor with no positive, or with no legal entry at all, contributes exactly 0
    and a zero gradient but still counts in the mean. The diagonal is always excluded, and an entry
    set in both masks counts as a positive.

    Args:
        z: float ``[n, d]`` latent rows (e.g. ``[z_nat; z_adv]``).
        positive: bool ``[n, n]`` positives, ``[i, j]`` = row j for anchor i.
        negative: bool ``[n, n]`` selected negatives.
        similarity: see :func:`pairwise_similarity`; ``sim = -distance / tau`` (SPEC §1.3).
        temperature: tau > 0.
        normalize: L2-normalise z first (code ``hidden_norm``; gradient flows through it).

    Returns:
        ``(loss, aux)``: scalar loss in the dtype of z; ``aux['per_anchor']`` float ``[n]``,
        ``aux['num_positives']`` and ``aux['num_negatives']`` int32 ``[n]`` (the effective counts:
        row sums of the masks with the diagonal removed and negatives disjoint from positives).
    """
    _check_choice("similarity", similarity, SIMILARITIES)
    _check_positive("temperature", temperature)
    _check_ndim("z", z, 2, "[n, d]")
    dtype = _float_dtype(z)
    n = z.shape[0]
    for field, mask in (("positive", positive), ("negative", negative)):
        if jnp.shape(mask) != (n, n):
            raise ValueError(f"{field} must have shape [n, n] = {(n, n)} for z of shape {z.shape}, "
                             f"got {tuple(jnp.shape(mask))}")
    off_diag = ~jnp.eye(n, dtype=bool)
    positive = jnp.asarray(positive, bool) & off_diag
    negative = jnp.asarray(negative, bool) & off_diag & ~positive
    legal = positive | negative
    if normalize:
        z = l2_normalize(z)
    sim = pairwise_similarity(z, similarity=similarity) / jnp.asarray(temperature, dtype)
    logits = jnp.where(legal, sim, _mask_value(dtype))
    logprob = jax.nn.log_softmax(logits, axis=1)
    num_pos = jnp.sum(positive, axis=1, dtype=jnp.int32)
    num_neg = jnp.sum(negative, axis=1, dtype=jnp.int32)
    pos_logprob = jnp.sum(jnp.where(positive, logprob, 0), axis=1)
    per_anchor = -pos_logprob / jnp.maximum(num_pos, 1).astype(dtype)
    loss = jnp.mean(per_anchor)
    aux = {"per_anchor": per_anchor, "num_positives": num_pos, "num_negatives": num_neg}
    return loss, aux


def ascl_loss(
    z_nat: Array,
    z_adv: Array,
    labels: Array,
    logits_nat: Array,
    logits_adv: Array,
    *,
    strategy: str = "leaked",
    similarity: str = "cosine",
    temperature: float = 0.07,
    normalize: bool = False,
    always_pull_own_view: bool = False,
    instance_ids: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """ASCL's L_SCL (Eq. 1-3, Table 1 selection), as ``soft_lcscl`` computes it (SPEC §1.1, 1.2).

    Predictions are ``argmax`` of the logits under ``stop_gradient`` (constants, as in the code).
    Rows are ``[z_nat; z_adv]`` with labels ``[labels; labels]`` and predictions ``[p; p^a]``.
    The loss is the mean over the 2b rows, i.e. 0.5 x the paper's Eq. 3 (SPEC §1.4).

    Args:
        z_nat, z_adv: float ``[b, d]`` latents of the natural and adversarial images
            (``[2b, d]`` each for the two-augmentation variant, with matching ``instance_ids``).
        labels: int ``[b]`` true labels.
        logits_nat, logits_adv: float ``[b, C]`` classifier logits (only their argmax is used).
        strategy, similarity, temperature, normalize, always_pull_own_view, instance_ids: see
            :func:`selection_masks` (``instance_ids`` is ``[2b]``) and
            :func:`masked_contrastive_loss`.

    Returns:
        ``(loss, aux)`` with the aux of :func:`masked_contrastive_loss` plus ``'preds'`` int
        ``[2b]`` and the per-anchor count means over the natural and the adversarial anchors
        (``'num_positives_nat'``, ``'num_positives_adv'``, ``'num_negatives_nat'``,
        ``'num_negatives_adv'``, float32 scalars; the quantities of ASCL Fig. 4).
    """
    labels = jnp.asarray(labels)
    _check_ndim("z_nat", z_nat, 2, "[b, d]")
    _check_same_shape("z_nat", z_nat, "z_adv", z_adv)
    _check_ndim("labels", labels, 1, "[b]")
    if labels.shape[0] != z_nat.shape[0]:
        raise ValueError(f"labels must have shape [b] = ({z_nat.shape[0]},) to match z_nat of "
                         f"shape {z_nat.shape}, got {labels.shape}")
    _check_ndim("logits_nat", logits_nat, 2, "[b, C]")
    _check_same_shape("logits_nat", logits_nat, "logits_adv", logits_adv)
    if logits_nat.shape[0] != z_nat.shape[0]:
        raise ValueError(f"logits_nat must have shape [b, C] with b = {z_nat.shape[0]}, "
                         f"got {logits_nat.shape}")
    b = z_nat.shape[0]
    if instance_ids is not None and jnp.shape(instance_ids) != (2 * b,):
        raise ValueError(f"instance_ids must have shape [2b] = ({2 * b},), "
                         f"got {tuple(jnp.shape(instance_ids))}")
    preds_nat = jnp.argmax(jax.lax.stop_gradient(logits_nat), axis=-1)
    preds_adv = jnp.argmax(jax.lax.stop_gradient(logits_adv), axis=-1)
    preds = jnp.concatenate([preds_nat, preds_adv]).astype(jnp.int32)
    rows_labels = jnp.concatenate([labels, labels]).astype(jnp.int32)
    z = jnp.concatenate([z_nat, z_adv], axis=0)
    positive, negative = selection_masks(
        rows_labels, preds, strategy, instance_ids=instance_ids,
        always_pull_own_view=always_pull_own_view)
    loss, aux = masked_contrastive_loss(
        z, positive, negative, similarity=similarity, temperature=temperature,
        normalize=normalize)
    num_pos = aux["num_positives"].astype(jnp.float32)
    num_neg = aux["num_negatives"].astype(jnp.float32)
    aux = dict(aux)
    aux.update(
        preds=preds,
        num_positives_nat=jnp.mean(num_pos[:b]),
        num_positives_adv=jnp.mean(num_pos[b:]),
        num_negatives_nat=jnp.mean(num_neg[:b]),
        num_negatives_adv=jnp.mean(num_neg[b:]),
    )
    return loss, aux


# ------------------------------------------------------------------------------------------------
# SupCon and NT-Xent
# ------------------------------------------------------------------------------------------------
def supcon_loss(
    features: Array,
    labels: Array | None = None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    mask: Array | None = None,
) -> Array:
    """SupContrast's ``SupConLoss`` (Khosla et al. 2020, Eq. 2 "L_out"), SPEC §2.

    Rows are ordered view-major (all of view 0, then view 1, ...). For anchor a::

        log_prob[a, p] = f_a . f_p / T - log sum_{k != a} exp(f_a . f_k / T)
        loss_a         = -(T / base_T) * sum_{p in P(a)} log_prob[a, p] / max(|P(a)|, 1)
        loss           = mean over anchors

    ``features`` are NOT normalised inside (``SupConResNet`` normalises beforehand). The
    ``max(., 1)`` is the upstream fix for anchors without positives (ASCL's older copy divides by
    ``|P(a)|`` and gives NaN there). The denominator is a masked ``logsumexp`` (same value as
    upstream's ``exp`` / ``log``, without upstream's ``+1e-9`` and without underflow).

    Args:
        features: float ``[bsz, n_views, ...]`` (trailing dims are flattened).
        labels: int ``[bsz]`` or None; with ``labels`` and ``mask`` both None every sample is its
            own class (SimCLR).
        temperature, base_temperature: T > 0 and base_T > 0.
        contrast_mode: ``'all'`` (every row is an anchor) or ``'one'`` (view 0 only).
        mask: optional ``[bsz, bsz]`` positive mask (``[i, j]`` = sample j positive for i); may be
            asymmetric; exclusive with ``labels``.

    Returns:
        Scalar loss in the dtype of ``features``.
    """
    _check_choice("contrast_mode", contrast_mode, CONTRAST_MODES)
    _check_positive("temperature", temperature)
    _check_positive("base_temperature", base_temperature)
    if jnp.ndim(features) < 3:
        raise ValueError(
            f"features must have shape [bsz, n_views, ...], got {tuple(jnp.shape(features))}")
    bsz, n_views = features.shape[:2]
    features = jnp.reshape(features, (bsz, n_views, -1))
    dtype = _float_dtype(features)
    if labels is not None and mask is not None:
        raise ValueError("pass at most one of labels and mask")
    if labels is not None:
        if jnp.shape(labels) != (bsz,):
            raise ValueError(f"labels must have shape [bsz] = ({bsz},), "
                             f"got {tuple(jnp.shape(labels))}")
        labels = jnp.asarray(labels)
        pos = labels[:, None] == labels[None, :]
    elif mask is not None:
        if jnp.shape(mask) != (bsz, bsz):
            raise ValueError(f"mask must have shape [bsz, bsz] = {(bsz, bsz)}, "
                             f"got {tuple(jnp.shape(mask))}")
        pos = jnp.asarray(mask).astype(dtype)
    else:
        pos = jnp.eye(bsz, dtype=bool)
    contrast = jnp.reshape(jnp.swapaxes(features, 0, 1), (n_views * bsz, -1))
    if contrast_mode == "one":
        anchor, anchor_count = features[:, 0], 1
    else:
        anchor, anchor_count = contrast, n_views
    num_anchors = anchor_count * bsz
    logits = jnp.matmul(anchor, contrast.T, precision=_PRECISION) / jnp.asarray(temperature, dtype)
    not_self = jnp.arange(n_views * bsz)[None, :] != jnp.arange(num_anchors)[:, None]
    pos = jnp.tile(jnp.asarray(pos, dtype), (anchor_count, n_views)) * not_self
    masked = jnp.where(not_self, logits, _mask_value(dtype))
    log_prob = logits - jax.nn.logsumexp(masked, axis=1, keepdims=True)
    num_pos = jnp.sum(pos, axis=1)
    num_pos = jnp.where(num_pos < 1e-6, 1, num_pos)
    mean_log_prob_pos = jnp.sum(pos * jnp.where(not_self, log_prob, 0), axis=1) / num_pos
    scale = jnp.asarray(temperature, dtype) / jnp.asarray(base_temperature, dtype)
    return jnp.mean(-scale * mean_log_prob_pos)


def nt_xent_loss(z1: Array, z2: Array, *, temperature: float = 0.5) -> Array:
    """ACL's NT-Xent (SimCLR loss) for two views, ``utils.py::nt_xent`` (SPEC §3.1, ACL §2.2).

    With ``s = cosine similarity`` (norm product clamped at 1e-8) over the 2N rows ``[z1; z2]``,
    and partner(i) the other view of row i::

        loss = mean over the 2N anchors of
               -log( exp(s(i, partner(i))/t) / sum_{k != i} exp(s(i, k)/t) )

    The ACL code subtracts the constant ``e^{1/t}`` from the full row sum as the "self" term instead
    of excluding ``k = i``; for non-zero vectors ``s(i, i) = 1`` so both are the same quantity. This
    version excludes the self entry (stable, no cancellation). Row order does not matter (ACL
    interleaves the views; here row i of z1 is paired with row i of z2). Equals
    ``supcon_loss(stack([normalize(z1), normalize(z2)], 1), None, temperature=t,
    base_temperature=t)`` and ``optax.ntxent`` on the same pairs.

    Args:
        z1, z2: float ``[N, d]`` raw (unnormalised) projections of the two views.
        temperature: t > 0 (ACL always uses 0.5).

    Returns:
        Scalar loss in the dtype of the inputs.
    """
    _check_positive("temperature", temperature)
    _check_ndim("z1", z1, 2, "[N, d]")
    _check_same_shape("z1", z1, "z2", z2)
    dtype = _float_dtype(z1)
    n = z1.shape[0]
    x = jnp.concatenate([z1, z2], axis=0)
    sim = pairwise_similarity(x, "cosine") / jnp.asarray(temperature, dtype)
    rows = jnp.arange(2 * n)
    partner = (rows + n) % (2 * n)
    masked = jnp.where(rows[:, None] != rows[None, :], sim, _mask_value(dtype))
    log_den = jax.nn.logsumexp(masked, axis=1)
    return jnp.mean(log_den - sim[rows, partner])


# ------------------------------------------------------------------------------------------------
# classification-space losses
# ------------------------------------------------------------------------------------------------
def kl_divergence(logits_p: Array, logits_q: Array, *, reduction: str = "batchmean") -> Array:
    """``KL(softmax(logits_p) || softmax(logits_q))`` per row: ASCL Eq. 5 (VAT), TRADES.

    SPEC §1.1 (VAT), §3.6 (TRADES).

    Gradients flow through both arguments (the authors' VAT and TRADES do not stop either).

    Args:
        logits_p, logits_q: float ``[N, C]``.
        reduction: ``'batchmean'`` (sum / N, paper Eq. 5), ``'mean'`` (sum / (N*C), PyTorch
            ``KLDivLoss(reduction='mean')`` as in the authors' VAT term, SPEC §1.4), ``'sum'``, or
            ``'none'`` (per-row ``[N]``).

    Returns:
        Scalar, or ``[N]`` for ``'none'``.
    """
    _check_choice("reduction", reduction, KL_REDUCTIONS)
    _check_ndim("logits_p", logits_p, 2, "[N, C]")
    _check_same_shape("logits_p", logits_p, "logits_q", logits_q)
    _float_dtype(logits_p)
    log_p = jax.nn.log_softmax(logits_p, axis=-1)
    log_q = jax.nn.log_softmax(logits_q, axis=-1)
    per_row = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    if reduction == "none":
        return per_row
    total = jnp.sum(per_row)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / logits_p.shape[0]
    return total / (logits_p.shape[0] * logits_p.shape[1])


def cross_entropy(logits: Array, labels: Array, *, reduction: str = "mean") -> Array:
    """Softmax cross-entropy with integer labels: ASCL Eq. 4, AT / TRADES natural term (SPEC §1.1).

    Args:
        logits: float ``[N, C]``.
        labels: int ``[N]`` in ``[0, C)``.
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (per-row ``[N]``).

    Returns:
        Scalar, or ``[N]`` for ``'none'``.
    """
    _check_choice("reduction", reduction, CE_REDUCTIONS)
    _check_ndim("logits", logits, 2, "[N, C]")
    _float_dtype(logits)
    if jnp.shape(labels) != logits.shape[:1]:
        raise ValueError(f"labels must have shape [N] = ({logits.shape[0]},) for logits of shape "
                         f"{logits.shape}, got {tuple(jnp.shape(labels))}")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
    log_p = jax.nn.log_softmax(logits, axis=-1)
    per_row = -jnp.take_along_axis(log_p, jnp.asarray(labels)[:, None], axis=-1)[:, 0]
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return jnp.sum(per_row)
    return jnp.mean(per_row)


def trades_kl(logits_nat: Array, logits_adv: Array) -> Array:
    """TRADES robust term ``sum_i KL(p_nat,i || p_adv,i) / b`` (SPEC §3.6, ``trades.py``).

    Args:
        logits_nat, logits_adv: float ``[b, C]``; gradients flow through both.

    Returns:
        Scalar.
    """
    return kl_divergence(logits_nat, logits_adv, reduction="batchmean")


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
    """
    _check_positive("temperature", temperature)
    _check_ndim("logits", logits, 2, "[N, C]")
    _check_same_shape("logits", logits, "teacher_logits", teacher_logits)
    dtype = _float_dtype(logits)
    t = jnp.asarray(temperature, dtype)
    log_student = jax.nn.log_softmax(logits / t, axis=-1)
    teacher = jax.nn.softmax(teacher_logits / t, axis=-1)
    return jnp.mean(jnp.sum(-log_student * teacher, axis=-1))


def acl_semi_supervised_loss(logits_nat: Array, logits_adv: Array, labels: Array,
                             teacher_logits: Array, labelled: Array, *, alpha: float = 0.5,
                             temperature: float = 1.0, beta: float = 6.0) -> tuple[Array, dict]:
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

    Returns:
        (loss, aux) with aux = {'ce_labelled', 'distill', 'trades_kl'} (sums / b as used in the loss).
    """
    _check_positive("temperature", temperature)
    _check_same_shape("logits_nat", logits_nat, "logits_adv", logits_adv)
    _check_same_shape("logits_adv", logits_adv, "teacher_logits", teacher_logits)
    dtype = _float_dtype(logits_adv)
    b = logits_adv.shape[0]
    t = jnp.asarray(temperature, dtype)
    lab = jnp.asarray(labelled, bool)
    ce = cross_entropy(logits_adv, labels, reduction="none")
    distill = jnp.sum(-jax.nn.log_softmax(logits_adv / t, axis=-1)
                      * jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / t, axis=-1), axis=-1)
    ce_term = jnp.sum(jnp.where(lab, ce, 0.0)) / b
    distill_term = t * t * jnp.sum(jnp.where(lab, alpha, 1.0) * distill) / b
    kl = trades_kl(logits_nat, logits_adv)
    loss = (1.0 - alpha) * ce_term + distill_term + beta * kl
    return loss, {"ce_labelled": ce_term, "distill": distill_term, "trades_kl": kl}
