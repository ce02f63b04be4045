"""The ``Program`` contract of the evaluation attacks, and per-row helpers shared by the programs.

A ``Program`` is an iterative attack split into pure pieces (init / step / finish on a state
pytree), run by ``run_program`` as one compiled ``lax.while_loop`` (with the CPU speed layer on, its
loop body's convolutions are canonicalised: ``xla_cpu.loops.loop_body``). Every function here works
on a batch:
``logits_fn: x [B, H, W, C] in [0, 1] -> logits [B, K]``, labels ``y`` int [B].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ascl_jax import attacks
from ascl_jax.xla_cpu import loops as cpu_loops

LogitsFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Program:
    """An iterative attack as pure functions of (logits_fn, x, y, eps) and a state pytree.

    init(lf, x, y, index, key, rank, eps) -> state; step(lf, x, y, eps, i, state) -> state for
    i in [0, n_steps); finish(lf, x, y, eps, state) -> (x_adv, fooled); running(state) -> bool [B],
    the rows not yet finished (the loop may stop once no active row is running). Everything an
    iteration needs (targets, keys, ...) lives in the state. ``norm`` (``projections.NORMS``) is the
    threat model its outputs satisfy (the engine re-projects and verifies under it).
    """

    n_steps: int
    init: Callable
    step: Callable
    finish: Callable
    running: Callable | None = None
    norm: str = "Linf"


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


# ----------------------------------------------------------------------------------------------
# Running a Program: one compiled while loop.


def chunk_size(n: int, unroll: int) -> int:
    """The largest divisor of n that is <= unroll (loop bodies hold a whole number of iterations)."""
    unroll = max(1, min(int(unroll), n))
    return max(d for d in range(1, unroll + 1) if n % d == 0)


def chunked_loop(n: int, unroll: int, step, state, active_fn=None):
    """Runs ``state = step(i, state)`` for i in [0, n) inside a while loop of unrolled chunks.

    ``active_fn(state) -> bool[]``: when given, the loop stops early once it returns False (checked
    between chunks). ``step`` receives a traced int32 ``i``. Where the CPU speed layer is on, the
    step goes through ``xla_cpu.loops.loop_body`` (convolutions canonicalised for the loop body).
    """
    if n <= 0:
        return state
    step = cpu_loops.loop_body(step)
    u = chunk_size(n, unroll)
    n_chunks = n // u

    def body(carry):
        c, st = carry
        for j in range(u):
            st = step(c * u + j, st)
        return c + 1, st

    def cond(carry):
        c, st = carry
        ok = c < n_chunks
        if active_fn is not None:
            ok = jnp.logical_and(ok, active_fn(st))
        return ok

    _, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
    return state


def default_unroll() -> int:
    """Iterations per compiled loop body when the caller gives none (1: a loop over single
    iterations)."""
    return 1


def run_program_state(
    prog: Program,
    logits_fn: LogitsFn,
    x,
    y,
    *,
    index=None,
    active=None,
    key=None,
    rank=2,
    eps,
    unroll: int | None = None,
    early_stop: bool = True,
):
    """Runs a Program's init and loop in one compiled while loop; returns the final state."""
    b = x.shape[0]
    index = jnp.arange(b, dtype=jnp.int32) if index is None else index
    active = jnp.ones((b,), bool) if active is None else active
    key = jax.random.key(0) if key is None else key
    unroll = default_unroll() if unroll is None else unroll
    state = prog.init(logits_fn, x, y, index, key, rank, eps)
    active_fn = None
    if early_stop and prog.running is not None:
        active_fn = lambda s: jnp.any(prog.running(s) & active)
    return chunked_loop(
        prog.n_steps, unroll, lambda i, s: prog.step(logits_fn, x, y, eps, i, s), state, active_fn
    )


def run_program(prog: Program, logits_fn: LogitsFn, x, y, *, eps, **kw):
    """Runs a Program on the device (one compiled while loop); returns (x_adv, fooled)."""
    x = x.astype(jnp.float32)
    state = run_program_state(prog, logits_fn, x, y, eps=eps, **kw)
    return prog.finish(logits_fn, x, y, eps, state)
