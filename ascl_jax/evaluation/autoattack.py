"""AutoAttack (Croce & Hein, ICML 2020) for the L-infinity threat model, in JAX: the per-batch attacks
and the composition of the standard sequence.

Per-batch attacks are pure functions of a generic ``logits_fn: x [B, H, W, C] in [0, 1] -> logits
[B, K]`` (any model; normalisation is the model's job). Each iterative attack is a
``programs.Program``; ``programs.run_program`` runs one in compiled code: a ``lax.while_loop`` over chunks of
``unroll`` unrolled iterations, with an optional early exit once every active row of the batch is
fooled (this never changes which rows are fooled); with the CPU speed layer on, the loop body's
convolutions are canonicalised (``xla_cpu.loops.loop_body``).

Components (semantics of the reference implementation ``fra31/auto-attack``, written anew here):
``apgd_linf`` (APGD on the cross-entropy, the DLR or the targeted DLR loss; ``apgd``),
``fab_targeted_linf`` (FAB-T; ``fab``), ``square_linf`` (Square, 5000 queries; ``square``).
The standard sequence (``VERSIONS['standard']``, ``plan``): APGD-CE (1 restart), APGD-T (9 target
classes, 1 restart each), FAB-T (9 target classes), Square (1 restart), each on the rows still
robust after the previous ones (worst case per example); ``'fast'`` is APGD-CE + APGD-T. All budgets
default to these standard values (``STANDARD``). ``autoattack_driver.run_autoattack`` runs a
sequence over host arrays.

Randomness: every random draw of row ``i`` uses ``fold_in(key, index[i])`` with the row's *global
example index*, so results do not depend on the batch size, the batch composition or the device
count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ascl_jax.evaluation.apgd import (
    apgd_checkpoints,
    apgd_program,
    cross_entropy,
    dlr_loss,
    targeted_dlr_loss,
)
from ascl_jax.evaluation.fab import fab_program, project_linf_hyperplane_box
from ascl_jax.evaluation.programs import (
    LogitsFn,
    Program,
    example_keys,
    ranked_target,
    robust_margin,
    run_program,
    run_program_state,
)
from ascl_jax.evaluation.square import SQUARE_THRESHOLDS, square_p, square_program

# AutoAttack 'standard' budgets for L-inf (fra31/auto-attack, autoattack.py::set_version).
STANDARD = dict(
    apgd_iters=100,
    apgd_ce_restarts=1,
    apgd_t_targets=9,
    apgd_t_restarts=1,
    fab_iters=100,
    fab_targets=9,
    square_queries=5000,
    square_p_init=0.8,
    rho=0.75,
)
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
}
COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")


def apgd_linf(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    n_iter: int = 100,
    loss: str = "ce",
    y_target: jax.Array | None = None,
    rho: float = 0.75,
    index: jax.Array | None = None,
    active: jax.Array | None = None,
    unroll: int | None = None,
    early_stop: bool = True,
    return_state: bool = False,
):
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
    if loss in ("dlr-targeted", "ce-targeted") and y_target is None:
        raise ValueError(f"APGD loss {loss!r} needs y_target")
    prog = apgd_program(n_iter=n_iter, loss=loss, rho=rho, y_target=y_target)
    x = x.astype(jnp.float32)
    state = run_program_state(
        prog,
        logits_fn,
        x,
        y,
        index=index,
        active=active,
        key=key,
        eps=eps,
        unroll=unroll,
        early_stop=early_stop,
    )
    out = prog.finish(logits_fn, x, y, eps, state)
    return out + (state,) if return_state else out


def fab_targeted_linf(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    y_target: jax.Array,
    key: jax.Array | None = None,
    *,
    eps: float,
    n_iter: int = 100,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    random_start: bool = False,
    index: jax.Array | None = None,
    active: jax.Array | None = None,
    unroll: int | None = None,
    early_stop: bool = True,
) -> tuple[jax.Array, jax.Array]:
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
    prog = fab_program(
        n_iter=n_iter, alpha_max=alpha_max, eta=eta, beta=beta, random_start=random_start, y_target=y_target
    )
    return run_program(
        prog,
        logits_fn,
        x,
        y,
        index=index,
        active=active,
        key=key,
        eps=eps,
        unroll=unroll,
        early_stop=early_stop,
    )


def square_linf(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    n_queries: int = 5000,
    p_init: float = 0.8,
    rescale_schedule: bool = False,
    index: jax.Array | None = None,
    active: jax.Array | None = None,
    unroll: int | None = None,
    early_stop: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Square Attack, L-inf, margin loss, one restart (uses logits only, no gradients).

    x [B, H, W, C] in [0, 1], y [B]. Start: ``x + eps * s`` with a random sign per (column, channel)
    (vertical stripes). Each query proposes, per example, an s x s window (s from ``square_p``) set to
    ``+-2 eps`` per channel, projected to the ball and the box; the proposal is kept if it lowers the
    margin loss or misclassifies. Rows already misclassified stop changing. Returns (x_adv, fooled).
    """
    prog = square_program(n_queries=n_queries, p_init=p_init, rescale_schedule=rescale_schedule)
    return run_program(
        prog,
        logits_fn,
        x,
        y,
        index=index,
        active=active,
        key=key,
        eps=eps,
        unroll=unroll,
        early_stop=early_stop,
    )


# ----------------------------------------------------------------------------------------------
# Components (one Program each; target rank, eps and key are traced arguments of init).


def component_program(
    name: str, *, n_iter: int = 100, n_queries: int = 5000, p_init: float = 0.8, rho: float = 0.75
) -> Program:
    """The Program of one AutoAttack component.

    APGD-T and FAB-T attack the class ranked ``rank`` by the clean logits (2..10 for the nine
    targets). One compiled program serves every target, radius and seed.
    """
    if name not in COMPONENTS:
        raise ValueError(f"unknown AutoAttack component {name!r}; choose one of {list(COMPONENTS)}")
    if name in ("apgd-ce", "apgd-dlr"):
        return apgd_program(n_iter=n_iter, rho=rho, loss="ce" if name == "apgd-ce" else "dlr")
    if name == "apgd-t":
        return apgd_program(n_iter=n_iter, rho=rho, loss="dlr-targeted")
    if name == "fab-t":
        return fab_program(n_iter=n_iter)
    return square_program(n_queries=n_queries, p_init=p_init)


def plan(
    version: str | None = "standard",
    *,
    components=None,
    num_classes: int,
    apgd_ce_restarts: int = 1,
    n_targets: int = 9,
    target_restarts: int = 1,
    square_restarts: int = 1,
) -> list[tuple[str, int, int]]:
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
        if c in ("apgd-ce", "apgd-dlr"):
            stages += [(c, 0, r) for r in range(apgd_ce_restarts)]
        elif c in ("apgd-t", "fab-t"):
            stages += [(c, k, r) for k in range(2, n_t + 2) for r in range(target_restarts)]
        else:
            stages += [(c, 0, r) for r in range(square_restarts)]
    return stages


def check_num_classes(components, num_classes: int) -> None:
    """DLR needs 3 classes, the targeted DLR 4 (sorted logits pi_3, pi_4)."""
    if num_classes < 2:
        raise ValueError(f"AutoAttack needs at least 2 classes, got {num_classes}")
    if "apgd-dlr" in components and num_classes < 3:
        raise ValueError(f"APGD-DLR needs at least 3 classes, got {num_classes}")
    if "apgd-t" in components and num_classes < 4:
        raise ValueError(f"APGD-T (targeted DLR) needs at least 4 classes, got {num_classes}")


def stage_seed(name: str, rank: int, restart: int) -> int:
    """A fixed integer per stage, folded into the run's key (stable across versions and orders)."""
    base = {"apgd-ce": 1, "apgd-dlr": 2, "apgd-t": 3, "fab-t": 4, "square": 5}[name]
    return base * 1_000_000 + rank * 1_000 + restart


__all__ = [
    "STANDARD",
    "VERSIONS",
    "COMPONENTS",
    "SQUARE_THRESHOLDS",
    "Program",
    "LogitsFn",
    "run_program",
    "run_program_state",
    "apgd_linf",
    "fab_targeted_linf",
    "square_linf",
    "apgd_program",
    "fab_program",
    "square_program",
    "apgd_checkpoints",
    "square_p",
    "project_linf_hyperplane_box",
    "cross_entropy",
    "dlr_loss",
    "targeted_dlr_loss",
    "robust_margin",
    "ranked_target",
    "example_keys",
    "component_program",
    "plan",
    "check_num_classes",
    "stage_seed",
]
