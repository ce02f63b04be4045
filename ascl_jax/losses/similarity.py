"""Pairwise similarities of latent rows (ASCL Eq. 1's ``sim``, SPEC §1.3) and L2 normalisation.

``sim = -distance`` for the L1 / L2 / Linf distances of ``distance.py::distance``, computed from direct
differences in row blocks (``_self_distance``, custom reverse-mode gradient), plus cosine and dot
product. All functions keep the floating dtype of their input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ascl_jax import xla_cpu
from ascl_jax.config import SIMILARITIES
from ascl_jax.losses.checks import PRECISION, Array, check_choice, check_ndim, float_dtype

# sim = -distance / tau (SPEC §1.3); 'cosine' = cos / tau, 'dot' = z_i . z_j / tau ('matmul').
# Pairwise L1 / L2 / Linf distances materialise z_k - z_j in blocks of rows; one block holds at most
# this many elements ([rows, n, d]), so memory stays bounded for large n (all of n = 4096, d = 512
# would be 8.6e9 elements). None = the per-backend default of `_default_block_elements`.
DEFAULT_MAX_BLOCK_ELEMENTS = None


def _safe_norm(x: Array, axis: int = -1, keepdims: bool = True) -> Array:
    """||x||_2 with a finite (zero) gradient at x = 0."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1)), 0)


def l2_normalize(x: Array, *, eps: float = 1e-12) -> Array:
    """``x / max(||x||_2, eps)`` along the last axis (``torch.nn.functional.normalize``).

    The gradient flows through the normalisation (SPEC §1.2 ``hidden_norm``). Shape is preserved.

    Example::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> z = losses.l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]]))  # [2, 2] -> [2, 2]
        >>> [[round(v, 4) for v in row] for row in z.tolist()]
        [[0.6, 0.8], [0.0, 0.0]]
    """
    return x / jnp.maximum(_safe_norm(x), eps)


def _map_rows(row_fn, xs: tuple[Array, ...], rows_per_block: int) -> Array:
    """``vmap(row_fn)(*xs)``, in blocks of ``rows_per_block`` rows under ``lax.map`` when needed."""
    n = xs[0].shape[0]
    if rows_per_block >= n:
        return jax.vmap(row_fn)(*xs)
    return jax.lax.map(lambda a: row_fn(*a), xs, batch_size=rows_per_block)


def _default_block_elements() -> int:
    """Default ``max_block_elements``: the size of one block of ``z_k - z_j`` differences.

    2^18 elements (1 MiB in float32, a block that stays in cache) where the CPU speed layer is on
    (:func:`ascl_jax.xla_cpu.enabled`); 2^26 elements (256 MiB in float32, fewer sequential
    ``lax.map`` blocks) elsewhere. Only memory per block depends on it, never the result.
    """
    return 1 << 18 if xla_cpu.enabled() else 1 << 26


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
    (``'linf'``) for ``x`` ``[n, d]``, from direct differences in row blocks; returns ``[n, n]``.

    Direct differences (not the Gram form ``|x_k|^2 + |x_j|^2 - 2 x_k.x_j``) avoid cancellation for
    near-identical rows (an anchor and its adversarial view). No block holds more than about
    ``max_block_elements`` elements of ``x_k - x_j``, in the forward or the backward pass.

    The custom VJP (reverse mode only) computes ``dL/dx_k = sum_j (G + G^T)_kj dD_kj/dx_k`` with the
    diagonal of ``G + G^T`` zeroed (``D_kk`` is identically 0), one batched mat-vec per row. Its
    L-inf arg-max test compares against the saved forward ``D``, so the gradient does not depend on
    how XLA rounds ``x`` when it recomputes ``x`` inside a fusion.
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
                diff <= -threshold, 1, 0
            ).astype(x.dtype)
            ak = ak / jnp.maximum(jnp.sum(jnp.abs(coef), axis=-1), 1)
        return jnp.matmul(ak, coef, precision=PRECISION)

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

    Example::

        >>> import jax.numpy as jnp
        >>> from ascl_jax import losses
        >>> z = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])  # n = 3 rows, d = 2
        >>> s = losses.pairwise_similarity(z, "cosine")  # [3, 3]
        >>> [[round(v, 4) for v in row] for row in s.tolist()]
        [[1.0, 0.0, 0.6], [0.0, 1.0, 0.8], [0.6, 0.8, 1.0]]
        >>> s = losses.pairwise_similarity(z, "neg_l1")  # minus the L1 distances
        >>> s.shape, float(s[0, 1]), float(s[1, 2])
        ((3, 3), -3.0, -5.0)
    """
    check_choice("similarity", similarity, SIMILARITIES)
    check_ndim("z", z, 2, "[n, d]")
    float_dtype(z)
    if max_block_elements is None:
        max_block_elements = _default_block_elements()
    if similarity == "cosine":
        zn = z / jnp.maximum(_safe_norm(z), 1e-8)
        return jnp.matmul(zn, zn.T, precision=PRECISION)
    if similarity == "dot":
        return jnp.matmul(z, z.T, precision=PRECISION)
    if similarity == "neg_l2":
        sq = _self_distance(z, "sq", int(max_block_elements))
        positive = sq > 0  # diagonal-safe sqrt: finite (zero) gradient at distance 0
        return -jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)
    kind = "l1" if similarity == "neg_l1" else "linf"
    return -_self_distance(z, kind, int(max_block_elements))
