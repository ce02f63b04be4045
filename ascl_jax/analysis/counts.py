"""Mean positives / negatives per anchor over training, natural vs adversarial (ASCL Fig. 4).

:func:`selection_counts_over_training` reads the counts the ASCL train step logs (SPEC §1.2 "Counts")
from the training metrics.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ascl_jax.analysis.records import PathLike, lookup, read_jsonl, resolve_metrics_file, to_float

# Per-anchor selection counts logged by the ASCL train step (SPEC §1.2 "Counts"), plus the totals.
COUNT_KEYS = (
    "num_positives_nat",
    "num_positives_adv",
    "num_negatives_nat",
    "num_negatives_adv",
    "num_positives",
    "num_negatives",
)


def selection_counts_over_training(
    metrics_history: PathLike | Iterable[Mapping[str, Any]],
) -> dict[str, np.ndarray]:
    """Mean positives / negatives per anchor over training, natural vs adversarial (ASCL Fig. 4).

    Args:
      metrics_history: the training metrics, either an iterable of dicts or the path of the JSONL file
        the training loop writes (one JSON object a line, e.g. ``{"step": 100, "num_positives_nat": 5.1,
        "num_positives_adv": 6.2, "num_negatives_nat": 7.0, "num_negatives_adv": 7.3, ...}``), or a
        directory holding ``metrics.jsonl`` (or exactly one ``*.jsonl``).

    Rules:
      * a key is read as ``name`` or, failing that, as any key ending in ``'/name'`` (``'train/name'``);
      * records without an integer-valued ``step`` or without any of :data:`COUNT_KEYS` are skipped
        (e.g. evaluation lines); unparsable JSONL lines are skipped;
      * a missing count is NaN in its array;
      * the totals ``num_positives`` / ``num_negatives`` are read when logged, else they are
        the mean over all anchors, ``(nat + adv) / 2`` (natural and adversarial anchors are equally
        many; NaN when either part is missing);
      * records are sorted by step; when a step appears more than once (a run resumed from an earlier
        checkpoint re-logs steps) the record that comes last wins.

    Returns:
      dict of numpy arrays of equal length T: ``step`` (int64) and each name in :data:`COUNT_KEYS`
      (float64). T = 0 when nothing was logged.
    """
    if isinstance(metrics_history, (str, os.PathLike)):
        records: Iterable[Mapping[str, Any]] = read_jsonl(resolve_metrics_file(metrics_history))
    else:
        records = metrics_history
    by_step: dict[int, dict[str, float]] = {}
    for rec in records:
        if not isinstance(rec, Mapping):
            continue
        step = lookup(rec, "step")
        try:
            step = int(step)
        except (TypeError, ValueError):
            continue
        values = {k: to_float(lookup(rec, k)) for k in COUNT_KEYS}
        if all(math.isnan(v) for v in values.values()):
            continue
        for total, nat, adv in (
            ("num_positives", "num_positives_nat", "num_positives_adv"),
            ("num_negatives", "num_negatives_nat", "num_negatives_adv"),
        ):
            if math.isnan(values[total]):
                values[total] = 0.5 * (values[nat] + values[adv])  # equal numbers of nat / adv anchors
        by_step.pop(step, None)
        by_step[step] = values
    steps = sorted(by_step)
    out = {"step": np.asarray(steps, np.int64)}
    for k in COUNT_KEYS:
        out[k] = np.asarray([by_step[s][k] for s in steps], np.float64)
    return out
