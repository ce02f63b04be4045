"""The AutoAttack driver: runs a sequence of AutoAttack components over host arrays on an ``Engine``.

Each component of a version (``autoattack.version_specs``) is one compiled stage
(``engine.Engine.stage`` of ``autoattack.component_program``); its (target rank, restart) stages
from ``autoattack.plan`` run one after the other on the rows still robust, with the key
``fold_in(key, autoattack.stage_seed(...))``. A row counts as broken only on a
verified adversarial example (``Engine.stage``), and stays broken.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

from ascl_jax.evaluation import autoattack as aa
from ascl_jax.evaluation import engine as engine_lib


def run_on_engine(
    eng: engine_lib.Engine,
    x,
    y,
    key,
    *,
    eps: float,
    norm: str = "Linf",
    version: str | None = None,
    components=None,
    n_iter: int | None = None,
    n_queries: int | None = None,
    n_targets: int | None = None,
    apgd_ce_restarts: int | None = None,
    target_restarts: int | None = None,
    square_restarts: int | None = None,
    fab_restarts: int | None = None,
    eot_iter: int | None = None,
    unroll: int | None = None,
    early_stop: bool = True,
    robust: np.ndarray | None = None,
    index: np.ndarray | None = None,
    keep_adv: bool = True,
    clean: np.ndarray | None = None,
    num_classes: int | None = None,
    specs=None,
) -> dict:
    """AutoAttack on host arrays with the stages of ``eng`` (result dict: ``run_autoattack``).

    ``version`` and ``components``: the version's list (``autoattack.version_specs``; None:
    'standard'), or with ``components`` given the 'custom' version of those components
    (``version`` must then be None or 'custom'). Budgets given as numbers replace the version's
    (``autoattack.override_specs``; ``apgd_ce_restarts`` applies to APGD-CE and APGD-DLR).
    ``clean`` (bool [N]) and ``num_classes``, when both given, skip the clean pass; ``keep_adv=False`` returns
    ``x_adv=None``. ``specs`` (``autoattack.ComponentSpec``s) replaces version and components.
    """
    norm = aa.check_norm(norm)
    x, y = engine_lib.check_inputs(x, y)
    eps = engine_lib.check_eps(eps, norm=norm, shape=x.shape[1:])
    n = x.shape[0]
    if specs is not None:
        specs = tuple(specs)
    elif components is not None:
        if version not in (None, "custom"):
            raise ValueError(f"components={components!r} are a 'custom' list; got version={version!r}")
        specs = aa.version_specs("custom", norm, attacks=tuple(components))
    else:
        specs = aa.version_specs("standard" if version is None else version, norm)
    specs = aa.override_specs(
        specs,
        n_iter=n_iter,
        n_queries=n_queries,
        n_targets=n_targets,
        apgd_ce_restarts=apgd_ce_restarts,
        target_restarts=target_restarts,
        square_restarts=square_restarts,
        fab_restarts=fab_restarts,
        eot_iter=eot_iter,
    )
    components = tuple(s.name for s in specs)
    index = np.arange(n) if index is None else np.asarray(index)
    if clean is None or num_classes is None:
        pred, num_classes = eng.predict(x, y=y, desc="clean")
        clean = pred == y
    aa.check_num_classes(components, num_classes)
    for s in specs:
        if s.name in ("apgd-t", "fab-t") and s.n_targets > num_classes - 1:
            warnings.warn(
                f"{s.name}: {s.n_targets} target classes asked, {num_classes - 1} possible with "
                f"{num_classes} classes; using {num_classes - 1}",
                stacklevel=2,
            )
    stages = aa.plan(specs, num_classes=num_classes)
    rob = clean.copy() if robust is None else (np.asarray(robust, bool) & clean)
    x_adv = x.copy() if keep_adv else None
    broken_by = np.full(n, -1, np.int32)
    acc = {"clean": float(clean.mean())}
    for ci, spec in enumerate(specs):
        comp = spec.name
        fn = eng.stage(
            ("aa", spec, norm),
            aa.component_program(spec, norm=norm, stochastic=eng.stochastic),
            unroll=unroll,
            early_stop=early_stop,
        )
        bar = eng.progress_bar(comp)
        for _, rank, restart in (st for st in stages if st[0] == ci):
            rows = np.flatnonzero(rob)
            if len(rows) == 0:
                break
            engine_lib.grow(bar, len(rows))
            k = jax.random.fold_in(key, aa.stage_seed(comp, rank, restart))
            targeted = comp in ("apgd-t", "fab-t")
            desc = comp + (f" target {rank - 1}/{min(spec.n_targets, num_classes - 1)}" if targeted else "")
            desc += f" restart {restart + 1}" if restart else ""
            fooled, xa = eng.run_stage(
                fn,
                x,
                y,
                index,
                rows,
                k,
                eps=eps,
                rank=rank,
                desc=desc,
                robust_count=int(rob.sum()),
                total=n,
                keep_adv=keep_adv,
                bar=bar,
            )
            hit = rows[fooled]
            rob[hit] = False
            broken_by[hit] = ci
            if keep_adv:
                x_adv[hit] = xa[fooled]
        if bar is not None:
            bar.close()
        acc[comp] = float(rob.mean())
    return dict(
        clean=clean,
        robust=rob,
        x_adv=x_adv,
        broken_by=broken_by,
        components=components,
        specs=specs,
        accuracy=acc,
        num_classes=num_classes,
        norm=norm,
        eps=eps,
    )


def run_autoattack(
    logits_fn,
    x,
    y,
    key: jax.Array,
    *,
    eps: float,
    norm: str = "Linf",
    version: str | None = None,
    components=None,
    params=None,
    batch_size: int = 128,
    mesh=None,
    n_iter: int | None = None,
    n_queries: int | None = None,
    n_targets: int | None = None,
    apgd_ce_restarts: int | None = None,
    target_restarts: int | None = None,
    unroll: int | None = None,
    early_stop: bool = True,
    progress: bool = True,
    robust: np.ndarray | None = None,
    index: np.ndarray | None = None,
) -> dict:
    """AutoAttack on host arrays, batched and sharded over ``mesh`` ('data' axis).

    Args:
      logits_fn: ``x -> logits`` or, with ``params``, ``(params, x) -> logits``.
      x: images [N, H, W, C] in [0, 1] (numpy or array); y: labels [N].
      key: typed PRNG key (``jax.random.key(seed)``).
      norm: 'Linf', 'L2' or 'L1'. version: 'standard' (also None), 'plus' or 'rand'
        (``autoattack``'s module docstring), or pass ``components`` (COMPONENTS, in order) for a
        'custom' list with the reference's per-component defaults. n_iter ... target_restarts:
        budgets replacing the version's (None keeps them).
      robust: optional bool [N] start mask (default: the clean-correct rows).
      index: global example indices [N] used for the per-example randomness (default arange(N)).
    Returns:
      dict with 'clean' (bool [N]), 'robust' (bool [N], final), 'x_adv' ([N, ...] numpy: adversarial
      examples for broken rows, x elsewhere), 'broken_by' (int [N]: position in ``components`` of the
      component that broke the row, -1 for robust or clean-misclassified rows), 'components',
      'specs' (their budgets), 'accuracy' ({'clean': acc, component: robust accuracy after it
      (cumulative)}), 'num_classes', 'norm', 'eps'.

    Example (the classifier of :func:`ascl_jax.evaluation.evaluate`'s example, in the
    ``(params, x) -> logits`` form; two components with small budgets)::

      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from ascl_jax import evaluation
      >>> def logits_fn(scale, x):  # [B, H, W, C] -> [B, 2]: class 1 iff the mean pixel exceeds 0.5
      ...     m = x.mean(axis=(1, 2, 3))
      ...     return scale * jnp.stack([0.5 - m, m - 0.5], axis=-1)
      >>> means = np.array([0.1, 0.45, 0.55, 0.9], np.float32)  # mean pixel of each image
      >>> images = np.ones((4, 2, 2, 1), np.float32) * means[:, None, None, None]  # [N, 2, 2, 1]
      >>> labels = np.array([0, 0, 1, 1])  # all correct; the middle two lie within 0.1 of the boundary
      >>> out = evaluation.run_autoattack(
      ...     logits_fn, images, labels, jax.random.key(0), params=jnp.float32(10), eps=0.1,
      ...     components=("apgd-ce", "square"), n_iter=10, n_queries=20, batch_size=4, progress=False,
      ... )
      >>> out["accuracy"], out["robust"].tolist(), out["broken_by"].tolist()
      ({'clean': 1.0, 'apgd-ce': 0.5, 'square': 0.5}, [True, False, False, True], [-1, 0, 0, -1])
    """
    eng = engine_lib.get_engine(
        logits_fn, params=params, batch_size=batch_size, mesh=mesh, progress=progress, unroll=unroll
    )
    return run_on_engine(
        eng,
        x,
        y,
        key,
        eps=eps,
        norm=norm,
        version=version,
        components=components,
        n_iter=n_iter,
        n_queries=n_queries,
        n_targets=n_targets,
        apgd_ce_restarts=apgd_ce_restarts,
        target_restarts=target_restarts,
        unroll=unroll,
        early_stop=early_stop,
        robust=robust,
        index=index,
    )
