"""Batch normalisation: single BN and ACL's dual BN (SPEC §3.2, STYLE §4 P5).

ACL (``models/resnet_multi_bn.py::batch_norm_multiple``) keeps one BN per "bn name" in every BN
layer of the network, projection head included, with shared conv / linear weights. Here:

- ``bn_type='single'``: each BN layer is a plain :class:`BatchNorm` (Flax's ``nn.BatchNorm``, see
  below) named e.g. ``bn1`` -- variables ``params/.../bn1/{scale,bias}``, ``batch_stats/.../bn1/{mean,var}``.
- ``bn_type='dual'``: each BN layer is a :class:`DualBatchNorm` named ``bn1`` with two
  :class:`BatchNorm` children ``clean`` (ACL's ``'normal'``) and ``adv`` (ACL's ``'pgd'``), both
  created at init: ``params/.../bn1/clean/{scale,bias}``, ``params/.../bn1/adv/{scale,bias}`` and the
  same under ``batch_stats``. The branch is a static Python string chosen per call.

Hence :func:`select_bn_branch` turns a dual-BN tree into the single-BN tree of the same architecture
by replacing every ``{'clean': ..., 'adv': ...}`` node by one of its children (ACL
``train_trades.py::cvt_state_dict``, ``--bnNameCnt``).

BN hyper-parameters follow PyTorch: ``epsilon=1e-5``; Flax ``momentum=0.9`` is PyTorch
``momentum=0.1`` (``running = 0.9 * running + 0.1 * batch``). Scale is initialised to 1 and bias to 0.
One difference remains: PyTorch updates ``running_var`` with the *unbiased* batch variance, Flax with
the biased one (factor n/(n-1), n = B*H*W; negligible for conv layers).

:class:`BatchNorm` is Flax's ``nn.BatchNorm`` (same variables, same arithmetic: ``E[x^2] - E[x]^2``
variance, ``(x - mean) * scale * rsqrt(var + eps) + bias``) changed for XLA:CPU only: per-channel
sums of an NHWC activation are taken in two stages, ``[B*H, W*C] -> [W*C] -> [C]``, and per-channel
vectors are broadcast the same way, so that autodiff's transposes are also two-stage. XLA:CPU runs a
one-shot reduction over (B, H, W) that keeps a 16-wide minor dimension about 5x slower than the
two-stage form (1.14 ms against 0.24 ms on a [128, 32, 32, 16] activation, docs/design.md "CPU fast
paths"), and a train-mode BN layer needs four such sums per forward + backward. Train mode on CPU
also has a hand-written backward (``jax.custom_vjp``: one elementwise pass after two sums, so
forward-mode ``jax.jvp`` through it is not available). Where :func:`ascl_jax.cpu_kernels.enabled`,
the train-mode sums come from the C++ kernel :func:`ascl_jax.cpu_kernels.channel_sums` (one pass
over the operands) and the normalisation is written in PyTorch's folded form ``x * mul + (bias -
mean * mul)`` (its backward likewise), so that XLA keeps no ``x - mean``. On other backends the
plain one-shot form and autodiff are used.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ascl_jax import cpu_kernels

BN_TYPES = ('single', 'dual')
BN_BRANCHES = ('clean', 'adv')


def _two_stage() -> bool:
    """Whether per-channel sums use the two-stage form (XLA:CPU only; decided at trace time)."""
    return jax.default_backend() == "cpu"


def channel_sum(x: jax.Array) -> jax.Array:
    """Sum over all axes but the last: [..., C] -> [C] (two-stage for [B, H, W, C] on CPU)."""
    if x.ndim == 4 and _two_stage():
        b, h, w, c = x.shape
        return x.reshape(b * h, w * c).sum(0).reshape(w, c).sum(0)
    return x.reshape(-1, x.shape[-1]).sum(0)


def channel_broadcast(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Per-channel vector [C] -> ``shape`` [..., C] (its transpose is :func:`channel_sum`'s form)."""
    if len(shape) == 4 and _two_stage():
        b, h, w, c = shape
        return jnp.broadcast_to(jnp.tile(v, w), (b * h, w * c)).reshape(shape)
    return jnp.broadcast_to(v, shape)


def _normalize(x, mean, var, scale, bias, eps):
    """``(x - mean) * scale * rsqrt(var + eps) + bias``, per channel. x [..., C]; the rest [C]."""
    mul = scale * jax.lax.rsqrt(var + eps)
    return ((x - channel_broadcast(mean, x.shape)) * channel_broadcast(mul, x.shape)
            + channel_broadcast(bias, x.shape))


def _bn_train_plain(x, scale, bias, eps, kernel: bool = False):
    """Train-mode BN: -> (y, batch mean, biased batch var ``E[x^2] - E[x]^2``), as Flax."""
    n = x.size // x.shape[-1]
    if kernel:
        s1, s2 = cpu_kernels.channel_sums(x, x, jnp.zeros(x.shape[-1:], jnp.float32))
    else:
        s1, s2 = channel_sum(x), channel_sum(x * x)
    mean = s1 / n
    var = jnp.maximum(0.0, s2 / n - mean * mean)
    if kernel:
        # Folded form x * mul + (bias - mean * mul) (PyTorch's CPU batch norm computes this): no
        # x - mean for XLA to write to memory and keep for the backward.
        mul = scale * jax.lax.rsqrt(var + eps)
        y = (x * channel_broadcast(mul, x.shape)
             + channel_broadcast(bias - mean * mul, x.shape))
        return y, mean, var
    return _normalize(x, mean, var, scale, bias, eps), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_train_cpu(x, scale, bias, eps, kernel):
    """:func:`_bn_train_plain` with a hand-written backward (:func:`_bn_train_bwd`)."""
    return _bn_train_plain(x, scale, bias, eps, kernel)


def _bn_train_fwd(x, scale, bias, eps, kernel):
    y, mean, var = _bn_train_plain(x, scale, bias, eps, kernel)
    return (y, mean, var), (x, scale, mean, var)


def _bn_train_bwd(eps, kernel, res, cts):
    """Standard BN backward, written as one elementwise pass ``dx = a*gy + b*(x - mean) + c`` with
    per-channel a, b, c (b and c also carry the cotangents of the returned mean and variance) after
    two per-channel sums, ``sum(gy)`` and ``sum(gy * (x - mean))``."""
    x, scale, mean, var = res
    gy, gmean, gvar = cts
    n = x.size // x.shape[-1]
    rstd = jax.lax.rsqrt(var + eps)
    if kernel:
        s1, s_gy_xc = cpu_kernels.channel_sums(gy, x, mean)
    else:
        xc = x - channel_broadcast(mean, x.shape)
        s1, s_gy_xc = channel_sum(gy), channel_sum(gy * xc)
    dscale = s_gy_xc * rstd                          # sum(gy * xhat)
    a = scale * rstd
    b = -a * rstd * dscale / n + 2.0 * gvar / n
    c = -a * s1 / n + gmean / n
    if kernel:   # folded as in the forward: a*gy + b*x + (c - b*mean)
        dx = (gy * channel_broadcast(a, x.shape) + x * channel_broadcast(b, x.shape)
              + channel_broadcast(c - b * mean, x.shape))
    else:
        dx = (gy * channel_broadcast(a, x.shape) + xc * channel_broadcast(b, x.shape)
              + channel_broadcast(c, x.shape))
    return dx, dscale, s1


_bn_train_cpu.defvjp(_bn_train_fwd, _bn_train_bwd)


def bn_train(x, scale, bias, eps, kernel: bool | None = None):
    """Train-mode BN -> (y, batch mean, batch var): the hand-written backward for NHWC input on CPU,
    autodiff elsewhere. ``eps``: a Python float. ``kernel``: whether the per-channel sums use the
    C++ kernel (:mod:`ascl_jax.cpu_kernels`); None = :func:`cpu_kernels.enabled`."""
    if x.ndim == 4 and _two_stage():
        if kernel is None:
            kernel = cpu_kernels.enabled()
        return _bn_train_cpu(x, scale, bias, eps, bool(kernel))
    return _bn_train_plain(x, scale, bias, eps)


class BatchNorm(nn.Module):
    """``nn.BatchNorm`` over all axes but the last, with CPU-friendly per-channel sums (module doc).

    Variables as Flax's: ``params/{scale, bias}`` (ones, zeros) and ``batch_stats/{mean, var}``
    (zeros, ones). Train mode normalises with the batch's biased statistics and, outside ``init``,
    sets ``running = momentum * running + (1 - momentum) * batch``. Input [..., C], float32.
    """
    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
        if self.use_running_average:
            return _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
        y, mean, var = bn_train(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
            ra_var.value = m * ra_var.value + (1.0 - m) * var
        return y


def check_branch(bn: str) -> str:
    """Validates a BN branch name ('clean' or 'adv')."""
    if bn not in BN_BRANCHES:
        raise ValueError(f"bn must be one of {BN_BRANCHES}, got {bn!r}")
    return bn


class DualBatchNorm(nn.Module):
    """Two independent BatchNorms (``clean`` and ``adv``); ``bn`` picks the one used.

    Both children are created at ``init`` whatever ``bn`` is, so the variable tree always holds both
    sets of affine parameters and running statistics. In train mode only the selected branch's
    ``batch_stats`` change. Input [..., C] (normalised over all axes but the last).
    """
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str) -> jax.Array:
        check_branch(bn)
        norms = {k: BatchNorm(use_running_average=not train, momentum=self.momentum,
                                 epsilon=self.epsilon, name=k)
                 for k in BN_BRANCHES}
        if self.is_initializing():
            for k, m in norms.items():
                if k != bn:
                    m(x)
        return norms[bn](x)


@dataclasses.dataclass(frozen=True)
class Norm:
    """BN layer factory threaded through the encoders (hashable, so usable as a module field).

    ``norm(x, train=..., bn=..., name='bn1')`` creates the BN layer ``name`` as a child of the
    calling module (call it from inside a compact method) and applies it.
    """
    bn_type: str = 'single'
    momentum: float = 0.9
    epsilon: float = 1e-5

    def __post_init__(self):
        if self.bn_type not in BN_TYPES:
            raise ValueError(f"bn must be one of {BN_TYPES}, got {self.bn_type!r}")

    def __call__(self, x: jax.Array, *, train: bool, bn: str, name: str) -> jax.Array:
        if self.bn_type == 'single':
            return BatchNorm(use_running_average=not train, momentum=self.momentum,
                                epsilon=self.epsilon, name=name)(x)
        return DualBatchNorm(momentum=self.momentum, epsilon=self.epsilon, name=name)(
            x, train=train, bn=bn)


def _is_dual_node(node: Any) -> bool:
    return isinstance(node, Mapping) and set(node.keys()) == set(BN_BRANCHES)


def select_bn_branch(variables: Mapping[str, Any], branch: str) -> dict:
    """Dual-BN variables -> single-BN variables of the same architecture (SPEC §3.2).

    Every ``{'clean': ..., 'adv': ...}`` node (in ``params`` and ``batch_stats`` alike) is replaced by
    ``node[branch]``; everything else (convs, linears, the projection head's linears) is kept. ACL
    fine-tunes from the ``'adv'`` ('pgd') set and trains the semi-supervised clean model from the
    ``'clean'`` ('normal') set. Accepts dicts or FrozenDicts; returns plain nested dicts. A tree
    without dual nodes is returned unchanged (as dicts).
    """
    check_branch(branch)

    def walk(node):
        if _is_dual_node(node):
            return walk(node[branch])
        if isinstance(node, Mapping):
            return {k: walk(v) for k, v in node.items()}
        return node

    return walk(variables)


def has_dual_bn(variables: Mapping[str, Any]) -> bool:
    """True when the tree holds at least one dual-BN node."""
    if _is_dual_node(variables):
        return True
    if isinstance(variables, Mapping):
        return any(has_dual_bn(v) for v in variables.values())
    return False
