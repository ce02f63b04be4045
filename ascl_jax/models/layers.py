"""Convolution / linear layer constructors with the initialisations of the PyTorch references.

All constructors are plain functions that build a Flax linen layer *inside the calling module's
compact method* (so the layer becomes a named child of that module, e.g. ``.../conv1/kernel``) and
apply it to ``x`` at once. Layouts are NHWC, kernels HWIO. Parameters are float32; the computation
runs in the dtype of ``x`` (the model's compute dtype, ``model.dtype``): a bfloat16 ``x`` gets its
kernel and bias cast to bfloat16 and gives a bfloat16 result (gradients reach the float32
parameters through the cast).

Initialisations (``conv_init`` names used across ``ascl_jax.models``):

- ``'kaiming_fan_out'``: ``N(0, 2 / fan_out)`` with ``fan_out = k*k*out`` -- torch
  ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` (torchvision ResNets, ACL
  ``models/resnet_multi_bn.py``) and the TRADES WideResNet's ``normal_(0, sqrt(2/n))``,
  ``n = k*k*out_channels``. Not truncated.
- ``'kaiming_fan_in'``: ``N(0, 2 / fan_in)`` -- torch ``kaiming_normal_`` defaults (TRADES
  ``models/small_cnn.py``), bias zero.
- ``'torch'``: PyTorch's default ``Conv2d`` / ``Linear`` reset: ``kaiming_uniform_(a=sqrt(5))``,
  i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for the weight and the same bound for a bias
  (Kuang-Liu ``pytorch-cifar`` models, which set no explicit init).

Linear layers always use the PyTorch default (``'torch'``) unless a caller passes ``zero=True``
(ACL zero-initialises the fine-tuning FC, SPEC §3.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ascl_jax import xla_cpu
from ascl_jax.config import CONV_INITS
from ascl_jax.xla_cpu import conv as cpu_conv

Initializer = Callable[..., jax.Array]


def uniform_bound(bound: float) -> Initializer:
    """Initializer drawing ``U(-bound, bound)`` (PyTorch's default bias init uses ``1/sqrt(fan_in)``)."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def conv_kernel_init(conv_init: str) -> Initializer:
    """Kernel initializer for a named scheme (see module docstring)."""
    if conv_init == "kaiming_fan_out":
        return nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    if conv_init == "kaiming_fan_in":
        return nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    if conv_init == "torch":
        # kaiming_uniform_(a=sqrt(5)): gain^2 = 2/(1+5) = 1/3, bound = sqrt(3 * gain^2 / fan_in).
        return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    raise ValueError(f"conv_init must be one of {CONV_INITS}, got {conv_init!r}")


class Conv(nn.Module):
    """``nn.Conv`` (same variables ``kernel`` [k,k,C,O] and ``bias`` [O], same initialisers): NHWC x HWIO
    ``lax.conv_general_dilated``, or, when the CPU speed layer is on (:func:`ascl_jax.xla_cpu.enabled`),
    the same convolution by :func:`ascl_jax.xla_cpu.conv.conv2d` (equal up to float rounding).
    ``padding``: (low, high) pairs or 'SAME' / 'VALID'."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: tuple[tuple[int, int], tuple[int, int]] | str = ((0, 0), (0, 0))
    use_bias: bool = False
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        kernel = _cast(kernel, x.dtype)
        if xla_cpu.enabled():  # non-float32 operands take XLA's convolution inside conv2d
            y = cpu_conv.conv2d(x, kernel, self.stride, self.padding)
        else:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                (self.stride, self.stride),
                self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        if self.use_bias:
            y = y + _cast(self.param("bias", self.bias_init, (self.features,), jnp.float32), y.dtype)
        return y


def _cast(a: jax.Array, dtype) -> jax.Array:
    """``a`` in ``dtype`` (no op when it already is)."""
    return a if a.dtype == dtype else a.astype(dtype)


def conv(
    x: jax.Array,
    features: int,
    *,
    kernel: int = 3,
    stride: int = 1,
    padding: int | str = 1,
    use_bias: bool = False,
    conv_init: str = "kaiming_fan_out",
    name: str,
) -> jax.Array:
    """``k x k`` convolution on NHWC ``x`` [B, H, W, C] -> [B, H', W', features].

    ``padding`` is an int (symmetric zero padding, PyTorch ``padding=p`` semantics, so a stride-2
    3x3 conv pads (1, 1) like PyTorch and unlike Flax's ``'SAME'``) or ``'VALID'`` / ``'SAME'``.
    The bias (when used) follows the scheme: ``U(+-1/sqrt(fan_in))`` for ``'torch'``, zeros otherwise.
    """
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    fan_in = kernel * kernel * x.shape[-1]
    bias_init = uniform_bound(1.0 / math.sqrt(fan_in)) if conv_init == "torch" else nn.initializers.zeros
    return Conv(
        features,
        kernel,
        stride,
        pad,
        use_bias=use_bias,
        kernel_init=conv_kernel_init(conv_init),
        bias_init=bias_init,
        name=name,
    )(x)


def linear(x: jax.Array, features: int, *, use_bias: bool = True, zero: bool = False, name: str) -> jax.Array:
    """``nn.Linear``-initialised dense layer: [..., D] -> [..., features].

    Weight and bias ``U(-1/sqrt(D), 1/sqrt(D))`` (PyTorch default); all zeros with ``zero=True``.
    Parameters float32; computed in ``x``'s dtype when that is not float32 (bfloat16 compute).
    """
    if zero:
        k_init = b_init = nn.initializers.zeros
    else:
        bound = 1.0 / math.sqrt(x.shape[-1])
        k_init, b_init = (
            nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            uniform_bound(bound),
        )
    dtype = None if x.dtype == jnp.float32 else x.dtype
    return nn.Dense(
        features, use_bias=use_bias, kernel_init=k_init, bias_init=b_init, dtype=dtype, name=name
    )(x)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C]. Equals the references' ``avg_pool2d(4)`` / ``avg_pool2d(8)`` at 32x32
    input and also works on small inputs (8x8 digits)."""
    return jnp.mean(x, axis=(1, 2))
