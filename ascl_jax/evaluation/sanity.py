"""Sanity checks against gradient masking (Athalye et al. 2018; Carlini et al. 2019, "On evaluating
adversarial robustness", section 5; the checks of ``fra31/auto-attack: checks.py``).

Run on the first ``n_examples`` examples, each check returns ``passed`` (bool), a ``message`` and
its numbers. A failure does not stop the evaluation; it says the robust accuracy may be
overestimated.

- ``eps_zero_is_clean``: an attack with eps = 0 gives the clean accuracy (within one example, for
  argmax ties); catches a stochastic model or batch-dependent forward passes (batch norm left in
  train mode: the attacks run on batches of other compositions than the clean pass).
- ``accuracy_falls_with_eps``: PGD accuracy is non-increasing over an eps sweep (within the
  tolerance).
- ``more_steps_not_better``: PGD with 4x the steps is not more than the tolerance *above* PGD.
- ``square_not_stronger``: the black-box Square attack does not beat the white-box attacks by more
  than the tolerance. Uses AutoAttack-standard's own numbers when it ran (the share of examples only
  Square broke); otherwise runs Square (``square_queries``) on the subset's rows that PGD-k and
  PGD-4k both left robust and counts what it breaks.
- ``nonzero_gradients``: no clean-correct example has an all-zero input gradient of the margin loss
  (zero gradients make every gradient-based attack a no-op).

The tolerance is ``max(tolerance, 1 / n)`` in accuracy units (one example at least).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax.evaluation import autoattack_driver
from ascl_jax.evaluation import engine as engine_lib
from ascl_jax.evaluation import pgd as pgd_lib
from ascl_jax.evaluation.programs import robust_margin


def _check(passed: bool, message: str, **values) -> dict:
    return dict(passed=bool(passed), message=message, **values)


def zero_gradient_fraction(eng, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    """Fraction of ``rows`` whose margin-loss input gradient is exactly zero."""
    if len(rows) == 0:
        return 0.0

    def run(params, x, y, index, active, key, rank, eps):
        # Same calling convention as a stage; the second output is the all-zero-gradient flag.
        lf = eng.logits_fn(params)
        g = jax.grad(lambda z: jnp.sum(robust_margin(lf(z), y)))(x)
        zero = jnp.all(g.reshape(g.shape[0], -1) == 0, axis=-1)
        return x, zero & active

    fn = eng.compile_stage("zero_grad", run)
    flags, _ = eng.run_stage(
        fn,
        x,
        y,
        np.arange(len(x)),
        rows,
        jax.random.key(0),
        eps=0.0,
        desc="sanity: gradients",
        keep_adv=False,
    )
    return float(flags.mean())


def run_checks(
    eng,
    x: np.ndarray,
    y: np.ndarray,
    clean: np.ndarray,
    key,
    *,
    eps: float,
    step_size: float,
    n_examples: int = 256,
    steps: int = 10,
    square_queries: int = 1000,
    tolerance: float = 0.01,
    eps_sweep=None,
    results: dict | None = None,
    norm: str = "Linf",
) -> dict:
    """Runs the checks on the first ``n_examples``; returns {'passed', 'messages', 'checks', ...}.
    ``norm``: the threat model of every attack the checks run."""
    n = min(int(n_examples), x.shape[0])
    xs, ys, cs = x[:n], y[:n], clean[:n]
    idx = np.arange(n)
    tol = max(float(tolerance), 1.0 / max(n, 1))
    clean_acc = float(cs.mean())
    ratio = step_size / eps
    checks = {}

    def pgd_acc(e, k, name):
        # step = ratio * e: the same compiled PGD as the main run, at every radius.
        rob, _ = pgd_lib.run_pgd(
            eng,
            xs,
            ys,
            idx,
            cs,
            jax.random.fold_in(key, k),
            eps=e,
            step_ratio=ratio,
            steps=k,
            restarts=1,
            name=name,
            keep_adv=False,
            check=False,
            norm=norm,
        )
        return float(rob.mean()), rob

    # eps = 0 gives the clean accuracy (recomputed through the attack path, on survivor batches).
    acc0, _ = pgd_acc(0.0, steps, f"sanity: pgd{steps} eps=0")
    ok0 = abs(acc0 - clean_acc) <= 1.0 / max(n, 1) + 1e-12  # one example: argmax ties
    checks["eps_zero_is_clean"] = _check(
        ok0,
        "ok"
        if ok0
        else f"accuracy at eps=0 is {acc0:.4f} but clean accuracy is {clean_acc:.4f}: the model is "
        "stochastic or depends on the batch (batch norm in train mode?)",
        accuracy_eps0=acc0,
        clean_accuracy=clean_acc,
    )

    # Accuracy falls as eps grows.
    sweep = [0.0, 0.25 * eps, 0.5 * eps, eps, 2 * eps] if eps_sweep is None else list(eps_sweep)
    e_max = engine_lib.max_eps(norm, x.shape[1:])
    sweep = sorted({min(float(e), e_max) for e in sweep if float(e) >= 0.0})
    accs, rob_at_eps = [], None
    for e in sweep:
        if e == 0.0:
            accs.append(acc0)
            continue
        a, rob = pgd_acc(e, steps, f"sanity: pgd{steps} eps={e:.4g}")
        accs.append(a)
        if abs(e - eps) < 1e-12:
            rob_at_eps = rob
    rises = [
        (sweep[i], sweep[i + 1], accs[i], accs[i + 1])
        for i in range(len(accs) - 1)
        if accs[i + 1] > accs[i] + tol
    ]
    checks["accuracy_falls_with_eps"] = _check(
        not rises,
        "ok"
        if not rises
        else "accuracy rises with eps: "
        + "; ".join(f"{a:.4f} at eps={e0:.4g} -> {b:.4f} at eps={e1:.4g}" for e0, e1, a, b in rises),
        eps=sweep,
        accuracy=accs,
    )

    # More steps do not help the model.
    if rob_at_eps is None:
        acc_k, rob_at_eps = pgd_acc(eps, steps, f"sanity: pgd{steps}")
    else:
        acc_k = float(rob_at_eps.mean())
    acc_4k, rob_4k = pgd_acc(eps, 4 * steps, f"sanity: pgd{4 * steps}")
    ok = acc_4k <= acc_k + tol
    checks["more_steps_not_better"] = _check(
        ok,
        "ok"
        if ok
        else f"PGD-{4 * steps} accuracy {acc_4k:.4f} is above PGD-{steps} accuracy "
        f"{acc_k:.4f}: the loss surface is not being climbed (masked or noisy gradients?)",
        steps=[steps, 4 * steps],
        accuracy=[acc_k, acc_4k],
    )

    # Black-box Square is not much stronger than the white-box attacks.
    aa_std = None
    for det in ((results or {}).get("autoattack") or {}).values():
        if "square" in det["components"] and len(det["components"]) > 1:
            aa_std = det
    if aa_std is not None:
        acc_after = aa_std["accuracy_after"]
        comps = aa_std["components"]
        before = (
            acc_after[comps[comps.index("square") - 1]] if comps.index("square") > 0 else acc_after["clean"]
        )
        gap = before - acc_after["square"]
        tol_aa = max(float(tolerance), 1.0 / max(aa_std["num_examples"], 1))
        ok = gap <= tol_aa
        checks["square_not_stronger"] = _check(
            ok,
            "ok"
            if ok
            else f"Square broke {gap:.2%} of the examples that every white-box attack "
            "of AutoAttack missed: the gradients are unreliable (masked?)",
            source="autoattack",
            white_box_accuracy=before,
            square_accuracy=acc_after["square"],
        )
    else:
        # Square on the rows both PGD runs left robust: what it breaks there, white-box missed.
        white_rob = rob_at_eps & rob_4k
        white = float(white_rob.mean())
        num_classes = (results or {}).get("num_classes") or _num_classes(eng, xs)
        res = autoattack_driver.run_on_engine(
            eng,
            xs,
            ys,
            jax.random.fold_in(key, 7),
            eps=eps,
            norm=norm,
            components=("square",),
            n_queries=square_queries,
            clean=cs,
            num_classes=num_classes,
            robust=white_rob,
            index=idx,
            keep_adv=False,
        )
        sq = res["accuracy"]["square"]
        ok = sq >= white - tol
        checks["square_not_stronger"] = _check(
            ok,
            "ok"
            if ok
            else f"Square ({square_queries} queries) broke {white - sq:.2%} of the "
            f"examples that PGD-{steps} and PGD-{4 * steps} left robust (accuracy {white:.4f} -> "
            f"{sq:.4f}): the gradients are unreliable (masked?)",
            source="square_run",
            white_box_accuracy=white,
            square_accuracy=sq,
            queries=square_queries,
        )

    # No zero gradients on clean-correct examples.
    frac = zero_gradient_fraction(eng, xs, ys, np.flatnonzero(cs))
    checks["nonzero_gradients"] = _check(
        frac == 0.0,
        "ok"
        if frac == 0.0
        else f"{frac:.2%} of the clean-correct examples have an all-zero input gradient: "
        "gradient-based attacks cannot move them (non-differentiable or saturated layer?)",
        zero_gradient_fraction=frac,
    )

    messages = [f"{k}: {v['message']}" for k, v in checks.items() if not v["passed"]]
    return dict(passed=not messages, messages=messages, checks=checks, num_examples=n, tolerance=tol)


def _num_classes(eng, xs) -> int:
    _, k = eng.predict(xs[:1], progress=False)
    return k
