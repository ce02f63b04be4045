"""The labelled / unlabelled partition of the training split (ACL semi-supervised, SPEC §3.7).

``label_split`` picks ``round(label_fraction * num_train)`` labelled examples, stratified by class;
the training stream (:mod:`ascl_jax.data.pipeline`) can then serve either subset (``subset=
'labelled'`` / ``'unlabelled'``), keyed by the example ``index`` (position in ``train_split``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ascl_jax import config as config_lib
from ascl_jax.data import sources

SUBSETS = tuple(s or None for s in config_lib.TRAIN_SUBSETS)  # (None, 'labelled', 'unlabelled')
LABEL_SPLIT_SEED = 0


def num_labelled(r: sources.DataSpec) -> int:
    """Size of the labelled subset: ``max(1, round(label_fraction * num_train))``."""
    return max(1, int(round(r.label_fraction * r.num_train)))


def pool_size(r: sources.DataSpec, subset: str | None) -> int:
    """Examples of the training pool: ``num_train`` (subset None) or the subset's size."""
    if subset not in SUBSETS:
        raise ValueError(f"subset={subset!r}; allowed: {SUBSETS}")
    if subset is None:
        return r.num_train
    if r.label_fraction is None:
        raise ValueError(f"subset={subset!r} needs data.label_fraction (e.g. 0.01 or 0.1)")
    k = num_labelled(r)
    return k if subset == "labelled" else r.num_train - k


def label_split(data_cfg: Any, *, seed: int = LABEL_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic labelled / unlabelled partition of ``train_split`` (ACL semi-supervised, §3.7).

    ``round(label_fraction * num_train)`` examples (450 / 4500 of the 45k split for 1% / 10%),
    stratified by class (quotas by largest remainder), chosen with ``np.random.default_rng(seed)``.
    Depends only on the data, the config and ``seed`` (not on the process count).

    Returns:
      (labelled, unlabelled): sorted int32 example indices (positions in ``train_split``, the
      ``index`` field of the batches), disjoint, together ``arange(num_train)``.
    """
    r = sources.resolve(data_cfg)
    if r.label_fraction is None:
        raise ValueError("label_split needs data.label_fraction (e.g. 0.01 or 0.1)")
    labels = sources.load_labels(r)
    if len(labels) < r.num_train:
        raise ValueError(
            f"{r.name} {r.train_split!r} has {len(labels)} examples, data.num_train={r.num_train}"
        )
    labelled = sources.stratified_choice(labels, num_labelled(r), np.random.default_rng(seed))
    mask = np.zeros(r.num_train, bool)
    mask[labelled] = True
    return labelled.astype(np.int32), np.flatnonzero(~mask).astype(np.int32)
