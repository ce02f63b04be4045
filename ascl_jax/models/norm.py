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
variance, ``(x - mean) * scale * rsqrt(var + eps) + bias``). For NHWC input, when the CPU speed
layer is on (:func:`ascl_jax.xla_cpu.enabled`), the same arithmetic is computed by
:mod:`ascl_jax.xla_cpu.batch_norm` (equal up to float rounding); otherwise it is plain JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ascl_jax import xla_cpu
from ascl_jax.config import BN_BRANCHES, BN_TYPES
from ascl_jax.xla_cpu import batch_norm as cpu_batch_norm


def _normalize(x, mean, var, scale, bias, eps):
    """``(x - mean) * scale * rsqrt(var + eps) + bias``, per channel. x [..., C]; the rest [C]."""
    mul = scale * jax.lax.rsqrt(var + eps)
    return (x - mean) * mul + bias


def _bn_train(x, scale, bias, eps):
    """Train-mode BN: -> (y, batch mean, biased batch var ``E[x^2] - E[x]^2``), as Flax."""
    c = x.shape[-1]
    n = x.size // c
    s1, s2 = x.reshape(-1, c).sum(0), (x * x).reshape(-1, c).sum(0)
    mean = s1 / n
    var = jnp.maximum(0.0, s2 / n - mean * mean)
    return _normalize(x, mean, var, scale, bias, eps), mean, var


class BatchNorm(nn.Module):
    """``nn.BatchNorm`` over all axes but the last (module doc).

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
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        fast = x.ndim == 4 and xla_cpu.enabled()
        if self.use_running_average:
            normalize = cpu_batch_norm.normalize if fast else _normalize
            return normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
        bn_train = cpu_batch_norm.train if fast else _bn_train
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
        norms = {
            k: BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon, name=k)
            for k in BN_BRANCHES
        }
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

    bn_type: str = "single"
    momentum: float = 0.9
    epsilon: float = 1e-5

    def __post_init__(self):
        if self.bn_type not in BN_TYPES:
            raise ValueError(f"bn must be one of {BN_TYPES}, got {self.bn_type!r}")

    def __call__(self, x: jax.Array, *, train: bool, bn: str, name: str) -> jax.Array:
        if self.bn_type == "single":
            return BatchNorm(
                use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon, name=name
            )(x)
        return DualBatchNorm(momentum=self.momentum, epsilon=self.epsilon, name=name)(x, train=train, bn=bn)


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
