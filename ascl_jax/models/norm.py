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
Running variance (``running_var``, config ``model.bn_running_var``): ``'unbiased'`` (the model's
default, as PyTorch) updates it with the unbiased batch variance ``var * n / (n - 1)``, n = the
number of rows (valid rows under a mask) times H*W for conv BN; ``'biased'`` (Flax's
``nn.BatchNorm``, the default of the :class:`BatchNorm` module itself) with the biased one. The
batch normalisation itself always uses the biased variance, as both frameworks do.

Masked batches (``mask``, bool ``[B]``, the padded last batch of an epoch): train mode takes the
batch mean / variance over the valid rows only (padded rows are normalised with those statistics
but contribute nothing to them, nor to the running statistics' n). ``mask=None`` is the unmasked
arithmetic, unchanged. Eval mode ignores the mask (running statistics are per example).

:class:`BatchNorm` is Flax's ``nn.BatchNorm`` (same variables, same arithmetic: ``E[x^2] - E[x]^2``
variance, ``(x - mean) * scale * rsqrt(var + eps) + bias``). For NHWC input, when the CPU speed
layer is on (:func:`ascl_jax.xla_cpu.enabled`), the same arithmetic is computed by
:mod:`ascl_jax.xla_cpu.batch_norm` (equal up to float rounding); otherwise it is plain JAX.

Dtype: parameters, running statistics and the whole BN arithmetic are float32 whatever the input's
dtype; a bfloat16 input (``model.dtype='bfloat16'``) is cast to float32 first and the output cast
back to bfloat16.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ascl_jax import xla_cpu
from ascl_jax.config import BN_BRANCHES, BN_RUNNING_VARS, BN_TYPES
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


def _row_weights(mask: jax.Array, x: jax.Array) -> jax.Array:
    """bool mask [B] -> float weights [B, 1, ..., 1] broadcastable against x [B, ...]."""
    if mask.shape != x.shape[:1]:
        raise ValueError(
            f"mask must have shape [B] = {x.shape[:1]} for input of shape {x.shape}, got {mask.shape}"
        )
    return mask.astype(x.dtype).reshape(mask.shape + (1,) * (x.ndim - 1))


def _bn_train_masked(x, scale, bias, eps, mask):
    """Train-mode BN over the valid rows of ``mask`` [B] -> (y, mean, biased var, n).

    ``mean = sum_valid x / n``, ``var = max(0, sum_valid x^2 / n - mean^2)`` with n = valid rows x
    H*W (a traced scalar); every row (padded ones too) is normalised with these statistics."""
    c = x.shape[-1]
    w = _row_weights(mask, x)
    n = jnp.sum(mask.astype(x.dtype)) * (x.size // (x.shape[0] * c))
    xw = x * w
    s1, s2 = xw.reshape(-1, c).sum(0), (xw * x).reshape(-1, c).sum(0)
    mean = s1 / n
    var = jnp.maximum(0.0, s2 / n - mean * mean)
    return _normalize(x, mean, var, scale, bias, eps), mean, var, n


def unbiased_factor(n):
    """PyTorch's n / (n - 1) correction of the running variance (n > 1; 1 for n <= 1). n: a
    Python int or a traced scalar (masked batches)."""
    if isinstance(n, int):
        return n / (n - 1) if n > 1 else 1.0
    return jnp.where(n > 1, n / jnp.maximum(n - 1, 1), 1.0)


class BatchNorm(nn.Module):
    """``nn.BatchNorm`` over all axes but the last (module doc).

    Variables as Flax's: ``params/{scale, bias}`` (ones, zeros) and ``batch_stats/{mean, var}``
    (zeros, ones). Train mode normalises with the batch's biased statistics and, outside ``init``,
    sets ``running = momentum * running + (1 - momentum) * batch``, where the batch variance is
    the biased one (``running_var='biased'``, Flax, this module's default) or the unbiased one
    ``var * n / (n - 1)`` (``'unbiased'``, PyTorch; the model's default). Input x [..., C] float (the
    arithmetic in float32, the output in x's dtype); ``mask``: optional bool [B] (B = x.shape[0])
    of the valid rows (module doc), None = all rows.
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    running_var: str = "biased"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if self.running_var not in BN_RUNNING_VARS:
            raise ValueError(f"running_var must be one of {BN_RUNNING_VARS}, got {self.running_var!r}")
        out_dtype = x.dtype
        if out_dtype != jnp.float32:
            x = x.astype(jnp.float32)
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        fast = x.ndim == 4 and xla_cpu.enabled()
        if self.use_running_average:
            normalize = cpu_batch_norm.normalize if fast else _normalize
            y = normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
            return y if out_dtype == jnp.float32 else y.astype(out_dtype)
        if mask is None:
            bn_train = cpu_batch_norm.train if fast else _bn_train
            y, mean, var = bn_train(x, scale, bias, self.epsilon)
            n = x.size // c
        else:  # the speed layer has no masked form: plain arithmetic
            y, mean, var, n = _bn_train_masked(x, scale, bias, self.epsilon, mask)
        if not self.is_initializing():
            m = self.momentum
            if self.running_var == "unbiased":
                var = var * unbiased_factor(n)
            ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
            ra_var.value = m * ra_var.value + (1.0 - m) * var
        return y if out_dtype == jnp.float32 else y.astype(out_dtype)


def check_branch(bn: str) -> str:
    """Validates a BN branch name ('clean' or 'adv')."""
    if bn not in BN_BRANCHES:
        raise ValueError(f"bn must be one of {BN_BRANCHES}, got {bn!r}")
    return bn


class DualBatchNorm(nn.Module):
    """Two independent BatchNorms (``clean`` and ``adv``); ``bn`` picks the one used.

    Both children are created at ``init`` whatever ``bn`` is, so the variable tree always holds both
    sets of affine parameters and running statistics. In train mode only the selected branch's
    ``batch_stats`` change. Input [..., C] (normalised over all axes but the last); ``mask`` and
    ``running_var`` as :class:`BatchNorm`.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    running_var: str = "biased"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str, mask: jax.Array | None = None) -> jax.Array:
        check_branch(bn)
        norms = {
            k: BatchNorm(
                use_running_average=not train,
                momentum=self.momentum,
                epsilon=self.epsilon,
                running_var=self.running_var,
                name=k,
            )
            for k in BN_BRANCHES
        }
        if self.is_initializing():
            for k, m in norms.items():
                if k != bn:
                    m(x, mask)
        return norms[bn](x, mask)


@dataclasses.dataclass(frozen=True)
class Norm:
    """BN layer factory threaded through the encoders (hashable, so usable as a module field).

    ``norm(x, train=..., bn=..., name='bn1')`` creates the BN layer ``name`` as a child of the
    calling module (call it from inside a compact method) and applies it. ``running_var``: as
    :class:`BatchNorm` (default ``'unbiased'``, config ``model.bn_running_var``). ``mask``: the
    optional bool [B] valid-row mask of the current call (set per call by the model,
    ``ASCLModel.__call__(..., mask=...)``, and passed to every BN layer; excluded from equality and
    hashing, so the factory stays a hashable module field).
    """

    bn_type: str = "single"
    momentum: float = 0.9
    epsilon: float = 1e-5
    running_var: str = "unbiased"
    mask: Any = dataclasses.field(default=None, compare=False, hash=False)

    def __post_init__(self):
        if self.bn_type not in BN_TYPES:
            raise ValueError(f"bn must be one of {BN_TYPES}, got {self.bn_type!r}")
        if self.running_var not in BN_RUNNING_VARS:
            raise ValueError(f"running_var must be one of {BN_RUNNING_VARS}, got {self.running_var!r}")

    def with_mask(self, mask: jax.Array | None) -> Norm:
        """The same factory applying ``mask`` (bool [B] or None) in every BN layer."""
        return dataclasses.replace(self, mask=mask)

    def __call__(self, x: jax.Array, *, train: bool, bn: str, name: str) -> jax.Array:
        kw = dict(momentum=self.momentum, epsilon=self.epsilon, running_var=self.running_var, name=name)
        if self.bn_type == "single":
            return BatchNorm(use_running_average=not train, **kw)(x, self.mask)
        return DualBatchNorm(**kw)(x, train=train, bn=bn, mask=self.mask)


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
