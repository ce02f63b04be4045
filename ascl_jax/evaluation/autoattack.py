"""AutoAttack (Croce & Hein, ICML 2020; L1: Croce & Hein, ICCV 2021) in JAX: the per-batch attacks
for the threat models ``NORMS = ('Linf', 'L2', 'L1')``, and the versions' attack lists and budgets.

Per-batch attacks are pure functions of a generic ``logits_fn: x [B, H, W, C] in [0, 1] -> logits
[B, K]`` (any model; normalisation is the model's job). Each iterative attack is a
``programs.Program``; ``programs.run_program`` runs one in compiled code: a ``lax.while_loop`` over
chunks of ``unroll`` unrolled iterations, with an optional early exit once every active row of the
batch is fooled (this never changes which rows are fooled); with the CPU speed layer on, the loop
body's convolutions are canonicalised (``xla_cpu.loops.loop_body``).

Components (``COMPONENTS``; the reference implementation ``fra31/auto-attack``'s semantics, written
anew here): ``apgd`` (APGD-CE, APGD-DLR, APGD-T on the targeted DLR loss; ``apgd``), ``fab`` (FAB
and FAB-T; ``fab``), ``square`` (Square, 5000 queries; ``square``).

Versions (``version_specs``; the reference's ``AutoAttack.set_version`` and its constructor's
defaults), each component run on the rows still robust after the previous ones:

* 'standard', L-inf / L2: APGD-CE (1 restart), APGD-T (9 targets, 1 restart each), FAB-T
  (9 targets), Square (5000 queries). L1: APGD-CE (5 restarts) and APGD-T (5 targets) with the
  3 eps / 2 eps / eps schedule (``use_largereps``), FAB-T (9 targets), Square (5000 queries).
* 'plus' (every norm): APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square,
  APGD-T (9 targets), FAB-T (9 targets).
* 'rand' (every norm): APGD-CE and APGD-DLR, 1 restart, EoT over 20 forward passes.
* 'custom': the components given, with the reference constructor's defaults: APGD-CE / APGD-DLR
  5 restarts, APGD-T 9 targets 1 restart, FAB 5 restarts, FAB-T 9 targets, Square 5000 queries
  1 restart; 100 iterations for APGD and FAB; no EoT, no larger radii.

Targeted components attack the classes ranked 2..n_targets+1 by the clean logits. Randomness:
every random draw of row ``i`` uses ``fold_in(key, index[i])`` with the row's *global example
index*, so results do not depend on the batch size, the batch composition or the device count.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp

from ascl_jax.config import AUTOATTACK_COMPONENTS as COMPONENTS
from ascl_jax.config import AUTOATTACK_VERSIONS
from ascl_jax.evaluation.apgd import (
    apgd_checkpoints,
    apgd_program,
    apgd_schedule,
    cross_entropy,
    dlr_loss,
    targeted_dlr_loss,
)
from ascl_jax.evaluation.fab import fab_program
from ascl_jax.evaluation.programs import (
    LogitsFn,
    Program,
    example_keys,
    ranked_target,
    robust_margin,
    run_program,
    run_program_state,
)
from ascl_jax.evaluation.projections import (
    NORMS,
    check_norm,
    lp_norms,
    project_ball,
    project_hyperplane_box,
    project_l1_box,
    project_linf_hyperplane_box,
)
from ascl_jax.evaluation.square import SQUARE_THRESHOLDS, square_p, square_program

VERSIONS = tuple(v for v in AUTOATTACK_VERSIONS if v != "none")
# The reference's attack lists (AutoAttack.set_version), per version and norm.
ATTACKS = {
    ("standard", "Linf"): ("apgd-ce", "apgd-t", "fab-t", "square"),
    ("standard", "L2"): ("apgd-ce", "apgd-t", "fab-t", "square"),
    ("standard", "L1"): ("apgd-ce", "apgd-t", "fab-t", "square"),
    **{("plus", n): ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t") for n in NORMS},
    **{("rand", n): ("apgd-ce", "apgd-dlr") for n in NORMS},
}


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """One component of a version: its restarts, target classes (APGD-T, FAB-T), iterations (APGD,
    FAB), queries (Square), EoT passes and L1 radius schedule (APGD)."""

    name: str
    restarts: int = 1
    n_targets: int = 0
    n_iter: int = 100
    n_queries: int = 5000
    eot_iter: int = 1
    use_largereps: bool = False


def _default_spec(name: str) -> ComponentSpec:
    """The reference constructor's defaults (the 'custom' version)."""
    if name in ("apgd-ce", "apgd-dlr", "fab"):
        return ComponentSpec(name, restarts=5)
    if name in ("apgd-t", "fab-t"):
        return ComponentSpec(name, restarts=1, n_targets=9)
    return ComponentSpec(name)


def check_attacks(attacks) -> tuple[str, ...]:
    """A non-empty sequence of known component names, without repeats."""
    if isinstance(attacks, str) or not attacks:
        raise ValueError(
            f"attacks={attacks!r} must be a non-empty list of components from {list(COMPONENTS)}"
        )
    out = tuple(attacks)
    for c in out:
        if c not in COMPONENTS:
            raise ValueError(f"unknown AutoAttack component {c!r} in attacks; choose from {list(COMPONENTS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"attacks={list(out)} repeats a component")
    return out


def version_specs(version: str = "standard", norm: str = "Linf", attacks=None) -> tuple[ComponentSpec, ...]:
    """The components of ``version`` under ``norm``, in order, with their budgets (module docstring).

    ``attacks`` (component names) is required for 'custom' and refused otherwise, as in the
    reference. 'plus' with L1 warns, as the reference does (its budgets were set for L-inf / L2).
    """
    check_norm(norm)
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version={version!r}; choose one of {list(VERSIONS)}")
    if version == "custom":
        if attacks is None:
            raise ValueError(f"version='custom' needs attacks, a list from {list(COMPONENTS)}")
        return tuple(_default_spec(c) for c in check_attacks(attacks))
    if attacks is not None:
        raise ValueError(f"attacks={attacks!r} is only used with version='custom' (got version={version!r})")
    names = ATTACKS[(version, norm)]
    if version == "standard":
        l1 = norm == "L1"
        table = {
            "apgd-ce": ComponentSpec("apgd-ce", restarts=5 if l1 else 1, use_largereps=l1),
            "apgd-t": ComponentSpec("apgd-t", restarts=1, n_targets=5 if l1 else 9, use_largereps=l1),
            "fab-t": ComponentSpec("fab-t", n_targets=9),
            "square": ComponentSpec("square", n_queries=5000),
        }
    elif version == "plus":
        if norm == "L1":
            warnings.warn(
                "version='plus' with norm='L1': the reference sets its budgets for L-inf and L2", stacklevel=2
            )
        table = {c: _default_spec(c) for c in names}
    else:  # rand
        table = {c: ComponentSpec(c, restarts=1, eot_iter=20) for c in names}
    return tuple(table[c] for c in names)


# override_specs' keys: (key, ComponentSpec field, the components it applies to; None: all)
BUDGET_KEYS = (
    ("n_iter", "n_iter", None),
    ("n_queries", "n_queries", None),
    ("n_targets", "n_targets", ("apgd-t", "fab-t")),
    ("apgd_ce_restarts", "restarts", ("apgd-ce", "apgd-dlr")),
    ("target_restarts", "restarts", ("apgd-t",)),
    ("fab_restarts", "restarts", ("fab",)),
    ("square_restarts", "restarts", ("square",)),
    ("eot_iter", "eot_iter", ("apgd-ce", "apgd-dlr", "apgd-t")),
)


def override_specs(specs, **budgets) -> tuple[ComponentSpec, ...]:
    """Specs with budgets replaced where given (None keeps the version's value). Keys
    (``BUDGET_KEYS``): n_iter, n_queries, n_targets, apgd_ce_restarts (APGD-CE, APGD-DLR),
    target_restarts (APGD-T), fab_restarts (FAB), square_restarts, eot_iter; any other key is a
    ValueError naming the allowed ones."""
    unknown = sorted(set(budgets) - {k for k, _, _ in BUDGET_KEYS})
    if unknown:
        raise ValueError(f"unknown AutoAttack budget(s) {unknown}; allowed: {[k for k, _, _ in BUDGET_KEYS]}")
    out = []
    for s in specs:
        rep = {}
        for key, field, names in BUDGET_KEYS:
            v = budgets.get(key)
            if v is not None and (names is None or s.name in names):
                rep[field] = int(v)
        out.append(dataclasses.replace(s, **rep))
    return tuple(out)


def component_program(
    spec: ComponentSpec | str, *, norm: str = "Linf", stochastic: bool = False, **kw
) -> Program:
    """The Program of one component (a spec, or a name with the 'custom' defaults plus ``kw``
    overrides of ``ComponentSpec`` fields). One compiled program serves every target rank, radius
    and seed; untargeted FAB reads its restart index from the rank argument."""
    if isinstance(spec, str):
        if spec not in COMPONENTS:
            raise ValueError(f"unknown AutoAttack component {spec!r}; choose one of {list(COMPONENTS)}")
        spec = dataclasses.replace(_default_spec(spec), **kw)
    check_norm(norm)
    n = spec.name
    if n.startswith("apgd"):
        loss = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}[n]
        return apgd_program(
            n_iter=spec.n_iter,
            loss=loss,
            norm=norm,
            eot_iter=spec.eot_iter,
            use_largereps=spec.use_largereps,
            stochastic=stochastic,
        )
    if n == "fab":
        return fab_program(n_iter=spec.n_iter, norm=norm, targeted=False, random_start=None)
    if n == "fab-t":
        return fab_program(n_iter=spec.n_iter, norm=norm, targeted=True)
    return square_program(n_queries=spec.n_queries, norm=norm)


def plan(specs, *, num_classes: int) -> list[tuple[int, int, int]]:
    """The (component position, stage argument, restart) stages of a list of specs.

    Targeted components: ranks 2..n_targets+1 (capped at K - 1 targets), each with its restarts;
    untargeted FAB: the restart index as the stage argument (0: start at x, > 0: random start);
    the others: 0.
    """
    stages = []
    for ci, s in enumerate(specs):
        if s.name in ("apgd-t", "fab-t"):
            n_t = max(0, min(s.n_targets, num_classes - 1))
            restarts = s.restarts if s.name == "apgd-t" else 1  # FAB-T: one restart (reference)
            stages += [(ci, k, r) for k in range(2, n_t + 2) for r in range(restarts)]
        elif s.name == "fab":
            stages += [(ci, r, r) for r in range(s.restarts)]
        else:
            stages += [(ci, 0, r) for r in range(s.restarts)]
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
    base = {"apgd-ce": 1, "apgd-dlr": 2, "apgd-t": 3, "fab-t": 4, "square": 5, "fab": 6}[name]
    return base * 1_000_000 + rank * 1_000 + restart


# ----------------------------------------------------------------------------------------------
# Per-batch attacks.


def _run(prog, logits_fn, x, y, key, eps, index, active, unroll, early_stop, rank=2, state=False):
    x = x.astype(jnp.float32)
    kw = dict(index=index, active=active, key=key, rank=rank, eps=eps, unroll=unroll, early_stop=early_stop)
    st = run_program_state(prog, logits_fn, x, y, **kw)
    out = prog.finish(logits_fn, x, y, eps, st)
    return out + (st,) if state else out


def apgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    norm: str = "Linf",
    n_iter: int = 100,
    loss: str = "ce",
    y_target: jax.Array | None = None,
    rho: float = 0.75,
    eot_iter: int = 1,
    use_largereps: bool = False,
    index: jax.Array | None = None,
    active: jax.Array | None = None,
    unroll: int | None = None,
    early_stop: bool = True,
    return_state: bool = False,
):
    """One APGD run (one restart) for ``norm`` ('Linf', 'L2' or L1-APGD for 'L1'; ``apgd``).

    Args:
      logits_fn: x [B, H, W, C] -> logits [B, K].
      x: clean images [B, H, W, C] in [0, 1]; y: labels [B] int.
      key: a typed PRNG key; row i draws from ``fold_in(key, index[i])``.
      eps: radius. n_iter: iterations (reference: 100). rho: oscillation threshold (0.75).
      loss: 'ce', 'dlr', 'dlr-targeted' (needs ``y_target`` [B]) or 'ce-targeted'.
      eot_iter: forward passes averaged per gradient (a deterministic model gains nothing).
      use_largereps: L1 only, the 3 eps / 2 eps / eps schedule.
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
    prog = apgd_program(
        n_iter=n_iter,
        loss=loss,
        rho=rho,
        y_target=y_target,
        norm=check_norm(norm),
        eot_iter=eot_iter,
        use_largereps=use_largereps,
    )
    return _run(prog, logits_fn, x, y, key, eps, index, active, unroll, early_stop, state=return_state)


def apgd_linf(logits_fn: LogitsFn, x, y, key, **kw):
    """``apgd`` with ``norm='Linf'``."""
    return apgd(logits_fn, x, y, key, norm="Linf", **kw)


def fab(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    y_target: jax.Array | None = None,
    key: jax.Array | None = None,
    *,
    eps: float,
    norm: str = "Linf",
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
    """One FAB run: FAB-T towards ``y_target`` [B], or untargeted FAB when it is None (``fab``).

    x [B, H, W, C] in [0, 1], y [B]. ``random_start`` (the reference uses it for restarts after
    the first) starts at ``x + 0.5 eps t / ||t||_p``. Returns (x_adv, fooled): fooled = a
    misclassified point within eps was found (x_adv is the smallest one); otherwise x_adv = x.
    """
    if random_start and key is None:
        raise ValueError("random_start needs a key")
    prog = fab_program(
        n_iter=n_iter,
        alpha_max=alpha_max,
        eta=eta,
        beta=beta,
        random_start=random_start,
        y_target=y_target,
        norm=check_norm(norm),
        targeted=y_target is not None,
    )
    return _run(prog, logits_fn, x, y, key, eps, index, active, unroll, early_stop)


def fab_targeted_linf(logits_fn: LogitsFn, x, y, y_target, key=None, **kw):
    """``fab`` towards ``y_target`` with ``norm='Linf'``."""
    return fab(logits_fn, x, y, y_target, key, norm="Linf", **kw)


def square(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    norm: str = "Linf",
    n_queries: int = 5000,
    p_init: float = 0.8,
    rescale_schedule: bool = False,
    index: jax.Array | None = None,
    active: jax.Array | None = None,
    unroll: int | None = None,
    early_stop: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Square Attack, margin loss, one restart (logits only, no gradients; ``square``).

    x [B, H, W, C] in [0, 1], y [B]. Returns (x_adv, fooled).
    """
    prog = square_program(
        n_queries=n_queries, p_init=p_init, rescale_schedule=rescale_schedule, norm=check_norm(norm)
    )
    return _run(prog, logits_fn, x, y, key, eps, index, active, unroll, early_stop)


def square_linf(logits_fn: LogitsFn, x, y, key, **kw):
    """``square`` with ``norm='Linf'``."""
    return square(logits_fn, x, y, key, norm="Linf", **kw)


__all__ = [
    "ATTACKS",
    "BUDGET_KEYS",
    "COMPONENTS",
    "ComponentSpec",
    "LogitsFn",
    "NORMS",
    "Program",
    "SQUARE_THRESHOLDS",
    "VERSIONS",
    "apgd",
    "apgd_checkpoints",
    "apgd_linf",
    "apgd_program",
    "apgd_schedule",
    "check_attacks",
    "check_norm",
    "check_num_classes",
    "component_program",
    "cross_entropy",
    "dlr_loss",
    "example_keys",
    "fab",
    "fab_program",
    "fab_targeted_linf",
    "lp_norms",
    "override_specs",
    "plan",
    "project_ball",
    "project_hyperplane_box",
    "project_l1_box",
    "project_linf_hyperplane_box",
    "ranked_target",
    "robust_margin",
    "run_program",
    "run_program_state",
    "square",
    "square_linf",
    "square_p",
    "square_program",
    "stage_seed",
    "targeted_dlr_loss",
    "version_specs",
]
