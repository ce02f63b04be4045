"""Argument checks shared by the attacks (concrete values only; traced values are left to the caller)."""

from __future__ import annotations

import numbers

import jax
import numpy as np


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_images(x, name: str = "x") -> None:
    """x must be NHWC (rank 4); a concrete x must lie in [0, 1]."""
    if np.ndim(x) != 4:
        raise ValueError(
            f"{name} must be a batch of NHWC images of rank 4, got shape "
            f"{tuple(np.shape(x))} (rank {np.ndim(x)})"
        )
    if is_concrete(x) and getattr(x, "is_fully_addressable", True):
        v = np.asarray(x)  # host-side check: no op is staged even under an outer trace
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        if not (lo >= 0.0 and hi <= 1.0):  # also rejects NaN
            raise ValueError(
                f"{name} must hold images in [0, 1] (normalisation is the model's "
                f"first operation); got values in [{lo:.4g}, {hi:.4g}]"
            )


def check_nonneg(value, field: str) -> None:
    """A concrete number must be finite and >= 0 (traced values are left to the caller)."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")


def check_steps(num_steps, field: str = "num_steps") -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 0:
        raise ValueError(f"{field} must be a Python int >= 0 (it fixes the compiled loop), got {num_steps!r}")
    return int(num_steps)


def is_zero(value) -> bool:
    return is_concrete(value) and np.ndim(value) == 0 and float(value) == 0.0
