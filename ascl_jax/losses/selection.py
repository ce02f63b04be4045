"""Positive and negative selection masks of ASCL Table 1 (Global, Hard-LS, Soft-LS, Leaked-LS).

Row convention of the contrastive batch (SPEC notation): with ``b`` natural images the batch has
``n = 2b`` rows ``[natural; adversarial]``; row ``i`` and row ``b + i`` are views of one image.
Masks are bool ``[n, n]`` with entry ``[i, j]`` meaning "row j for anchor row i".
"""

from __future__ import annotations

import jax.numpy as jnp

from ascl_jax.config import STRATEGIES
from ascl_jax.losses.checks import Array, check_choice, check_ndim, check_same_shape

# Table 1 of ASCL, plus the code-only 'merge' (hard OR soft negatives,
# `soft_lcscl(neg_type='merge')`).


def selection_masks(
    labels: Array,
    preds: Array,
    strategy: str,
    *,
    instance_ids: Array | None = None,
    always_pull_own_view: bool = False,
    valid: Array | None = None,
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
        valid: optional bool ``[n]``; False rows (padding) are cleared from both masks, as anchors
            and as candidates. None: every row.

    Returns:
        ``(positive, negative)``: two disjoint bool ``[n, n]`` masks; ``[i, j]`` = row j for
        anchor i. The diagonal is never set.

    Example (b = 3 images, rows ``[natural; adversarial]``; image 1 is misread, and image 2 is
    pushed to class 0 by the attack)::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> labels = jnp.array([0, 0, 1, 0, 0, 1])  # [y; y]
        >>> preds = jnp.array([0, 1, 1, 0, 0, 0])  # [p; p^a]
        >>> for strategy in ("global", "hard", "soft", "leaked"):
        ...     pos, neg = losses.selection_masks(labels, preds, strategy)  # [6, 6] bool each
        ...     print(strategy, pos.sum(axis=1).tolist(), neg.sum(axis=1).tolist())
        global [3, 3, 1, 3, 3, 1] [2, 2, 4, 2, 2, 4]
        hard [3, 3, 1, 3, 3, 1] [1, 1, 1, 1, 1, 1]
        soft [3, 3, 1, 3, 3, 1] [1, 1, 1, 1, 1, 3]
        leaked [2, 0, 0, 2, 2, 0] [1, 1, 1, 1, 1, 3]
    """
    check_choice("strategy", strategy, STRATEGIES)
    labels = jnp.asarray(labels)
    preds = jnp.asarray(preds)
    check_ndim("labels", labels, 1, "[n]")
    check_same_shape("labels", labels, "preds", preds)
    n = labels.shape[0]
    if instance_ids is None:
        if n % 2:
            raise ValueError(
                f"the number of rows n={n} is odd: the default row pairing [natural; adversarial] "
                "needs an even n; pass instance_ids to define which rows are views of one image"
            )
        instance_ids = jnp.arange(n) % (n // 2)
    else:
        check_same_shape("labels", labels, "instance_ids", instance_ids)
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
    if valid is not None:
        if jnp.shape(valid) != (n,):
            raise ValueError(f"valid must have shape [n] = ({n},), got {tuple(jnp.shape(valid))}")
        valid = jnp.asarray(valid, bool)
        pair = valid[:, None] & valid[None, :]
        positive, negative = positive & pair, negative & pair
    return positive, negative
