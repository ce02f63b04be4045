"""``evaluate``: clean accuracy, PGD-k with restarts, multi-targeted PGD and AutoAttack, with the
worst case per example.

Settings of the papers (SPEC 1.6, 3.6; ASCL section 4.1): eps 8/255, step 2/255, PGD-250 / PGD-20
with a uniform random start and the model in eval mode, multi-targeted PGD, and AutoAttack
'standard' on the first 1000 test images (CIFAR-100: eps 0.01, step 0.001).

Every attack starts from the clean-correct examples (a misclassified example is not robust).
Restarts of PGD, the target classes of mPGD and the components of AutoAttack run one after the
other on the rows still robust (compacted on the host between them; see ``engine``). Per-example
results are kept so that the ``overall`` robust accuracy is the worst case over all attacks run,
per example. Every process must pass the same full ``images``/``labels`` arrays.
"""

from __future__ import annotations

import re
import time
import zlib

import jax
import numpy as np

from ascl_jax.evaluation import autoattack as aa
from ascl_jax.evaluation import autoattack_driver
from ascl_jax.evaluation import engine as engine_lib
from ascl_jax.evaluation import pgd as pgd_lib
from ascl_jax.evaluation import sanity as sanity_lib

DEFAULT_ATTACKS = ("clean", "pgd", "mpgd", "autoattack")
ATTACK_HELP = (
    "'clean', 'pgd' (pgd_steps steps, pgd_restarts restarts), 'pgd<k>' e.g. 'pgd20', "
    "'pgd<k>r<R>' e.g. 'pgd250r5', 'mpgd' (mpgd_steps), 'mpgd<k>', 'autoattack' "
    "(version), 'autoattack-<version>' with a version of "
    f"{list(aa.VERSIONS)}, or one AutoAttack component {list(aa.COMPONENTS)}"
)
AA_OPTIONS = (
    "n_iter",
    "n_queries",
    "n_targets",
    "apgd_ce_restarts",
    "target_restarts",
    "square_restarts",
    "fab_restarts",
    "eot_iter",
    "unroll",
    "early_stop",
)
_PGD_RE = re.compile(r"^pgd(\d+)(?:r(\d+))?$")
_MPGD_RE = re.compile(r"^mpgd(\d+)$")


def parse_attack(
    name: str, *, pgd_steps: int = 20, pgd_restarts: int = 1, mpgd_steps: int = 20, version: str = "standard"
) -> tuple[str, str, dict]:
    """An attack name -> (kind, canonical result key, options). Unknown names raise ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"attack names are strings; got {name!r}. Allowed: {ATTACK_HELP}")
    n = name.strip().lower()
    if n == "clean":
        return "clean", "clean", {}
    if n == "pgd":
        n = f"pgd{pgd_steps}" + (f"r{pgd_restarts}" if pgd_restarts != 1 else "")
    m = _PGD_RE.match(n)
    if m:
        steps, restarts = int(m.group(1)), int(m.group(2) or 1)
        if steps < 1 or restarts < 1:
            raise ValueError(f"attack {name!r}: steps and restarts must be >= 1")
        return "pgd", n, dict(steps=steps, restarts=restarts)
    if n == "mpgd":
        n = f"mpgd{mpgd_steps}"
    m = _MPGD_RE.match(n)
    if m:
        steps = int(m.group(1))
        if steps < 1:
            raise ValueError(f"attack {name!r}: steps must be >= 1")
        return "mpgd", "mpgd" if steps == mpgd_steps else n, dict(steps=steps)
    if n in ("autoattack", "aa"):
        n = f"autoattack-{version}"
    if n.startswith("autoattack-"):
        v = n[len("autoattack-") :]
        if v not in aa.VERSIONS:
            raise ValueError(
                f"unknown AutoAttack version {v!r} in {name!r}; choose one of {list(aa.VERSIONS)}"
            )
        # Only AutoAttack-standard is reported as plain 'autoattack'.
        key = "autoattack" if v == version == "standard" else n
        return "autoattack", key, dict(version=v)
    if n in aa.COMPONENTS:
        return "component", n, dict(component=n)
    raise ValueError(f"unknown attack {name!r}; allowed: {ATTACK_HELP}")


def _key_for(base, name: str):
    return jax.random.fold_in(base, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def evaluate(
    logits_fn,
    images,
    labels,
    *,
    params=None,
    attacks=DEFAULT_ATTACKS,
    eps: float = 8 / 255,
    step_size: float | None = 2 / 255,
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    mpgd_steps: int = 20,
    mpgd_targets: int | None = None,
    version: str = "standard",
    autoattack_attacks=None,
    norm: str = "Linf",
    batch_size: int = 128,
    num_examples: int | None = None,
    autoattack_examples: int | None = None,
    seed: int = 0,
    mesh=None,
    progress: bool = True,
    sanity: bool = True,
    sanity_examples: int = 256,
    sanity_steps: int = 10,
    sanity_square_queries: int = 1000,
    sanity_tolerance: float = 0.01,
    eps_sweep=None,
    aa_options: dict | None = None,
    keep_adv: bool = False,
    unroll: int | None = None,
) -> dict:
    """Robust accuracy of a classifier under attacks of one threat model; worst case per example.

    Args:
      logits_fn: ``x -> logits`` (or ``(params, x) -> logits`` when ``params`` is given); x [B, H, W, C]
        in [0, 1], logits [B, K]; rows must be independent (eval-mode BN).
      images: [N, H, W, C] in [0, 1]; labels: [N] int.
      attacks: names, see ``ATTACK_HELP`` (unknown -> ValueError). 'clean' is always computed.
      eps: radius under ``norm`` ('Linf': (0, 1]; 'L2' / 'L1': up to the box's diameter).
        step_size: PGD / mPGD step (default eps / 4): the signed-gradient step for L-inf, the
        length of the normalised-gradient step for L2 / L1.
      norm: the threat model, 'Linf', 'L2' or 'L1' (every attack; mPGD and the sanity checks'
        PGD runs included).
      pgd_steps, pgd_restarts: for 'pgd'. mpgd_steps, mpgd_targets: steps per target and number of
        target classes (default all K - 1) for 'mpgd'.
      version: AutoAttack version for 'autoattack' ('standard', 'plus', 'rand' or 'custom'; see
        ``autoattack``). autoattack_attacks: the components of 'custom'. A single component
        (e.g. 'apgd-ce') runs with its budget in ``version`` (the 'custom' defaults if absent).
      batch_size: global batch (rounded up to a multiple of the mesh size).
      num_examples: evaluate the first n examples only (None = all).
      autoattack_examples: AutoAttack (and its components) on the first n of those only (the papers:
        1000); None = all.
      seed: everything random derives from ``jax.random.key(seed)`` and the example index.
      mesh: 1-D ('data',) mesh (default: all devices).
      sanity: run the gradient-masking checks (``sanity.run_checks``) on the first ``sanity_examples``.
      eps_sweep: radii for the sanity sweep (default eps x (0, 1/4, 1/2, 1, 2), capped at 1).
      aa_options: overrides for AutoAttack budgets, e.g. ``dict(n_iter=10, n_queries=100)`` in tests
        (keys: ``AA_OPTIONS``).
      keep_adv: also return the adversarial images of each attack (memory!).
      unroll: iterations per body of the attacks' compiled while loops (default 1; see
        ``engine.Engine``).
    Returns:
      dict: 'clean_accuracy', 'robust_accuracy' {attack: acc}, 'num_examples' {attack: n},
      'overall' {'robust_accuracy', 'num_examples', 'attacks'}, 'autoattack' details (accuracy after each
      component), 'sanity' (flags + messages), 'timing_s', settings, and 'per_example' (numpy arrays:
      index, label, prediction, clean_correct, robust_<attack> and robust_overall as int8 with
      -1 = not evaluated, autoattack_broken_by = position in the component list of the component that
      broke the example, -1 = not broken by AutoAttack (robust or misclassified), -2 = not evaluated).

    Example (a linear classifier whose robust accuracy at eps = 0.1 is known: 2 of the 4 images)::

      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from ascl_jax import evaluation
      >>> def logits_fn(x):  # [B, H, W, C] -> [B, 2]: class 1 iff the mean pixel exceeds 0.5
      ...     m = x.mean(axis=(1, 2, 3))
      ...     return 10 * jnp.stack([0.5 - m, m - 0.5], axis=-1)
      >>> means = np.array([0.1, 0.45, 0.55, 0.9], np.float32)  # mean pixel of each image
      >>> images = np.ones((4, 2, 2, 1), np.float32) * means[:, None, None, None]  # [N, 2, 2, 1]
      >>> labels = np.array([0, 0, 1, 1])  # all correct; the middle two lie within 0.1 of the boundary
      >>> res = evaluation.evaluate(
      ...     logits_fn, images, labels, attacks=("clean", "pgd"), eps=0.1, step_size=0.05, pgd_steps=5,
      ...     batch_size=4, sanity=False, progress=False,
      ... )
      >>> res["clean_accuracy"], res["robust_accuracy"], res["per_example"]["robust_pgd5"].tolist()
      (1.0, {'pgd5': 0.5}, [1, 0, 0, 1])
    """
    norm = aa.check_norm(norm)
    eps = engine_lib.check_eps(eps, norm=norm, shape=np.shape(images)[1:])
    step_size = eps / 4 if step_size is None else float(step_size)
    if not step_size > 0:
        raise ValueError(f"step_size={step_size!r} must be > 0")
    if isinstance(attacks, str):
        attacks = (attacks,)
    parsed = [
        parse_attack(
            a, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, mpgd_steps=mpgd_steps, version=version
        )
        for a in attacks
    ]
    if not parsed:
        raise ValueError(f"no attacks given; allowed: {ATTACK_HELP}")
    aa_specs = ()
    if any(p[0] in ("autoattack", "component") for p in parsed):
        aa_specs = aa.version_specs(
            version, norm, attacks=None if autoattack_attacks is None else tuple(autoattack_attacks)
        )
    x, y = engine_lib.check_inputs(images, labels)
    if num_examples is not None and int(num_examples) > 0:
        x, y = x[: int(num_examples)], y[: int(num_examples)]
    n = x.shape[0]
    n_aa = (
        n
        if autoattack_examples is None or int(autoattack_examples) <= 0
        else min(n, int(autoattack_examples))
    )
    aa_opts = dict(aa_options or {})
    unknown = set(aa_opts) - set(AA_OPTIONS)
    if unknown:
        raise ValueError(f"unknown aa_options {sorted(unknown)}; allowed: {list(AA_OPTIONS)}")
    budgets = {k: aa_opts[k] for k in AA_OPTIONS[:8] if k in aa_opts}
    run_opts = {k: aa_opts[k] for k in ("unroll", "early_stop") if k in aa_opts}

    eng = engine_lib.get_engine(
        logits_fn, params=params, batch_size=batch_size, mesh=mesh, progress=progress, unroll=unroll
    )
    base_key = jax.random.key(seed)
    index = np.arange(n)
    timing = {}

    t0 = time.perf_counter()
    pred, num_classes = eng.predict(x, y=y, desc="clean")
    clean = pred == y
    timing["clean"] = time.perf_counter() - t0
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for a model with {num_classes} "
            f"logits; got [{int(y.min())}, {int(y.max())}]"
        )

    robust_acc, counts, per_example = {}, {}, {}
    adv_images = {}
    aa_details = {}
    covered = {}
    for kind, key_name, opts in parsed:
        if kind == "clean" or key_name in robust_acc:
            continue
        t0 = time.perf_counter()
        # AutoAttack and its single components share one key, and each stage folds in its own
        # fixed seed: a component run alone repeats, row for row, what it does inside AutoAttack,
        # so AutoAttack's robust accuracy is never above a component's.
        k = _key_for(base_key, "autoattack" if kind in ("autoattack", "component") else key_name)
        if kind in ("pgd", "mpgd"):
            shared = dict(
                eps=eps, step_size=step_size, steps=opts["steps"], name=key_name, keep_adv=keep_adv, norm=norm
            )
            if kind == "pgd":
                rob, xa = pgd_lib.run_pgd(eng, x, y, index, clean, k, restarts=opts["restarts"], **shared)
            else:
                rob, xa = pgd_lib.run_mpgd(
                    eng, x, y, index, clean, k, num_classes=num_classes, num_targets=mpgd_targets, **shared
                )
            m = n
        else:
            m = n_aa
            if kind == "autoattack":
                v = opts["version"]
                specs = aa_specs if v == version else aa.version_specs(v, norm)
            else:  # the component's budget within the run's version, as it runs inside AutoAttack
                c = opts["component"]
                specs = [s for s in aa_specs if s.name == c] or aa.version_specs("custom", norm, attacks=(c,))
            res = autoattack_driver.run_on_engine(
                eng,
                x[:m],
                y[:m],
                k,
                eps=eps,
                norm=norm,
                specs=aa.override_specs(specs, **budgets),
                clean=clean[:m],
                num_classes=num_classes,
                index=index[:m],
                keep_adv=keep_adv,
                **run_opts,
            )
            rob, xa = res["robust"], res["x_adv"]
            if kind == "autoattack":
                aa_details[key_name] = dict(
                    version=opts["version"],
                    norm=norm,
                    components=list(res["components"]),
                    accuracy_after=res["accuracy"],
                    num_examples=m,
                )
                broken = np.full(n, -2, np.int8)  # -2: not evaluated (beyond autoattack_examples)
                broken[:m] = res["broken_by"]
                per_example[f"{key_name}_broken_by"] = broken
        timing[key_name] = time.perf_counter() - t0
        robust_acc[key_name] = float(rob.mean())
        counts[key_name] = m
        covered[key_name] = rob
        if keep_adv:
            adv_images[key_name] = xa

    # Worst case per example over every attack, on the prefix that every attack covered.
    n_common = min([n] + [len(v) for v in covered.values()])
    overall = clean[:n_common].copy()
    for v in covered.values():
        overall &= v[:n_common]
    results = dict(
        eps=eps,
        norm=norm,
        step_size=step_size,
        seed=int(seed),
        num_classes=int(num_classes),
        attacks=[p[1] for p in parsed],
        num_evaluated=n,
        clean_accuracy=float(clean.mean()),
        robust_accuracy=robust_acc,
        num_examples=counts,
        overall=dict(
            robust_accuracy=float(overall.mean()) if covered else float(clean.mean()),
            num_examples=int(n_common),
            attacks=sorted(covered),
        ),
        settings=dict(
            pgd_steps=pgd_steps,
            pgd_restarts=pgd_restarts,
            mpgd_steps=mpgd_steps,
            mpgd_targets=mpgd_targets,
            version=version,
            autoattack_attacks=None if autoattack_attacks is None else list(autoattack_attacks),
            norm=norm,
            batch_size=eng.batch_size,
            devices=int(eng.mesh.devices.size),
            aa_options=aa_opts,
            unroll=eng.unroll,
            autoattack_examples=n_aa,
        ),
        timing_s=timing,
    )
    if aa_details:
        results["autoattack"] = aa_details
    per_example.update(index=index, label=y, prediction=pred, clean_correct=clean)
    for name, v in covered.items():
        flags = np.full(n, -1, np.int8)
        flags[: len(v)] = v
        per_example[f"robust_{name}"] = flags
    flags = np.full(n, -1, np.int8)
    flags[:n_common] = overall
    per_example["robust_overall"] = flags
    results["per_example"] = per_example
    if keep_adv:
        results["adversarial_images"] = adv_images

    if sanity and norm not in pgd_lib.PGD_NORMS:
        # The checks are PGD runs (L-inf / L2); for L1 they are not run, and the record says so.
        results["sanity"] = dict(
            passed=None, messages=[f"not run: the sanity checks use PGD, which has no {norm} form"], checks={}
        )
    elif sanity:
        t0 = time.perf_counter()
        results["sanity"] = sanity_lib.run_checks(
            eng,
            x,
            y,
            clean,
            _key_for(base_key, "sanity"),
            eps=eps,
            step_size=step_size,
            n_examples=sanity_examples,
            steps=sanity_steps,
            square_queries=sanity_square_queries,
            tolerance=sanity_tolerance,
            eps_sweep=eps_sweep,
            results=results,
            norm=norm,
        )
        timing["sanity"] = time.perf_counter() - t0
    return results
