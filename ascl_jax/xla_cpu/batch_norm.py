"""Batch-norm arithmetic for NHWC activations on XLA:CPU (part of :mod:`ascl_jax.xla_cpu`).

``models.norm.BatchNorm`` calls :func:`train` (train mode) and :func:`normalize` (running
statistics) for 4-D input when :func:`ascl_jax.xla_cpu.enabled`; otherwise it computes the same
arithmetic plainly. The arithmetic is Flax's ``nn.BatchNorm``: batch mean ``E[x]``, biased variance
``max(0, E[x^2] - E[x]^2)``, ``y = (x - mean) * scale * rsqrt(var + eps) + bias``. What differs
from the plain form, with results equal up to float rounding (tests/test_fast_paths.py,
tests/test_cpu_kernels.py):

- Per-channel sums of an NHWC activation are taken in two stages, ``[B*H, W*C] -> [W*C] -> [C]``
  (:func:`channel_sum`), and per-channel vectors are broadcast the same way
  (:func:`channel_broadcast`), so that autodiff's transposes are two-stage too. XLA:CPU's one-shot
  reduction over (B, H, W) keeps a narrow minor dimension and runs much slower.
- :func:`train` has a hand-written backward (``jax.custom_vjp``): one elementwise pass
  ``dx = a*gy + b*(x - mean) + c`` after two per-channel sums; it carries the cotangents of the
  returned batch mean and variance too. Forward-mode ``jax.jvp`` through it is not available.
- With ``kernel`` (default: :func:`ascl_jax.xla_cpu.enabled` and
  :func:`ascl_jax.xla_cpu.kernels.available`) the train-mode sums come from the C++ kernel
  :func:`ascl_jax.xla_cpu.kernels.channel_sums` (one pass over the operands; float within blocks of
  rows, double across them) and the normalisation is written in the folded form
  ``x * mul + (bias - mean * mul)`` (its backward likewise), so that XLA keeps no ``x - mean``.

Every sum has a fixed order for a given shape (deterministic).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ascl_jax import xla_cpu
from ascl_jax.xla_cpu import kernels


def channel_sum(x: jax.Array) -> jax.Array:
    """Sum over all axes but the last: [..., C] -> [C] (two-stage for [B, H, W, C])."""
    if x.ndim == 4:
        b, h, w, c = x.shape
        return x.reshape(b * h, w * c).sum(0).reshape(w, c).sum(0)
    return x.reshape(-1, x.shape[-1]).sum(0)


def channel_broadcast(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Per-channel vector [C] -> ``shape`` [..., C] (its transpose is :func:`channel_sum`'s form)."""
    if len(shape) == 4:
        b, h, w, c = shape
        return jnp.broadcast_to(jnp.tile(v, w), (b * h, w * c)).reshape(shape)
    return jnp.broadcast_to(v, shape)


def normalize(x, mean, var, scale, bias, eps):
    """``(x - mean) * scale * rsqrt(var + eps) + bias``, per channel. x [..., C]; the rest [C]."""
    mul = scale * jax.lax.rsqrt(var + eps)
    return (x - channel_broadcast(mean, x.shape)) * channel_broadcast(mul, x.shape) + channel_broadcast(
        bias, x.shape
    )


def _train_forward(x, scale, bias, eps, kernel: bool):
    """Train-mode BN: -> (y, batch mean, biased batch var ``E[x^2] - E[x]^2``)."""
    n = x.size // x.shape[-1]
    if kernel:
        s1, s2 = kernels.channel_sums(x, x, jnp.zeros(x.shape[-1:], jnp.float32))
    else:
        s1, s2 = channel_sum(x), channel_sum(x * x)
    mean = s1 / n
    var = jnp.maximum(0.0, s2 / n - mean * mean)
    if kernel:
        # Folded form x * mul + (bias - mean * mul): no x - mean for XLA to write to memory and
        # keep for the backward.
        mul = scale * jax.lax.rsqrt(var + eps)
        y = x * channel_broadcast(mul, x.shape) + channel_broadcast(bias - mean * mul, x.shape)
        return y, mean, var
    return normalize(x, mean, var, scale, bias, eps), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _train(x, scale, bias, eps, kernel):
    """:func:`_train_forward` with a hand-written backward (:func:`_train_bwd`)."""
    return _train_forward(x, scale, bias, eps, kernel)


def _train_fwd(x, scale, bias, eps, kernel):
    y, mean, var = _train_forward(x, scale, bias, eps, kernel)
    return (y, mean, var), (x, scale, mean, var)


def _train_bwd(eps, kernel, res, cts):
    """Standard BN backward, written as one elementwise pass ``dx = a*gy + b*(x - mean) + c`` with
    per-channel a, b, c (b and c also carry the cotangents of the returned mean and variance) after
    two per-channel sums, ``sum(gy)`` and ``sum(gy * (x - mean))``."""
    x, scale, mean, var = res
    gy, gmean, gvar = cts
    n = x.size // x.shape[-1]
    rstd = jax.lax.rsqrt(var + eps)
    if kernel:
        s1, s_gy_xc = kernels.channel_sums(gy, x, mean)
    else:
        xc = x - channel_broadcast(mean, x.shape)
        s1, s_gy_xc = channel_sum(gy), channel_sum(gy * xc)
    dscale = s_gy_xc * rstd  # sum(gy * xhat)
    a = scale * rstd
    b = -a * rstd * dscale / n + 2.0 * gvar / n
    c = -a * s1 / n + gmean / n
    if kernel:  # folded as in the forward: a*gy + b*x + (c - b*mean)
        dx = (
            gy * channel_broadcast(a, x.shape)
            + x * channel_broadcast(b, x.shape)
            + channel_broadcast(c - b * mean, x.shape)
        )
    else:
        dx = (
            gy * channel_broadcast(a, x.shape)
            + xc * channel_broadcast(b, x.shape)
            + channel_broadcast(c, x.shape)
        )
    return dx, dscale, s1


_train.defvjp(_train_fwd, _train_bwd)


def train(x, scale, bias, eps, kernel: bool | None = None):
    """Train-mode BN of NHWC x [B, H, W, C] -> (y [B, H, W, C], batch mean [C], biased batch var [C]),
    with the hand-written backward (module doc). ``eps``: a Python float. ``kernel``: whether the
    per-channel sums use the C++ kernel; None = :func:`ascl_jax.xla_cpu.enabled` and
    :func:`ascl_jax.xla_cpu.kernels.available`. A non-float32 x takes the plain path: the same
    arithmetic (:func:`channel_sum`, :func:`normalize`) under JAX's own autodiff, no kernel."""
    if x.ndim != 4:
        raise ValueError(f"xla_cpu.batch_norm.train expects NHWC input [B, H, W, C], got shape {x.shape}")
    if jnp.dtype(x.dtype) != jnp.float32:
        return _train_forward(x, scale, bias, eps, False)
    if kernel is None:
        kernel = xla_cpu.enabled() and kernels.available()
    return _train(x, scale, bias, eps, bool(kernel))
