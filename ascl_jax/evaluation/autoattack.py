"""AutoAttack (Croce & Hein, ICML 2020) for the L-infinity threat model, in JAX.

Per-batch attacks are pure functions of a generic ``logits_fn: x [B, H, W, C] in [0, 1] -> logits
[B, K]`` (any model; normalisation is the model's job). Each iterative attack is a ``Program``
(init / step / finish on a state pytree). ``run_program`` runs one in compiled code: a
``lax.while_loop`` over chunks of ``unroll`` unrolled iterations, with an optional early exit once
every row of the batch is fooled (this never changes which rows are fooled); with the CPU speed
layer on, the loop body's convolutions are canonicalised (``xla_cpu.loops.loop_body``).

Components (semantics of the reference implementation ``fra31/auto-attack``, written anew here):

- ``apgd_linf``: APGD (Croce & Hein 2020, Alg. 1) on the cross-entropy, the DLR loss or the
  *targeted* DLR loss. Start ``x + eps * t / ||t||_inf`` with ``t ~ U(-1, 1)``; initial step
  ``2 eps``; momentum 0.75 (none on the first step). Step-size checkpoints at ``p_j N`` with
  ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (N = 100: after
  iterations 22, 41, 57, 70, 80, 87, 93, 99). At a checkpoint the step is halved and the iterate
  reset to the best point if the loss rose in at most ``rho = 0.75`` of the window's steps, or if
  the step was not halved at the previous checkpoint and the best loss has not improved since.
- ``fab_targeted_linf``: FAB-T (Croce & Hein, ICML 2020b), a minimum-norm attack towards a target
  class: the iterate and the original point are projected onto the linearised decision hyperplane
  (inside the [0, 1] box), combined with weight ``alpha <= alpha_max = 0.1``, overshoot
  ``eta = 1.05``, backward step ``beta = 0.9`` after each success. Success: a point of norm <= eps.
- ``square_linf``: Square Attack (Andriushchenko et al., ECCV 2020), score-based, margin loss,
  vertical-stripe initialisation, squares covering a fraction ``p`` of the image with
  ``p_init = 0.8`` halved after queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.
- ``run_autoattack``: the standard sequence APGD-CE (1 restart), APGD-T (9 target classes,
  1 restart each), FAB-T (9 target classes), Square (5000 queries, 1 restart), each on the rows
  still robust after the previous ones (worst case per example); ``version='fast'`` is APGD-CE +
  APGD-T. All budgets default to these standard values.

Randomness: every random draw of row ``i`` uses ``fold_in(key, index[i])`` with the row's *global
example index*, so results do not depend on the batch size, the batch composition or the device
count.

Differences from the reference (documented choices): APGD's first oscillation window compares the
first loss with 0, as the reference's zero-initialised history does; APGD returns the *first*
misclassified point it finds (the reference keeps the last); Square draws the square position and
colours per example (the reference draws one square per batch) and its position covers every valid
offset ``0..H-s`` (the reference never picks the last); FAB is implemented in its targeted form
only (the one AutoAttack-standard uses), without FAB's restarts (standard uses one).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax.xla_cpu import loops as cpu_loops

LogitsFn = Callable[[jax.Array], jax.Array]

# AutoAttack 'standard' budgets for L-inf (fra31/auto-attack, autoattack.py::set_version).
STANDARD = dict(apgd_iters=100, apgd_ce_restarts=1, apgd_t_targets=9, apgd_t_restarts=1,
                fab_iters=100, fab_targets=9, square_queries=5000, square_p_init=0.8, rho=0.75)
VERSIONS = {
    'standard': ('apgd-ce', 'apgd-t', 'fab-t', 'square'),
    'fast': ('apgd-ce', 'apgd-t'),
}
COMPONENTS = ('apgd-ce', 'apgd-dlr', 'apgd-t', 'fab-t', 'square')
SQUARE_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


# ----------------------------------------------------------------------------------------------
# Losses (per example; larger = more adversarial).

def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """CE per example. logits [B, K], y [B] int -> [B]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """z_y - max_{k != y} z_k per example ([B]); <= 0 means misclassified (ties count as fooled)."""
    z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    other = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return z_y - jnp.max(other, axis=-1)


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Difference of Logits Ratio (Croce & Hein 2020, Eq. 5): -(z_y - max_{k!=y} z_k) / (z_pi1 - z_pi3).

    logits [B, K] (K >= 3), y [B] -> [B]. Shift- and scale-invariant in the logits.
    """
    zs = jnp.sort(logits, axis=-1)
    return -margin(logits, y) / (zs[:, -1] - zs[:, -3] + 1e-12)


def targeted_dlr_loss(logits: jax.Array, y: jax.Array, y_target: jax.Array) -> jax.Array:
    """Targeted DLR (Croce & Hein 2020, Eq. 6): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).

    logits [B, K] (K >= 4), y, y_target [B] -> [B].
    """
    zs = jnp.sort(logits, axis=-1)
    z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    z_t = jnp.take_along_axis(logits, y_target[:, None], axis=-1)[:, 0]
    return -(z_y - z_t) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)


def ranked_target(logits: jax.Array, rank) -> jax.Array:
    """The class with the ``rank``-th largest logit (rank 1 = the prediction). logits [B, K] -> [B]."""
    order = jnp.argsort(logits, axis=-1)  # ascending
    return jnp.take(order, logits.shape[-1] - rank, axis=-1).astype(jnp.int32)


def _loss_fn(name: str):
    if name == 'ce':
        return lambda logits, y, t: cross_entropy(logits, y)
    if name == 'dlr':
        return lambda logits, y, t: dlr_loss(logits, y)
    if name == 'dlr-targeted':
        return targeted_dlr_loss
    if name == 'ce-targeted':
        return lambda logits, y, t: -cross_entropy(logits, t)
    raise ValueError(f"unknown APGD loss {name!r}; choose one of ['ce', 'dlr', 'dlr-targeted', "
                     "'ce-targeted']")


# ----------------------------------------------------------------------------------------------
# Helpers.

def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """[B] -> [B, 1, 1, ...] to broadcast against x."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def _project(x_adv: jax.Array, x: jax.Array, eps) -> jax.Array:
    """Onto the L-inf ball of radius eps around x, intersected with [0, 1]."""
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)


def _linf(d: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(d.reshape(d.shape[0], -1)), axis=-1)


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
    """One key per row from the row's global example index: key [], index [B] int -> keys [B]."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def _chunk(n: int, unroll: int) -> int:
    """The largest divisor of n that is <= unroll (loop bodies hold a whole number of iterations)."""
    unroll = max(1, min(int(unroll), n))
    return max(d for d in range(1, unroll + 1) if n % d == 0)


def _chunked_loop(n: int, unroll: int, step, state, active_fn=None):
    """Runs ``state = step(i, state)`` for i in [0, n) inside a while loop of unrolled chunks.

    ``active_fn(state) -> bool[]``: when given, the loop stops early once it returns False (checked
    between chunks). ``step`` receives a traced int32 ``i``. Where the CPU speed layer is on, the
    step goes through ``xla_cpu.loops.loop_body`` (convolutions canonicalised for the loop body).
    """
    if n <= 0:
        return state
    step = cpu_loops.loop_body(step)
    u = _chunk(n, unroll)
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


# ----------------------------------------------------------------------------------------------
# Programs: an iterative attack split into pure pieces (init / step / finish), run by ``run_program``
# as one compiled while loop.

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


def run_program_state(prog: Program, logits_fn: LogitsFn, x, y, *, index=None, active=None,
                      key=None, rank=2, eps, unroll: int | None = None, early_stop: bool = True):
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
    return _chunked_loop(prog.n_steps, unroll,
                         lambda i, s: prog.step(logits_fn, x, y, eps, i, s), state, active_fn)


def run_program(prog: Program, logits_fn: LogitsFn, x, y, *, eps, **kw):
    """Runs a Program on the device (one compiled while loop); returns (x_adv, fooled)."""
    x = x.astype(jnp.float32)
    state = run_program_state(prog, logits_fn, x, y, eps=eps, **kw)
    return prog.finish(logits_fn, x, y, eps, state)


def apgd_checkpoints(n_iter: int) -> list[tuple[int, int]]:
    """(iteration, window length) of APGD's step-size checks, 0-based iterations.

    For N = 100: iterations 21, 40, 56, 69, 79, 86, 92, 98 with windows 22, 19, 16, 13, 10, 7, 6, 6.
    The first window is ``max(int(0.22 N), 1)`` iterations; each later one ``max(int(0.03 N), 1)``
    shorter, down to ``max(int(0.06 N), 1)``.
    """
    k = max(int(0.22 * n_iter), 1)
    k_min = max(int(0.06 * n_iter), 1)
    dec = max(int(0.03 * n_iter), 1)
    out, i = [], k - 1
    while i < n_iter:
        out.append((i, k))
        k = max(k - dec, k_min)
        i += k
    return out


# ----------------------------------------------------------------------------------------------
# APGD.

def apgd_program(*, n_iter: int = 100, loss: str = 'ce', rho: float = 0.75,
                 y_target: jax.Array | None = None) -> Program:
    """APGD (L-inf, one restart) as a Program; see ``apgd_linf``.

    For the targeted losses the target is ``y_target`` if given, else the class ranked ``rank`` by
    the clean logits (``init``'s rank argument).
    """
    crit = _loss_fn(loss)
    targeted = loss in ('dlr-targeted', 'ce-targeted')
    ck = apgd_checkpoints(n_iter)
    is_ck_np = np.zeros(n_iter, bool)
    k_of_np = np.ones(n_iter, np.float32)
    for i, k in ck:
        is_ck_np[i], k_of_np[i] = True, k

    def loss_grad(lf, xa, y, t):
        def total(z):
            logits = lf(z)
            per = crit(logits, y, t)
            return jnp.sum(per), (per, logits)
        (_, (per, logits)), g = jax.value_and_grad(total, has_aux=True)(xa)
        return per, jnp.argmax(logits, axis=-1) == y, g

    def init(lf, x, y, index, key, rank, eps):
        b = x.shape[0]
        if targeted:
            t = ranked_target(lf(x), rank) if y_target is None else y_target.astype(jnp.int32)
        else:
            t = y
        keys = example_keys(key, index)
        u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], jnp.float32, -1.0, 1.0))(keys)
        x_adv = jnp.clip(x + eps * u / (_bcast(_linf(u), x) + 1e-12), 0.0, 1.0)
        l0, ok0, g0 = loss_grad(lf, x_adv, y, t)
        return dict(
            target=t, x_adv=x_adv, x_old=x_adv, g=g0, x_best=x_adv, g_best=g0, loss_best=l0,
            step=jnp.full((b,), 2.0 * eps, jnp.float32), ok=ok0, x_found=x_adv,
            n_incr=jnp.zeros((b,), jnp.float32),
            # The reference compares the first loss with an all-zero history row; kept.
            loss_prev=jnp.zeros((b,), jnp.float32),
            reduced_last=jnp.ones((b,), bool), loss_best_last=l0)

    def step(lf, x, y, eps, i, s):
        is_ck, k_of = jnp.asarray(is_ck_np), jnp.asarray(k_of_np)
        a = jnp.where(i == 0, 1.0, 0.75)
        momentum = s['x_adv'] - s['x_old']
        z = _project(s['x_adv'] + _bcast(s['step'], x) * jnp.sign(s['g']), x, eps)
        z = _project(s['x_adv'] + a * (z - s['x_adv']) + (1.0 - a) * momentum, x, eps)
        l, ok, g = loss_grad(lf, z, y, s['target'])
        s = dict(s, x_old=s['x_adv'], x_adv=z, g=g)
        s['x_found'] = jnp.where(_bcast(~ok & s['ok'], x), z, s['x_found'])
        s['ok'] = s['ok'] & ok
        s['n_incr'] = s['n_incr'] + (l > s['loss_prev']).astype(jnp.float32)
        s['loss_prev'] = l
        better = l > s['loss_best']
        s['x_best'] = jnp.where(_bcast(better, x), z, s['x_best'])
        s['g_best'] = jnp.where(_bcast(better, x), g, s['g_best'])
        s['loss_best'] = jnp.where(better, l, s['loss_best'])
        # Step-size checkpoint: halve and restart from the best point on oscillation / no progress.
        c = is_ck[i]
        osc = s['n_incr'] <= k_of[i] * rho
        no_impr = (~s['reduced_last']) & (s['loss_best_last'] >= s['loss_best'])
        red = c & (osc | no_impr)
        s['step'] = jnp.where(red, 0.5 * s['step'], s['step'])
        s['x_adv'] = jnp.where(_bcast(red, x), s['x_best'], s['x_adv'])
        s['g'] = jnp.where(_bcast(red, x), s['g_best'], s['g'])
        s['reduced_last'] = jnp.where(c, osc | no_impr, s['reduced_last'])
        s['loss_best_last'] = jnp.where(c, s['loss_best'], s['loss_best_last'])
        s['n_incr'] = jnp.where(c, 0.0, s['n_incr'])
        return s

    def finish(lf, x, y, eps, s):
        return _project(s['x_found'], x, eps), ~s['ok']

    return Program(n_iter, init, step, finish, running=lambda s: s['ok'])


def apgd_linf(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *, eps: float,
              n_iter: int = 100, loss: str = 'ce', y_target: jax.Array | None = None,
              rho: float = 0.75, index: jax.Array | None = None, active: jax.Array | None = None,
              unroll: int | None = None, early_stop: bool = True,
              return_state: bool = False):
    """One APGD run (one restart) with the L-inf threat model (Croce & Hein 2020, Alg. 1).

    Args:
      logits_fn: x [B, H, W, C] -> logits [B, K].
      x: clean images [B, H, W, C] in [0, 1]; y: labels [B] int.
      key: a typed PRNG key; row i draws from ``fold_in(key, index[i])``.
      eps: L-inf radius. n_iter: iterations (reference: 100). rho: oscillation threshold (0.75).
      loss: 'ce', 'dlr', 'dlr-targeted' (needs ``y_target`` [B]) or 'ce-targeted'.
      index: global example indices [B] (default ``arange(B)``).
      active: bool [B]; inactive rows (padding, already broken) do not hold back the early exit.
      unroll: iterations per compiled loop body.
      early_stop: stop once every active row is misclassified (does not change which rows are fooled).
      return_state: also return the final state dict ('x_best', 'loss_best', 'step', ...).
    Returns:
      (x_adv [B, H, W, C], fooled [B] bool): for fooled rows the first misclassified point found,
      otherwise the start point; always inside the eps-ball and [0, 1].
    """
    if loss in ('dlr-targeted', 'ce-targeted') and y_target is None:
        raise ValueError(f"APGD loss {loss!r} needs y_target")
    prog = apgd_program(n_iter=n_iter, loss=loss, rho=rho, y_target=y_target)
    x = x.astype(jnp.float32)
    state = run_program_state(prog, logits_fn, x, y, index=index, active=active, key=key, eps=eps,
                              unroll=unroll, early_stop=early_stop)
    out = prog.finish(logits_fn, x, y, eps, state)
    return out + (state,) if return_state else out


# ----------------------------------------------------------------------------------------------
# FAB-T.

def project_linf_hyperplane_box(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Minimum-L-inf step d onto the hyperplane <w, t + d> = b with t + d in [0, 1].

    t, w [B, D], b [B] -> d [B, D]. With lambda the L-inf radius, the best move changes every
    coordinate towards the hyperplane by min(lambda, room_i) (room = distance to the box face in
    that direction); the achieved change f(lambda) is piecewise linear and increasing, so lambda is
    found from the sorted rooms by a cumulative sum. If the hyperplane cannot be reached inside the
    box, every coordinate moves to its box face (the closest reachable point in that sense), as in
    FAB.
    """
    viol = jnp.sum(w * t, axis=-1) - b
    sgn = jnp.where(viol >= 0, 1.0, -1.0)
    w2 = w * sgn[:, None]  # now <w2, t + d> must decrease by c
    c = jnp.abs(viol)
    room = jnp.where(w2 > 0, t, 1.0 - t)
    room = jnp.where(w2 == 0, 0.0, room)
    aw = jnp.abs(w2)
    order = jnp.argsort(room, axis=-1)
    r = jnp.take_along_axis(room, order, axis=-1)
    a = jnp.take_along_axis(aw, order, axis=-1)
    cum_ar = jnp.cumsum(a * r, axis=-1)
    cum_a = jnp.cumsum(a, axis=-1)
    total_a = cum_a[:, -1:]
    f = cum_ar + r * (total_a - cum_a)  # change achieved at lambda = r_k
    kstar = jnp.sum(f < c[:, None], axis=-1)  # first k with f(r_k) >= c
    d_dim = t.shape[-1]
    feasible = kstar < d_dim
    kprev = jnp.clip(kstar - 1, 0, d_dim - 1)
    s_prev = jnp.where(kstar > 0, jnp.take_along_axis(cum_ar, kprev[:, None], -1)[:, 0], 0.0)
    a_used = jnp.where(kstar > 0, jnp.take_along_axis(cum_a, kprev[:, None], -1)[:, 0], 0.0)
    a_rem = total_a[:, 0] - a_used
    lam = jnp.maximum((c - s_prev) / jnp.maximum(a_rem, 1e-30), 0.0)
    lam = jnp.where(feasible, lam, jnp.inf)
    return -jnp.sign(w2) * jnp.minimum(lam[:, None], room)


def fab_program(*, n_iter: int = 100, alpha_max: float = 0.1, eta: float = 1.05,
                beta: float = 0.9, random_start: bool = False,
                y_target: jax.Array | None = None) -> Program:
    """FAB-T (L-inf, one restart) as a Program; see ``fab_targeted_linf``."""

    def diff_grad(lf, x1, y, t):
        def total(z):
            logits = lf(z)
            z_y = jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
            z_t = jnp.take_along_axis(logits, t[:, None], -1)[:, 0]
            df = -(z_y - z_t)
            return jnp.sum(df), df
        (_, df), g = jax.value_and_grad(total, has_aux=True)(x1)
        return df, g.reshape(x1.shape[0], -1)

    def init(lf, x, y, index, key, rank, eps):
        b = x.shape[0]
        t = ranked_target(lf(x), rank) if y_target is None else y_target.astype(jnp.int32)
        x1 = x
        if random_start:
            keys = example_keys(key, index)
            u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], jnp.float32, -1.0, 1.0))(keys)
            x1 = jnp.clip(x + 0.5 * eps * u / (_bcast(_linf(u), x) + 1e-12), 0.0, 1.0)
        return dict(target=t, x1=x1.reshape(b, -1), adv=x.reshape(b, -1),
                    res=jnp.full((b,), 1e10, jnp.float32), eps=jnp.full((b,), eps, jnp.float32))

    def step(lf, x, y, eps, i, s):
        b = x.shape[0]
        x0 = x.reshape(b, -1)
        x1 = s['x1']
        df, w = diff_grad(lf, x1.reshape(x.shape), y, s['target'])
        bb = -df + jnp.sum(w * x1, axis=-1)
        d1 = project_linf_hyperplane_box(x1, w, bb)
        d2 = project_linf_hyperplane_box(x0, w, bb)
        a1 = jnp.maximum(jnp.max(jnp.abs(d1), -1), 1e-8)
        a2 = jnp.maximum(jnp.max(jnp.abs(d2), -1), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        xn = jnp.clip((x1 + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
        is_adv = jnp.argmax(lf(xn.reshape(x.shape)), axis=-1) != y
        nrm = jnp.max(jnp.abs(xn - x0), axis=-1)
        better = is_adv & (nrm < s['res'])
        return dict(s, adv=jnp.where(better[:, None], xn, s['adv']),
                    res=jnp.where(better, nrm, s['res']),
                    x1=jnp.where(is_adv[:, None], x0 + (xn - x0) * beta, xn))

    def finish(lf, x, y, eps, s):
        found = s['res'] <= eps
        x_adv = jnp.where(found[:, None], s['adv'], x.reshape(x.shape[0], -1)).reshape(x.shape)
        return _project(x_adv, x, eps), found

    # A row is done once a point within eps is found; FAB would keep shrinking its norm, which
    # does not change the robustness verdict at this eps.
    return Program(n_iter, init, step, finish, running=lambda s: s['res'] > s['eps'])


def fab_targeted_linf(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, y_target: jax.Array,
                      key: jax.Array | None = None, *, eps: float, n_iter: int = 100,
                      alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                      random_start: bool = False, index: jax.Array | None = None,
                      active: jax.Array | None = None, unroll: int | None = None,
                      early_stop: bool = True) -> tuple[jax.Array, jax.Array]:
    """FAB-T (targeted Fast Adaptive Boundary attack), L-inf, one restart.

    x [B, H, W, C] in [0, 1], y and y_target [B]. Each iteration linearises g = z_t - z_y at the
    iterate, projects the iterate and the original point onto {g = 0} (inside [0, 1]), takes the
    biased step ``(x1 + eta d1)(1 - alpha) + (x0 + eta d2) alpha`` with
    ``alpha = min(|d1| / (|d1| + |d2|), alpha_max)``, and after a success records the point if its
    norm is the smallest so far and moves back towards x0 by ``beta``. ``random_start`` (the
    reference uses it for restarts after the first) starts at ``x + 0.5 eps t / ||t||``.
    Returns (x_adv, fooled): fooled = a misclassified point within eps was found (x_adv is the
    smallest one); otherwise x_adv = x.
    """
    if random_start and key is None:
        raise ValueError("random_start needs a key")
    prog = fab_program(n_iter=n_iter, alpha_max=alpha_max, eta=eta, beta=beta,
                       random_start=random_start, y_target=y_target)
    return run_program(prog, logits_fn, x, y, index=index, active=active, key=key, eps=eps,
                       unroll=unroll, early_stop=early_stop)


# ----------------------------------------------------------------------------------------------
# Square.

def square_p(i: jax.Array, p_init: float, n_queries: int, rescale: bool = False) -> jax.Array:
    """Fraction of pixels per square at iteration i (p_init halved after 10, 50, 200, ... 8000)."""
    it = i
    if rescale:
        it = (i * 10000) // n_queries
    halvings = sum((it > t).astype(jnp.int32) for t in SQUARE_THRESHOLDS)
    return p_init / (2.0 ** halvings.astype(jnp.float32))


def square_program(*, n_queries: int = 5000, p_init: float = 0.8,
                   rescale_schedule: bool = False) -> Program:
    """Square Attack (L-inf, margin loss, one restart) as a Program; see ``square_linf``."""

    def init(lf, x, y, index, key, rank, eps):
        b, h, w, ch = x.shape
        keys = example_keys(key, index)
        init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        stripes = jax.vmap(lambda k: jax.random.rademacher(k, (1, w, ch), jnp.float32))(init_keys)
        x_best = jnp.clip(x + eps * stripes, 0.0, 1.0)
        m0 = margin(lf(x_best), y)
        return dict(x_best=x_best, margin=m0, loss=m0,
                    keys=jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys))

    def step(lf, x, y, eps, i, s):
        b, h, w, ch = x.shape
        p = square_p(i, p_init, n_queries, rescale_schedule)
        side = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 1, min(h, w))
        rows = jnp.arange(h)[:, None]
        cols = jnp.arange(w)[None, :]

        def draw(k):
            k1, k2, k3 = jax.random.split(jax.random.fold_in(k, i), 3)
            vh = jax.random.randint(k1, (), 0, h - side + 1)
            vw = jax.random.randint(k2, (), 0, w - side + 1)
            col = jax.random.rademacher(k3, (ch,), jnp.float32)
            inside = (rows >= vh) & (rows < vh + side) & (cols >= vw) & (cols < vw + side)
            return inside[:, :, None] * (2.0 * eps) * col[None, None, :]

        x_new = _project(s['x_best'] + jax.vmap(draw)(s['keys']), x, eps)
        m = margin(lf(x_new), y)
        todo = s['margin'] > 0
        improved = m < s['loss']
        take = todo & (improved | (m <= 0))
        return dict(s, x_best=jnp.where(_bcast(take, x), x_new, s['x_best']),
                    margin=jnp.where(take, m, s['margin']),
                    loss=jnp.where(todo & improved, m, s['loss']))

    def finish(lf, x, y, eps, s):
        return _project(s['x_best'], x, eps), s['margin'] <= 0

    return Program(n_queries, init, step, finish, running=lambda s: s['margin'] > 0)


def square_linf(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *, eps: float,
                n_queries: int = 5000, p_init: float = 0.8, rescale_schedule: bool = False,
                index: jax.Array | None = None, active: jax.Array | None = None,
                unroll: int | None = None, early_stop: bool = True) -> tuple[jax.Array, jax.Array]:
    """Square Attack, L-inf, margin loss, one restart (uses logits only, no gradients).

    x [B, H, W, C] in [0, 1], y [B]. Start: ``x + eps * s`` with a random sign per (column, channel)
    (vertical stripes). Each query proposes, per example, an s x s window (s from ``square_p``) set to
    ``+-2 eps`` per channel, projected to the ball and the box; the proposal is kept if it lowers the
    margin loss or misclassifies. Rows already misclassified stop changing. Returns (x_adv, fooled).
    """
    prog = square_program(n_queries=n_queries, p_init=p_init, rescale_schedule=rescale_schedule)
    return run_program(prog, logits_fn, x, y, index=index, active=active, key=key, eps=eps,
                       unroll=unroll, early_stop=early_stop)


# ----------------------------------------------------------------------------------------------
# Components (one Program each; target rank, eps and key are traced arguments of init).

def component_program(name: str, *, n_iter: int = 100, n_queries: int = 5000,
                      p_init: float = 0.8, rho: float = 0.75) -> Program:
    """The Program of one AutoAttack component.

    APGD-T and FAB-T attack the class ranked ``rank`` by the clean logits (2..10 for the nine
    targets). One compiled program serves every target, radius and seed.
    """
    if name not in COMPONENTS:
        raise ValueError(f"unknown AutoAttack component {name!r}; choose one of {list(COMPONENTS)}")
    if name in ('apgd-ce', 'apgd-dlr'):
        return apgd_program(n_iter=n_iter, rho=rho, loss='ce' if name == 'apgd-ce' else 'dlr')
    if name == 'apgd-t':
        return apgd_program(n_iter=n_iter, rho=rho, loss='dlr-targeted')
    if name == 'fab-t':
        return fab_program(n_iter=n_iter)
    return square_program(n_queries=n_queries, p_init=p_init)


def plan(version: str | None = 'standard', *, components=None, num_classes: int,
         apgd_ce_restarts: int = 1, n_targets: int = 9, target_restarts: int = 1,
         square_restarts: int = 1) -> list[tuple[str, int, int]]:
    """The sequence of (component, target rank, restart) stages of a version (or a custom list).

    Target ranks are 2..n_targets+1, capped by the number of classes (K - 1 targets at most).
    """
    if components is None:
        if version not in VERSIONS:
            raise ValueError(f"unknown AutoAttack version {version!r}; choose one of {list(VERSIONS)}")
        components = VERSIONS[version]
    for c in components:
        if c not in COMPONENTS:
            raise ValueError(f"unknown AutoAttack component {c!r}; choose one of {list(COMPONENTS)}")
    n_t = max(0, min(n_targets, num_classes - 1))
    stages = []
    for c in components:
        if c in ('apgd-ce', 'apgd-dlr'):
            stages += [(c, 0, r) for r in range(apgd_ce_restarts)]
        elif c in ('apgd-t', 'fab-t'):
            stages += [(c, k, r) for k in range(2, n_t + 2) for r in range(target_restarts)]
        else:
            stages += [(c, 0, r) for r in range(square_restarts)]
    return stages


def check_num_classes(components, num_classes: int) -> None:
    """DLR needs 3 classes, the targeted DLR 4 (sorted logits pi_3, pi_4)."""
    if num_classes < 2:
        raise ValueError(f"AutoAttack needs at least 2 classes, got {num_classes}")
    if 'apgd-dlr' in components and num_classes < 3:
        raise ValueError(f"APGD-DLR needs at least 3 classes, got {num_classes}")
    if 'apgd-t' in components and num_classes < 4:
        raise ValueError(f"APGD-T (targeted DLR) needs at least 4 classes, got {num_classes}")


def stage_seed(name: str, rank: int, restart: int) -> int:
    """A fixed integer per stage, folded into the run's key (stable across versions and orders)."""
    base = {'apgd-ce': 1, 'apgd-dlr': 2, 'apgd-t': 3, 'fab-t': 4, 'square': 5}[name]
    return base * 1_000_000 + rank * 1_000 + restart


def run_autoattack(logits_fn, x, y, key: jax.Array, *, eps: float, version: str = 'standard',
                   components=None, params=None, batch_size: int = 128, mesh=None,
                   n_iter: int = STANDARD['apgd_iters'], n_queries: int = STANDARD['square_queries'],
                   n_targets: int = 9, apgd_ce_restarts: int = 1, target_restarts: int = 1,
                   unroll: int | None = None, early_stop: bool = True, progress: bool = True,
                   robust: np.ndarray | None = None, index: np.ndarray | None = None,
                   loop: str = 'auto') -> dict:
    """AutoAttack on host arrays, batched and sharded over ``mesh`` ('data' axis).

    Args:
      logits_fn: ``x -> logits`` or, with ``params``, ``(params, x) -> logits``.
      x: images [N, H, W, C] in [0, 1] (numpy or array); y: labels [N].
      key: typed PRNG key (``jax.random.key(seed)``).
      version: 'standard' (APGD-CE, APGD-T, FAB-T, Square) or 'fast' (APGD-CE, APGD-T); or pass
        ``components`` (a subset of COMPONENTS, in order).
      robust: optional bool [N] start mask (default: the clean-correct rows).
      index: global example indices [N] used for the per-example randomness (default arange(N)).
    Returns:
      dict with 'clean' (bool [N]), 'robust' (bool [N], final), 'x_adv' ([N, ...] numpy: adversarial
      examples for broken rows, x elsewhere), 'broken_by' (int [N]: position in ``components`` of the
      component that broke the row, -1 for robust or clean-misclassified rows), 'components',
      'accuracy' ({'clean': acc, component: robust accuracy after it (cumulative)}).
    """
    from ascl_jax.evaluation import engine as engine_lib
    eng = engine_lib.get_engine(logits_fn, params=params, batch_size=batch_size, mesh=mesh,
                                progress=progress, loop=loop, unroll=unroll)
    return eng.autoattack(x, y, key, eps=eps, version=version, components=components,
                          n_iter=n_iter, n_queries=n_queries, n_targets=n_targets,
                          apgd_ce_restarts=apgd_ce_restarts, target_restarts=target_restarts,
                          unroll=unroll, early_stop=early_stop, robust=robust, index=index)
