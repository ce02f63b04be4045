"""The ``Program`` contract of the evaluation attacks, and per-row helpers shared by the programs.

A ``Program`` is an iterative attack split into pure pieces (init / step / finish on a state
pytree), so that its loop can run as one compiled loop (``autoattack.run_program``) or be driven
chunk by chunk from the host (``engine.Engine.stage``). Every function here works on a batch:
``logits_fn: x [B, H, W, C] in [0, 1] -> logits [B, K]``, labels ``y`` int [B].
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from ascl_jax import attacks

LogitsFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Program:
    """An iterative attack as pure functions of (logits_fn, x, y, eps) and a state pytree.

    init(lf, x, y, index, key, rank, eps) -> state; step(lf, x, y, eps, i, state) -> state for
    i in [0, n_steps); finish(lf, x, y, eps, state) -> (x_adv, fooled); running(state) -> bool [B],
    the rows not yet finished (the loop may stop once no active row is running). Everything an
    iteration needs (targets, keys, ...) lives in the state.
    """
    n_steps: int
    init: Callable
    step: Callable
    finish: Callable
    running: Callable | None = None


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
    """One key per row from the row's global example index: key [], index [B] int -> keys [B]."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def broadcast_rows(v: jax.Array, x: jax.Array) -> jax.Array:
    """[B] -> [B, 1, 1, ...] to broadcast against x."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def linf_norms(d: jax.Array) -> jax.Array:
    """max |d| per row: [B, ...] -> [B]."""
    return jnp.max(jnp.abs(d.reshape(d.shape[0], -1)), axis=-1)


def robust_margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """z_y - max_{k != y} z_k per row [B] (``-attacks.logit_margin``); <= 0 means misclassified
    (ties count as fooled)."""
    return -attacks.logit_margin(logits, y)


def ranked_target(logits: jax.Array, rank) -> jax.Array:
    """The class with the ``rank``-th largest logit (rank 1 = the prediction). logits [B, K] -> [B]."""
    order = jnp.argsort(logits, axis=-1)  # ascending
    return jnp.take(order, logits.shape[-1] - rank, axis=-1).astype(jnp.int32)
