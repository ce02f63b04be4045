"""Evaluation PGD-k (with restarts) and multi-targeted PGD as engine stages, on ``ascl_jax.attacks``.

PGD (SPEC 1.6 evaluation attack / 3.6 ``eval_adv_test``): uniform random start in the eps-ball
(clipped to [0, 1]), ``num_steps`` signed-gradient steps of ``step_size`` on the cross-entropy,
projection onto the eps-ball and [0, 1]; the model is whatever ``logits_fn`` is (callers pass eval
mode). A restart is a fresh random start on the rows that survived the previous restarts; an
example is robust only if every restart fails (worst case per example).

Multi-targeted PGD (Gowal et al. 2019): one targeted PGD per target class maximising the margin
``z_t - z_y``, targets = the wrong classes ranked by the clean logits (``attacks.mpgd_targets``;
all K - 1 by default); robust only if every target fails. ``attacks.multi_targeted_pgd`` is the
same attack on one batch in one call (every target on every row, the per-example worst case by
final margin, a random start per batch key); here the targets run one after the other, each on the
rows every earlier target left robust, as the engine's survivor rounds.

The objectives, target ranking, the PGD step and the projection are ``ascl_jax.attacks``'s
(``ce_objective``, ``margin_objective``, ``mpgd_targets``, ``pgd_linf``, ``project_linf``); this
module adds what evaluation needs on top: a random start drawn per example from its global index
(passed as ``x_init``, so results do not depend on batching or devices) and the state-machine form
(``programs.Program``) that the engine runs as a stage.

L2 (``norm='L2'``): start ``x + eps * u * t / ||t||_2`` with t ~ N(0, 1), u ~ U(0, 1) per example
(clipped to [0, 1]); each step ``x_adv + step_size * g / ||g||_2`` (Madry et al. 2018's L2 steepest
ascent), then ``projections.project_ball`` (onto the L2 ball, then the box). L1 has no PGD here
(its attack is L1-APGD, ``autoattack``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import attacks
from ascl_jax.evaluation import autoattack as aa
from ascl_jax.evaluation import engine as engine_lib
from ascl_jax.evaluation.programs import Program, broadcast_rows, example_keys
from ascl_jax.evaluation.projections import normalize, project_ball, random_direction

PGD_NORMS = ("Linf", "L2")


def uniform_start(x, key, index, eps, norm: str = "Linf"):
    """L-inf: x + eps * U(-1, 1); L2: x + eps * u * t / ||t||_2 (t ~ N(0, 1), u ~ U(0, 1)); clipped
    to [0, 1]; row i draws from ``fold_in(key, index[i])``."""
    keys = example_keys(key, index)
    if norm == "Linf":
        u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], jnp.float32, -1.0, 1.0))(keys)
        return jnp.clip(x + eps * u, 0.0, 1.0)
    d = random_direction(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), x.shape[1:], norm)
    r = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    return jnp.clip(x + eps * broadcast_rows(r, x) * d, 0.0, 1.0)


def check_pgd_norm(norm: str) -> str:
    """PGD runs for ``PGD_NORMS``."""
    if norm not in PGD_NORMS:
        raise ValueError(
            f"norm={norm!r}: evaluation PGD / mPGD run for {list(PGD_NORMS)}; for L1 use AutoAttack "
            "(L1-APGD) or its components"
        )
    return norm


def pgd_program(
    *, num_steps: int, step_ratio: float, objective: str = "ce", y_target=None, norm: str = "Linf"
) -> Program:
    """PGD-k as a Program; step = step_ratio * eps (so one compiled program serves every eps).

    objective 'ce': maximise the cross-entropy (untargeted). 'margin-targeted': maximise
    ``z_t - z_y`` for ``y_target`` or, if None, the wrong class ranked ``rank - 1`` by the clean
    logits (rank 2 = the most likely wrong class; ``attacks.mpgd_targets``).
    """
    if objective not in ("ce", "margin-targeted"):
        raise ValueError(f"unknown PGD objective {objective!r}")
    check_pgd_norm(norm)

    def make_objective(lf, y, t):
        if objective == "ce":
            return attacks.ce_objective(lf, y)
        return attacks.margin_objective(lf, y, t)

    def init(lf, x, y, index, key, rank, eps):
        if objective == "ce":
            t = y
        elif y_target is not None:
            t = y_target.astype(jnp.int32)
        else:
            ranked = attacks.mpgd_targets(lf(x), y)  # [K - 1, B]
            t = jnp.take(ranked, jnp.clip(rank - 2, 0, ranked.shape[0] - 1), axis=0)
        return dict(x_adv=uniform_start(x, key, index, eps, norm), target=t)

    def step(lf, x, y, eps, i, s):
        if norm == "L2":
            obj = make_objective(lf, y, s["target"])
            g = jax.grad(lambda z: jnp.sum(obj(z)))(s["x_adv"])
            xa = project_ball(s["x_adv"] + step_ratio * eps * normalize(g, "L2"), x, eps, "L2")
            return dict(s, x_adv=xa)
        # One PGD step = attacks.pgd_linf with one step from the current iterate.
        xa = attacks.pgd_linf(
            make_objective(lf, y, s["target"]),
            x,
            None,
            eps=eps,
            step_size=step_ratio * eps,
            num_steps=1,
            random_start=False,
            x_init=s["x_adv"],
            unroll=1,
        )
        return dict(s, x_adv=xa)

    def finish(lf, x, y, eps, s):
        x_adv = project_ball(s["x_adv"], x, eps, norm)
        return x_adv, jnp.argmax(lf(x_adv), -1) != y

    return Program(num_steps, init, step, finish, running=None, norm=norm)


def pgd_linf_eval(
    logits_fn,
    x,
    y,
    key,
    *,
    eps,
    step_size,
    num_steps: int,
    objective: str = "ce",
    y_target=None,
    index=None,
    unroll: int | None = None,
):
    """PGD-k with a per-example uniform start (see module docstring), as one pure function.

    x [B, H, W, C] in [0, 1], y [B]. Returns (x_adv [B, H, W, C] = the last iterate, fooled [B]).
    """
    prog = pgd_program(
        num_steps=num_steps, step_ratio=float(step_size) / float(eps), objective=objective, y_target=y_target
    )
    return aa.run_program(prog, logits_fn, x, y, index=index, key=key, eps=eps, unroll=unroll)


def _ratio(eps, step_size):
    return float(step_size) / float(eps) if eps > 0 else 0.0


def _survivor_rounds(eng, fn, x, y, index, clean, rounds, *, eps, name, keep_adv):
    """Runs the compiled stage `fn` once per (key, desc, extra kwargs) in `rounds` (PGD restarts,
    mPGD target classes), each time on the rows still robust; a row broken once stays broken.
    Returns (robust [N] bool, x_adv or None)."""
    rob = np.asarray(clean, bool).copy()
    x_adv = x.copy() if keep_adv else None
    bar = eng.progress_bar(name)
    for k, desc, extra in rounds:
        rows = np.flatnonzero(rob)
        if len(rows) == 0:
            break
        engine_lib.grow(bar, len(rows))
        fooled, xa = eng.run_stage(
            fn,
            x,
            y,
            index,
            rows,
            k,
            eps=eps,
            desc=desc,
            robust_count=int(rob.sum()),
            total=len(rob),
            keep_adv=keep_adv,
            bar=bar,
            **extra,
        )
        rob[rows[fooled]] = False
        if keep_adv:
            x_adv[rows[fooled]] = xa[fooled]
    if bar is not None:
        bar.close()
    return rob, x_adv


def run_pgd(
    eng,
    x,
    y,
    index,
    clean,
    key,
    *,
    eps: float,
    step_size: float | None = None,
    steps: int,
    restarts: int = 1,
    name: str = "pgd",
    keep_adv: bool = False,
    check: bool = True,
    unroll: int | None = None,
    step_ratio: float | None = None,
    norm: str = "Linf",
):
    """PGD-k with restarts on the clean-correct rows; returns (robust [N] bool, x_adv or None).

    The step is ``step_size``, or ``step_ratio * eps`` when ``step_ratio`` is given; ``norm`` in
    ``PGD_NORMS``.
    """
    check_pgd_norm(norm)
    if check:
        engine_lib.check_eps(eps, norm=norm, shape=x.shape[1:])
    ratio = _ratio(eps, step_size) if step_ratio is None else float(step_ratio)
    fn = eng.stage(
        ("pgd", ratio, norm), pgd_program(num_steps=steps, step_ratio=ratio, norm=norm), unroll=unroll
    )
    rounds = [
        (jax.random.fold_in(key, r), name + (f" restart {r + 1}/{restarts}" if restarts > 1 else ""), {})
        for r in range(restarts)
    ]
    return _survivor_rounds(eng, fn, x, y, index, clean, rounds, eps=eps, name=name, keep_adv=keep_adv)


def run_mpgd(
    eng,
    x,
    y,
    index,
    clean,
    key,
    *,
    eps: float,
    step_size: float,
    steps: int,
    num_classes: int,
    num_targets: int | None = None,
    name: str = "mpgd",
    keep_adv: bool = False,
    unroll: int | None = None,
    norm: str = "Linf",
):
    """Multi-targeted PGD on the clean-correct rows; returns (robust [N] bool, x_adv or None)."""
    check_pgd_norm(norm)
    ratio = _ratio(eps, step_size)
    n_t = num_classes - 1 if num_targets is None else max(0, min(int(num_targets), num_classes - 1))
    fn = eng.stage(
        ("mpgd", ratio, norm),
        pgd_program(num_steps=steps, step_ratio=ratio, objective="margin-targeted", norm=norm),
        unroll=unroll,
    )
    rounds = [
        (jax.random.fold_in(key, rank), f"{name} target {rank - 1}/{n_t}", {"rank": rank})
        for rank in range(2, n_t + 2)
    ]
    return _survivor_rounds(eng, fn, x, y, index, clean, rounds, eps=eps, name=name, keep_adv=keep_adv)
