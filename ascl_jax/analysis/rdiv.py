"""R-DIV, the relative intra-class divergence of latents (ASCL §2, supplement §7; SPEC §1.5).

:func:`r_div` on one batch; :func:`r_div_batched` with the paper's protocol (per mini-batch of 128,
averaged over mini-batches).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Rows whose norm is below this are treated as norm _NORM_EPS when normalising (a zero latent has cosine 0
# with everything, i.e. distance 1), so the divergence never produces NaN from 0/0.
_NORM_EPS = 1e-12


def _cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """``d[i, j] = 1 - cos(a_i, b_j)`` for a [n, h] and b [m, h]; returns [n, m] float32."""
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), _NORM_EPS)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), _NORM_EPS)
    cos = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    return 1.0 - cos


def _as_latents(z_nat, z_adv, labels, caller: str):
    """float32 [n, h] latents and int [n] labels (one-hot [n, C] accepted); shape errors name `caller`."""
    z_nat = jnp.asarray(z_nat, jnp.float32)
    z_adv = jnp.asarray(z_adv, jnp.float32)
    labels = jnp.asarray(labels)
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    if z_nat.ndim != 2 or z_nat.shape != z_adv.shape or labels.shape != z_nat.shape[:1]:
        raise ValueError(
            f"{caller} expects z_nat and z_adv of the same shape [n, h] and labels [n]; got "
            f"z_nat {z_nat.shape}, z_adv {z_adv.shape}, labels {labels.shape}."
        )
    return z_nat, z_adv, labels


def _masked_anchor_mean(total: jax.Array, count: jax.Array) -> jax.Array:
    """Mean over anchors with ``count > 0`` of ``total / count``; NaN when no anchor qualifies."""
    valid = count > 0
    per_anchor = total / jnp.maximum(count, 1.0)
    n_valid = jnp.sum(valid)
    mean = jnp.sum(jnp.where(valid, per_anchor, 0.0)) / jnp.maximum(n_valid, 1)
    return jnp.where(n_valid > 0, mean, jnp.nan)


@functools.partial(jax.jit, static_argnames=("include_own_adv",))
def r_div(
    z_nat: jax.Array,
    z_adv: jax.Array,
    labels: jax.Array,
    *,
    include_own_adv: bool = False,
) -> dict[str, jax.Array]:
    """Absolute intra-/inter-class cosine divergence and R-DIV of one batch (ASCL §2, SPEC §1.5).

    Definitions (ASCL §2 (i)-(ii), literal reading of SPEC §1.5):

    * anchors are the benign latents ``z_i``, i = 1..n;
    * ``X+_i = {z_j, z^a_j : j != i, y_j == y_i}`` and ``X-_i = {z_j, z^a_j : j != i, y_j != y_i}``: the
      benign *and* adversarial latents of the *other* images with the same / a different label (so
      ``|X+_i| = 2 * #{j != i : y_j = y_i}``, and the anchor's own adversarial example is not in X+_i);
    * ``d(u, v) = 1 - cos(u, v)`` (cosine distance; a zero vector has cosine 0 with everything);
    * ``d+ = mean over anchors of  mean_{v in X+_i} d(z_i, v)``, ``d-`` likewise with X-_i;
    * ``R-DIV = d+ / d-``.

    Empty sets: an anchor whose X+_i (resp. X-_i) is empty -- its class has no other image in the batch
    (resp. the whole batch has one class) -- is skipped, i.e. ``d+`` averages over the anchors with a
    non-empty X+_i only (the ``1/N`` of the paper becomes ``1/#{anchors with a non-empty set}``). If no
    anchor has a non-empty X+_i, ``intra`` is NaN; likewise ``inter`` for X-_i (e.g. a single-class batch).
    ``ratio`` is ``intra / inter`` in IEEE arithmetic: NaN whenever either is NaN, ``inf`` if
    ``inter == 0`` and ``intra > 0``.

    Args:
      z_nat: [n, h] latents of the benign images (ASCL: penultimate layer ``z = f(x)``).
      z_adv: [n, h] latents of their adversarial examples, row i belonging to image i.
      labels: [n] integer labels (a [n, C] one-hot array is reduced with argmax).
      include_own_adv: if True, X+_i additionally contains the anchor's own adversarial latent ``z^a_i``
        (the "benign image vs its adversarial example" reading of the adversarial R-DIV; not the literal
        ``j != i`` definition, hence off by default).

    Returns:
      ``{'intra': d+, 'inter': d-, 'ratio': d+ / d-}``, float32 scalars. Pure and jit-compiled; fully
      vectorised with [n, n] masks, O(n^2 h) time and O(n^2) memory.

    Invariances: multiplying ``z_nat`` / ``z_adv`` by a positive scalar, or permuting the rows of
    (z_nat, z_adv, labels) together, leaves all three values unchanged (up to float rounding).
    """
    z_nat, z_adv, labels = _as_latents(z_nat, z_adv, labels, "r_div")
    n = z_nat.shape[0]
    d_nat = _cosine_distance(z_nat, z_nat)  # [n, n]: d(z_i, z_j)
    d_adv = _cosine_distance(z_nat, z_adv)  # [n, n]: d(z_i, z^a_j)

    same = labels[:, None] == labels[None, :]
    eye = jnp.eye(n, dtype=bool)
    pos = (same & ~eye).astype(jnp.float32)  # j != i, same label
    neg = (~same).astype(jnp.float32)  # different label (never the diagonal)

    pos_total = jnp.sum(pos * (d_nat + d_adv), axis=1)
    pos_count = 2.0 * jnp.sum(pos, axis=1)
    if include_own_adv:
        pos_total = pos_total + jnp.diagonal(d_adv)
        pos_count = pos_count + 1.0
    neg_total = jnp.sum(neg * (d_nat + d_adv), axis=1)
    neg_count = 2.0 * jnp.sum(neg, axis=1)

    intra = _masked_anchor_mean(pos_total, pos_count)
    inter = _masked_anchor_mean(neg_total, neg_count)
    return {"intra": intra, "inter": inter, "ratio": intra / inter}


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    finite = ~np.isnan(x)
    return float(np.mean(x[finite])) if finite.any() else float("nan")


def r_div_batched(
    z_nat: Any,
    z_adv: Any,
    labels: Any,
    batch_size: int = 128,
    *,
    drop_remainder: bool = False,
    include_own_adv: bool = False,
) -> dict[str, Any]:
    """R-DIV with the paper's protocol: per mini-batch, then averaged over mini-batches (supplement §7).

    The rows are split in order (no shuffling) into consecutive mini-batches of ``batch_size`` rows;
    :func:`r_div` is computed on each (full batches under one ``jax.vmap``).

    Last partial batch: when ``n`` is not a multiple of ``batch_size`` the remaining ``n % batch_size``
    rows form one extra, smaller mini-batch that counts with the same weight as every other mini-batch
    (what a PyTorch test loader with its default ``drop_last=False`` gives). With
    ``drop_remainder=True`` those rows are ignored instead -- unless there is no full batch at all
    (``n < batch_size``), in which case all rows form the single mini-batch.

    Averaging: ``intra`` (d+) and ``inter`` (d-) are each the mean over mini-batches of the per-batch
    value, over the mini-batches where it is defined (a batch in which no anchor has a non-empty set
    gives NaN and is left out; see :func:`r_div`); NaN if it is defined in no batch. ``ratio`` is
    ``intra / inter`` of these averages, i.e. ``R-DIV = d+_a / d-_a`` of the averaged divergences (the
    paper averages "these divergences" over mini-batches). The mean of the per-batch ratios is returned
    as well, as ``ratio_mean_of_batches``.

    Args:
      z_nat, z_adv: [n, h] benign / adversarial latents (anything ``jnp.asarray`` takes).
      labels: [n] integer labels.
      batch_size: rows per mini-batch (128 in the paper).
      drop_remainder: ignore the last partial mini-batch (see above).
      include_own_adv: passed to :func:`r_div`.

    Returns:
      dict with Python floats ``intra``, ``inter``, ``ratio``, ``ratio_mean_of_batches``, int
      ``num_batches``, ``batch_size``, ``num_rows`` (rows used), and ``per_batch`` = {'intra', 'inter',
      'ratio'} numpy float32 arrays [num_batches]. Host-level (returns floats), not jit-able itself.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    z_nat, z_adv, labels = _as_latents(z_nat, z_adv, labels, "r_div_batched")
    n, h = z_nat.shape
    if n == 0:
        raise ValueError("r_div_batched needs at least one row.")
    num_full, rem = divmod(n, batch_size)
    parts: list[dict[str, np.ndarray]] = []
    rows = 0
    if num_full:
        m = num_full * batch_size
        fn = jax.vmap(functools.partial(r_div, include_own_adv=include_own_adv))
        out = fn(
            z_nat[:m].reshape(num_full, batch_size, h),
            z_adv[:m].reshape(num_full, batch_size, h),
            labels[:m].reshape(num_full, batch_size),
        )
        parts.append({k: np.asarray(v, np.float32).reshape(-1) for k, v in out.items()})
        rows = m
    if rem and (not drop_remainder or num_full == 0):
        s = num_full * batch_size
        out = r_div(z_nat[s:], z_adv[s:], labels[s:], include_own_adv=include_own_adv)
        parts.append({k: np.asarray(v, np.float32).reshape(-1) for k, v in out.items()})
        rows = n
    per_batch = {k: np.concatenate([p[k] for p in parts]) for k in ("intra", "inter", "ratio")}
    intra = _nanmean(per_batch["intra"])
    inter = _nanmean(per_batch["inter"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(np.float64(intra) / np.float64(inter))
    return {
        "intra": intra,
        "inter": inter,
        "ratio": ratio,
        "ratio_mean_of_batches": _nanmean(per_batch["ratio"]),
        "num_batches": int(per_batch["ratio"].shape[0]),
        "batch_size": int(batch_size),
        "num_rows": int(rows),
        "per_batch": per_batch,
    }
