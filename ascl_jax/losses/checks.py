"""Argument checks and numeric constants shared by the loss modules.

Every check looks only at shapes, dtypes and Python values, so it raises ``ValueError`` at trace time
under ``jax.jit``; a traced value that cannot be inspected passes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

# Matmuls of the contrastive head run at full float32 precision (no TF32 / bf16 passes), like the
# reference code (PyTorch does not use TF32 for matmuls by default).
PRECISION = jax.lax.Precision.HIGHEST


def check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``allowed``, else a ValueError naming ``field``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; allowed values: {', '.join(allowed)}")
    return value


def check_positive(field: str, value: Any) -> None:
    """Raises for a non-positive concrete value; traced values cannot be checked and pass."""
    try:
        v = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return
    if not v > 0.0:
        raise ValueError(f"{field} must be positive, got {value!r}")


def check_ndim(field: str, x: Array, ndim: int, what: str) -> None:
    """Raises unless ``x`` has ``ndim`` dimensions; ``what`` is the expected shape in the message."""
    if jnp.ndim(x) != ndim:
        raise ValueError(f"{field} must have shape {what}, got shape {tuple(jnp.shape(x))}")


def check_same_shape(field_a: str, a: Array, field_b: str, b: Array) -> None:
    """Raises unless ``a`` and ``b`` have the same shape."""
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{field_a} and {field_b} must have the same shape, got {tuple(jnp.shape(a))} "
            f"and {tuple(jnp.shape(b))}"
        )


def float_dtype(x: Array) -> Any:
    """The floating dtype of ``x``; raises for integer or boolean arrays."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"expected a floating-point array, got dtype {dtype}")
    return dtype


def mask_value(dtype: Any) -> Array:
    """Finite large negative logit for excluded entries (never -inf, so no 0 * inf anywhere)."""
    return jnp.asarray(jnp.finfo(dtype).min / 2, dtype)
