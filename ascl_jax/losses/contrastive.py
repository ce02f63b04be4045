"""Contrastive losses: ASCL's masked SCL (Eq. 1-3), SupCon, and ACL's NT-Xent.

* ASCL = Bui et al., "Understanding and Achieving Efficient Robustness with Adversarial Supervised
  Contrastive Learning", arXiv 2101.10027: Eq. 1-3 (SCL loss of a natural / adversarial anchor and
  its batch mean) with the Table 1 selection of :mod:`ascl_jax.losses.selection`. Official code:
  ``contrastive_losses_v2.py::soft_lcscl`` (SPEC §1.2, §1.4).
* SupCon = Khosla et al. 2020; ``HobbitLong/SupContrast: losses.py::SupConLoss`` (SPEC §2).
* NT-Xent = ACL (Jiang et al., NeurIPS 2020) ``utils.py::nt_xent`` (SPEC §3.1).

Every loss is vectorised, works under ``jax.jit`` and ``jax.grad`` and computes in the floating dtype
of its input (:func:`nt_xent_rows`: in float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ascl_jax.losses.checks import (
    PRECISION,
    Array,
    check_choice,
    check_ndim,
    check_positive,
    check_same_shape,
    float_dtype,
    mask_value,
)
from ascl_jax.losses.selection import selection_masks
from ascl_jax.losses.similarity import SIMILARITIES, l2_normalize, pairwise_similarity

CONTRAST_MODES = ("all", "one")


def _valid_rows(valid: Array, n: int) -> Array:
    """bool ``[n]`` valid-row mask (padding False), shape-checked."""
    if jnp.shape(valid) != (n,):
        raise ValueError(f"valid must have shape ({n},), got {tuple(jnp.shape(valid))}")
    return jnp.asarray(valid, bool)


def masked_contrastive_loss(
    z: Array,
    positive: Array,
    negative: Array,
    *,
    similarity: str = "cosine",
    temperature: float = 0.07,
    normalize: bool = False,
    valid: Array | None = None,
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
        valid: optional bool ``[n]``: rows that are False (padding) are neither anchors nor
            positives nor negatives, and the mean is over the valid anchors. None: every row.

    Returns:
        ``(loss, aux)``: scalar loss in the dtype of z; ``aux['per_anchor']`` float ``[n]``,
        ``aux['num_positives']`` and ``aux['num_negatives']`` int32 ``[n]`` (the effective counts:
        row sums of the masks with the diagonal removed and negatives disjoint from positives).

    Example (each anchor has one identical positive and two orthogonal negatives, so
    ``loss = log(1 + 2 / e)`` at tau = 1)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # [z_nat; z_adv], b = 2
        >>> labels = jnp.array([0, 1, 0, 1])  # [y; y]
        >>> pos, neg = losses.selection_masks(labels, labels, "global")
        >>> loss, aux = losses.masked_contrastive_loss(z, pos, neg, temperature=1.0)
        >>> round(float(loss), 4), aux["num_positives"].tolist(), aux["num_negatives"].tolist()
        (0.5514, [1, 1, 1, 1], [2, 2, 2, 2])
    """
    check_choice("similarity", similarity, SIMILARITIES)
    check_positive("temperature", temperature)
    check_ndim("z", z, 2, "[n, d]")
    dtype = float_dtype(z)
    n = z.shape[0]
    for field, mask in (("positive", positive), ("negative", negative)):
        if jnp.shape(mask) != (n, n):
            raise ValueError(
                f"{field} must have shape [n, n] = {(n, n)} for z of shape {z.shape}, "
                f"got {tuple(jnp.shape(mask))}"
            )
    off_diag = ~jnp.eye(n, dtype=bool)
    positive = jnp.asarray(positive, bool) & off_diag
    negative = jnp.asarray(negative, bool) & off_diag & ~positive
    if valid is not None:
        valid = _valid_rows(valid, n)
        pair = valid[:, None] & valid[None, :]
        positive, negative = positive & pair, negative & pair
    legal = positive | negative
    if normalize:
        z = l2_normalize(z)
    sim = pairwise_similarity(z, similarity=similarity) / jnp.asarray(temperature, dtype)
    logits = jnp.where(legal, sim, mask_value(dtype))
    logprob = jax.nn.log_softmax(logits, axis=1)
    num_pos = jnp.sum(positive, axis=1, dtype=jnp.int32)
    num_neg = jnp.sum(negative, axis=1, dtype=jnp.int32)
    pos_logprob = jnp.sum(jnp.where(positive, logprob, 0), axis=1)
    per_anchor = -pos_logprob / jnp.maximum(num_pos, 1).astype(dtype)
    if valid is None:
        loss = jnp.mean(per_anchor)
    else:
        loss = jnp.sum(per_anchor) / jnp.maximum(jnp.sum(valid), 1).astype(dtype)
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
    valid: Array | None = None,
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
        valid: optional bool ``[b]`` valid images (padding False); both rows of a padded image
            are left out of the loss (:func:`masked_contrastive_loss`) and of the count means.

    Returns:
        ``(loss, aux)`` with the aux of :func:`masked_contrastive_loss` plus ``'preds'`` int
        ``[2b]`` and the per-anchor count means over the natural and the adversarial anchors
        (``'num_positives_nat'``, ``'num_positives_adv'``, ``'num_negatives_nat'``,
        ``'num_negatives_adv'``, float32 scalars; the quantities of ASCL Fig. 4).

    Example (both images are fooled by the attack; under Hard-LS each anchor keeps one negative, the
    row predicted as its true class, so ``loss = log(1 + 1 / e)`` at tau = 1)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> z_nat = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # [b, d] = [2, 2]
        >>> z_adv = z_nat
        >>> y = jnp.array([0, 1])
        >>> logits_nat = jnp.array([[2.0, 0.0], [0.0, 2.0]])  # predicts [0, 1]
        >>> logits_adv = jnp.array([[0.0, 2.0], [2.0, 0.0]])  # predicts [1, 0]
        >>> loss, aux = losses.ascl_loss(
        ...     z_nat, z_adv, y, logits_nat, logits_adv, strategy="hard", temperature=1.0
        ... )
        >>> round(float(loss), 4), aux["preds"].tolist(), float(aux["num_negatives_nat"])
        (0.3133, [0, 1, 1, 0], 1.0)
    """
    labels = jnp.asarray(labels)
    check_ndim("z_nat", z_nat, 2, "[b, d]")
    check_same_shape("z_nat", z_nat, "z_adv", z_adv)
    check_ndim("labels", labels, 1, "[b]")
    if labels.shape[0] != z_nat.shape[0]:
        raise ValueError(
            f"labels must have shape [b] = ({z_nat.shape[0]},) to match z_nat of "
            f"shape {z_nat.shape}, got {labels.shape}"
        )
    check_ndim("logits_nat", logits_nat, 2, "[b, C]")
    check_same_shape("logits_nat", logits_nat, "logits_adv", logits_adv)
    if logits_nat.shape[0] != z_nat.shape[0]:
        raise ValueError(
            f"logits_nat must have shape [b, C] with b = {z_nat.shape[0]}, got {logits_nat.shape}"
        )
    b = z_nat.shape[0]
    if instance_ids is not None and jnp.shape(instance_ids) != (2 * b,):
        raise ValueError(
            f"instance_ids must have shape [2b] = ({2 * b},), got {tuple(jnp.shape(instance_ids))}"
        )
    preds_nat = jnp.argmax(jax.lax.stop_gradient(logits_nat), axis=-1)
    preds_adv = jnp.argmax(jax.lax.stop_gradient(logits_adv), axis=-1)
    preds = jnp.concatenate([preds_nat, preds_adv]).astype(jnp.int32)
    rows_labels = jnp.concatenate([labels, labels]).astype(jnp.int32)
    z = jnp.concatenate([z_nat, z_adv], axis=0)
    rows_valid = None
    if valid is not None:
        rows_valid = jnp.tile(_valid_rows(valid, b), 2)
    positive, negative = selection_masks(
        rows_labels,
        preds,
        strategy,
        instance_ids=instance_ids,
        always_pull_own_view=always_pull_own_view,
        valid=rows_valid,
    )
    loss, aux = masked_contrastive_loss(
        z,
        positive,
        negative,
        similarity=similarity,
        temperature=temperature,
        normalize=normalize,
        valid=rows_valid,
    )
    num_pos = aux["num_positives"].astype(jnp.float32)
    num_neg = aux["num_negatives"].astype(jnp.float32)
    if valid is None:
        mean = jnp.mean
    else:
        w = rows_valid[:b].astype(jnp.float32)

        def mean(v):
            return jnp.sum(v * w) / jnp.maximum(jnp.sum(w), 1.0)

    aux = dict(aux)
    aux.update(
        preds=preds,
        num_positives_nat=mean(num_pos[:b]),
        num_positives_adv=mean(num_pos[b:]),
        num_negatives_nat=mean(num_neg[:b]),
        num_negatives_adv=mean(num_neg[b:]),
    )
    return loss, aux


def supcon_loss(
    features: Array,
    labels: Array | None = None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    mask: Array | None = None,
    valid: Array | None = None,
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
        valid: optional bool ``[bsz]`` valid samples: every view of a False sample is neither an
            anchor nor a positive nor in any denominator; the mean is over the valid anchors.
            None: every sample.

    Returns:
        Scalar loss in the dtype of ``features``.

    Example (2 samples x 2 identical views, orthonormal features: ``log(1 + 2 / e)`` at T = 1)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> features = jnp.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])  # [2, 2, 2]
        >>> loss = losses.supcon_loss(features, jnp.array([0, 1]), temperature=1.0, base_temperature=1.0)
        >>> round(float(loss), 4)
        0.5514
    """
    check_choice("contrast_mode", contrast_mode, CONTRAST_MODES)
    check_positive("temperature", temperature)
    check_positive("base_temperature", base_temperature)
    if jnp.ndim(features) < 3:
        raise ValueError(f"features must have shape [bsz, n_views, ...], got {tuple(jnp.shape(features))}")
    bsz, n_views = features.shape[:2]
    features = jnp.reshape(features, (bsz, n_views, -1))
    dtype = float_dtype(features)
    if labels is not None and mask is not None:
        raise ValueError("pass at most one of labels and mask")
    if labels is not None:
        if jnp.shape(labels) != (bsz,):
            raise ValueError(f"labels must have shape [bsz] = ({bsz},), got {tuple(jnp.shape(labels))}")
        labels = jnp.asarray(labels)
        pos = labels[:, None] == labels[None, :]
    elif mask is not None:
        if jnp.shape(mask) != (bsz, bsz):
            raise ValueError(f"mask must have shape [bsz, bsz] = {(bsz, bsz)}, got {tuple(jnp.shape(mask))}")
        pos = jnp.asarray(mask).astype(dtype)
    else:
        pos = jnp.eye(bsz, dtype=bool)
    contrast = jnp.reshape(jnp.swapaxes(features, 0, 1), (n_views * bsz, -1))
    if contrast_mode == "one":
        anchor, anchor_count = features[:, 0], 1
    else:
        anchor, anchor_count = contrast, n_views
    num_anchors = anchor_count * bsz
    logits = jnp.matmul(anchor, contrast.T, precision=PRECISION) / jnp.asarray(temperature, dtype)
    not_self = jnp.arange(n_views * bsz)[None, :] != jnp.arange(num_anchors)[:, None]
    pos = jnp.tile(jnp.asarray(pos, dtype), (anchor_count, n_views)) * not_self
    if valid is not None:
        valid = _valid_rows(valid, bsz)
        col_valid = jnp.tile(valid, n_views)
        anchor_valid = col_valid if contrast_mode == "all" else valid
        not_self = not_self & col_valid[None, :]
        pos = pos * (anchor_valid[:, None] & col_valid[None, :]).astype(dtype)
    masked = jnp.where(not_self, logits, mask_value(dtype))
    log_prob = logits - jax.nn.logsumexp(masked, axis=1, keepdims=True)
    num_pos = jnp.sum(pos, axis=1)
    num_pos = jnp.where(num_pos < 1e-6, 1, num_pos)
    mean_log_prob_pos = jnp.sum(pos * jnp.where(not_self, log_prob, 0), axis=1) / num_pos
    scale = jnp.asarray(temperature, dtype) / jnp.asarray(base_temperature, dtype)
    if valid is None:
        return jnp.mean(-scale * mean_log_prob_pos)
    per_anchor = jnp.where(anchor_valid, -scale * mean_log_prob_pos, 0)
    return jnp.sum(per_anchor) / jnp.maximum(jnp.sum(anchor_valid), 1).astype(dtype)


def _check_views(z1: Array, z2: Array, temperature: float) -> None:
    check_positive("temperature", temperature)
    check_ndim("z1", z1, 2, "[N, d]")
    check_same_shape("z1", z1, "z2", z2)


def nt_xent_loss(z1: Array, z2: Array, *, temperature: float = 0.5, valid: Array | None = None) -> Array:
    """ACL's NT-Xent (SimCLR loss) for two views, ``utils.py::nt_xent`` (SPEC §3.1, ACL §2.2).

    With ``s = cosine similarity`` (each norm clamped at 1e-8, :func:`pairwise_similarity`) over the
    2N rows ``[z1; z2]``, and partner(i) the other view of row i::

        loss = mean over the 2N anchors of
               -log( exp(s(i, partner(i))/t) / sum_{k != i} exp(s(i, k)/t) )

    The ACL code subtracts the constant ``e^{1/t}`` from the full row sum as the "self" term instead
    of excluding ``k = i``; for non-zero vectors ``s(i, i) = 1`` so both are the same quantity. This
    version excludes the self entry (stable, no cancellation). Row order does not matter (ACL
    interleaves the views; here row i of z1 is paired with row i of z2). Equals
    ``supcon_loss(stack([normalize(z1), normalize(z2)], 1), None, temperature=t,
    base_temperature=t)`` and ``optax.ntxent`` on the same pairs. :func:`nt_xent_rows` gives the
    per-anchor terms in the arithmetic of the contrastive attack.

    Args:
        z1, z2: float ``[N, d]`` raw (unnormalised) projections of the two views.
        temperature: t > 0 (ACL always uses 0.5).
        valid: optional bool ``[N]`` valid pairs: both rows of a False pair are neither anchors
            nor positives nor negatives; the mean is over the 2 x valid anchors. None: all pairs.

    Returns:
        Scalar loss in the dtype of the inputs.

    Example (identical views of two orthogonal rows: ``log(e^2 + 2) - 2`` at t = 0.5)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> z1 = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # [N, d] = [2, 2]
        >>> round(float(losses.nt_xent_loss(z1, z1, temperature=0.5)), 4)
        0.2395
    """
    _check_views(z1, z2, temperature)
    dtype = float_dtype(z1)
    n = z1.shape[0]
    x = jnp.concatenate([z1, z2], axis=0)
    sim = pairwise_similarity(x, "cosine") / jnp.asarray(temperature, dtype)
    rows = jnp.arange(2 * n)
    partner = (rows + n) % (2 * n)
    legal = rows[:, None] != rows[None, :]
    if valid is not None:
        rows_valid = jnp.tile(_valid_rows(valid, n), 2)
        legal = legal & rows_valid[None, :]
    masked = jnp.where(legal, sim, mask_value(dtype))
    log_den = jax.nn.logsumexp(masked, axis=1)
    if valid is None:
        return jnp.mean(log_den - sim[rows, partner])
    per_anchor = jnp.where(rows_valid, log_den - sim[rows, partner], 0)
    return jnp.sum(per_anchor) / jnp.maximum(jnp.sum(rows_valid), 1).astype(dtype)


def nt_xent_rows(z1: Array, z2: Array, *, temperature: float = 0.5, valid: Array | None = None) -> Array:
    """The 2N per-anchor terms of ACL's NT-Xent (the equation of :func:`nt_xent_loss`), in float32.

    This is the form ACL's contrastive attack maximises (SPEC §3.3): the inputs are cast to float32
    and the cosine is ``z_i . z_j / max(||z_i|| ||z_j||, 1e-8)`` (norm product clamped, matmul at the
    default precision), as in ``utils.py::nt_xent``. Anchor i of ``[z1; z2]`` has its other view as
    positive and the remaining 2N - 2 rows as negatives. The mean of the terms equals
    ``nt_xent_loss(z1, z2, temperature=t)`` up to float rounding.

    Args:
        z1, z2: float ``[N, d]`` projections of the two views.
        temperature: t > 0.
        valid: optional bool ``[N]`` valid pairs: the rows of a False pair are no negatives of any
            anchor and their own terms are 0. None: all pairs.

    Returns:
        float32 ``[2N]``: row i is the term of anchor i of ``[z1; z2]``.

    Example (the inputs of :func:`nt_xent_loss`'s example)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> z1 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
        >>> rows = losses.nt_xent_rows(z1, z1, temperature=0.5)  # [2N] = [4]
        >>> rows.shape, [round(v, 4) for v in rows.tolist()]
        ((4,), [0.2395, 0.2395, 0.2395, 0.2395])
    """
    _check_views(z1, z2, temperature)
    p = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
    n2 = p.shape[0]
    n = n2 // 2
    norm = jnp.linalg.norm(p, axis=-1)
    sim = (p @ p.T) / jnp.maximum(norm[:, None] * norm[None, :], 1e-8) / temperature
    sim = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, sim)
    partner = (jnp.arange(n2) + n) % n2
    pos = jnp.take_along_axis(sim, partner[:, None], axis=-1)[:, 0]
    if valid is not None:
        rows_valid = jnp.tile(_valid_rows(valid, n), 2)
        sim = jnp.where(rows_valid[None, :], sim, -jnp.inf)
    terms = jax.nn.logsumexp(sim, axis=-1) - pos
    if valid is None:
        return terms
    return jnp.where(rows_valid, terms, 0.0)
