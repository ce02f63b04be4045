"""The files of a run's workdir: one writer for each, one schema for report.json.

  config.json       the run's config (`check_or_write_config`, `load_config`)
  checkpoints/      orbax checkpoints (`ascl_jax.checkpointing`)
  metrics.jsonl     one line per logged step: {'step': int, <mean train metrics>, 'learning_rate'}
                    (`append_metrics`)
  report.json       the run's summary, keys of `Report` (`write_report`, `update_report`, `read_report`)
  eval.json         `summary` of `evaluation.evaluate`'s result (`write_eval_json`)
  per_example.npz   its per-example arrays (`write_eval_json`, `load_per_example`, `compare_per_example`)
  plots/            the analysis' PNGs (`ascl_jax.analysis`)
  events.out.tfevents.*  TensorBoard scalars (`ascl_jax.storage.ScalarWriter`)

A workdir is a local directory or a URL (gs://bucket/dir, s3://bucket/dir); every file goes through
`ascl_jax.storage` (etils.epath), a URL is never turned into a local path.

Rules every writer here keeps: only process 0 writes; a file is written whole
(`storage.write_bytes`: a temporary file then `os.replace` locally, one object upload on object
storage); JSON with `indent=2, sort_keys=True`; a file a new run replaces is archived, not lost:
`write_report` keeps the previous report as `report.<local %Y%m%d-%H%M%S>.json`,
`write_eval_json` the previous eval.json and per_example.npz as `eval.<UTC>.json` /
`per_example.<UTC>.npz` (`on_exists='archive'`; 'error' refuses, 'overwrite' replaces).

Restarting with the same workdir and config resumes from the latest checkpoint; a workdir that holds
a run of a different config is refused (`WorkdirError`). Fields that do not change the trained model
(`RESUMABLE_FIELDS`: logging, progress bar, evaluation and analysis settings, checkpoint cadence) may
differ on resume.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, TypedDict

import jax
import ml_collections
import numpy as np

from ascl_jax import storage

log = logging.getLogger("ascl_jax")

CONFIG_JSON = "config.json"
METRICS_JSONL = "metrics.jsonl"
REPORT_JSON = "report.json"
EVAL_JSON = "eval.json"
PER_EXAMPLE = "per_example.npz"
ON_EXISTS = ("archive", "error", "overwrite")

# Fields that may change between a run and its resumption: they do not change the trained state.
RESUMABLE_FIELDS = (
    "progress_bar",
    "log_every_steps",
    "checkpoint_every_steps",
    "max_checkpoints",
    "eval",
    "analysis",
    "data.data_dir",
    "data.eval_batch_size",
    "name",
)


class WorkdirError(RuntimeError):
    """The workdir holds something this run must not overwrite or cannot read."""


class Report(TypedDict, total=False):
    """report.json. Accuracies are fractions in [0, 1]; absent keys were not computed.

    Written by the train loop (`ascl_jax.train.loop`), its evaluation (`ascl_jax.train.run_eval`)
    and the semi-supervised routine (`ascl_jax.train.semisup`)."""

    # the run
    config: str  # config.name
    method: str  # config.method
    dataset: str  # config.data.name
    arch: str  # config.model.arch
    steps: int  # total train steps
    train_images_per_second: float | None  # after the first (compiling) step
    final_train_metrics: dict[str, float]  # the last logged window's mean metrics
    # ASCL's selection counts per anchor (ASCL Fig. 4), from final_train_metrics
    num_positives_nat: float
    num_positives_adv: float
    num_negatives_nat: float
    num_negatives_adv: float
    num_positives: float  # (nat + adv) / 2
    num_negatives: float  # (nat + adv) / 2
    # evaluation on the test split (config.eval)
    clean_accuracy: float
    robust_accuracy: dict[str, float]  # {attack name: accuracy}
    overall_robust_accuracy: float  # robust to every attack run
    eval_eps: float
    sanity: dict | None  # gradient-masking checks
    eval: dict  # = eval.json
    corruptions: dict  # CIFAR-10-C: {'mean', 'mean_per_corruption', 'mean_per_severity', ...}
    # checkpoint selection (ascl_jax.train.selection; eval.json holds the same three keys)
    checkpoint: str  # the headline checkpoint, config.eval.checkpoint: 'last' or 'best'
    # {'last'|'best': {step, epoch, clean_accuracy, robust_accuracy, overall_robust_accuracy}}
    checkpoints: dict
    # the rule (metric, split, examples, every_epochs, every_steps, bn_branch, attack) and the best
    # (best_step, best_epoch, best_value)
    selection: dict
    # analysis (config.analysis)
    analysis: dict  # {'plots', 'r_div', 'skipped', 'errors'}
    r_div: dict | None  # {'intra', 'inter', 'ratio', ...}
    wall_seconds: float  # the whole invocation: train + evaluation
    # semi_supervised: the student's report plus
    teacher_clean_accuracy: float | None
    stages: dict[str, str]  # stage name -> its sub-workdir
    # only in the report returned by a run stopped part way (never written)
    stopped_at_step: int


REPORT_KEYS = frozenset(Report.__annotations__)


def _is_writer() -> bool:
    return jax.process_index() == 0


def _join(workdir, name: str) -> str:
    return str(storage.path(workdir) / name)


def _exists(path: str) -> bool:
    return storage.path(path).exists()


def _write_json(path: str, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n"
    storage.write_bytes(path, text.encode("utf-8"))  # whole: readers see all of it or nothing


def _read_json(path: str):
    return json.loads(storage.path(path).read_text())


# --------------------------------------------------------------------------------------------
# config.json


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def check_or_write_config(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Writes workdir/config.json, or checks the existing one. Returns True when resuming.

    Raises WorkdirError when the workdir holds a run of a different config (listing the fields
    that differ) so that nothing already written is lost, and `storage.StorageError` when a URL
    workdir cannot be written (`storage.check_workdir`).
    """
    storage.check_workdir(workdir)
    path = _join(workdir, CONFIG_JSON)
    new = config_to_dict(config)
    if _exists(path):
        try:
            old = _read_json(path)
        except (OSError, json.JSONDecodeError) as e:
            raise WorkdirError(f"{path} exists but cannot be read ({e}); use a fresh --workdir") from e
        fo, fn = _flatten(old), _flatten(new)
        diff = sorted(
            k
            for k in set(fo) | set(fn)
            if _normalise(fo.get(k)) != _normalise(fn.get(k))
            and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_FIELDS)
        )
        if diff:
            details = "; ".join(f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}" for k in diff[:8])
            raise WorkdirError(
                f"--workdir {workdir} holds a run of a different config ({details}). "
                "Use a fresh --workdir, or the same config to resume; nothing was overwritten."
            )
        return True
    if _is_writer():
        storage.makedirs(workdir)
        _write_json(path, new)
    return False


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """workdir/config.json -> ConfigDict (JSON lists read back as tuples)."""
    path = _join(workdir, CONFIG_JSON)
    if not _exists(path):
        raise WorkdirError(f"{workdir} holds no run: {path} is missing")
    d = _read_json(path)

    def tuples(v):
        if isinstance(v, dict):
            return {k: tuples(x) for k, x in v.items()}
        return tuple(v) if isinstance(v, list) else v

    return ml_collections.ConfigDict(tuples(d))


# --------------------------------------------------------------------------------------------
# metrics.jsonl


def append_metrics(workdir: str, step: int, metrics: Mapping[str, float]) -> None:
    """Appends {'step': step, **metrics} as one line to workdir/metrics.jsonl."""
    if _is_writer():
        storage.makedirs(workdir)
        storage.append_text(_join(workdir, METRICS_JSONL), json.dumps(dict(step=step, **metrics)) + "\n")


# --------------------------------------------------------------------------------------------
# report.json


def read_report(workdir: str) -> dict:
    """workdir/report.json, or {} when it is missing or cannot be parsed."""
    path = _join(workdir, REPORT_JSON)
    if not _exists(path):
        return {}
    try:
        report = _read_json(path)
    except (OSError, json.JSONDecodeError):
        log.warning("%s cannot be read; it is treated as empty", path)
        return {}
    if not isinstance(report, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return report


def _check_keys(report: Mapping[str, Any]) -> None:
    unknown = sorted(set(report) - REPORT_KEYS)
    if unknown:
        raise KeyError(f"report keys {unknown} are not in the report.json schema (ascl_jax.workdir.Report)")


def _archive_name(path: str) -> str:
    stem, ext = os.path.splitext(path)
    backup = f"{stem}.{time.strftime('%Y%m%d-%H%M%S')}{ext}"
    n = 1
    while _exists(backup):
        backup = f"{stem}.{time.strftime('%Y%m%d-%H%M%S')}-{n}{ext}"
        n += 1
    return backup


def write_report(workdir: str, report: Mapping[str, Any]) -> str | None:
    """Replaces workdir/report.json with `report`; a previous report is first kept as
    report.<timestamp>.json. Returns that backup's path, if any."""
    _check_keys(report)
    if not _is_writer():
        return None
    path = _join(workdir, REPORT_JSON)
    backup = None
    if _exists(path):
        backup = _archive_name(path)
        storage.move(path, backup)
        log.info("the previous report.json was kept as %s", backup)
    _write_json(path, dict(report))
    return backup


def update_report(workdir: str, updates: Mapping[str, Any]) -> dict:
    """Sets the keys of `updates` in workdir/report.json, keeping every other key. Returns the
    merged report (on processes other than 0, which do not read or write: `updates`)."""
    _check_keys(updates)
    if not _is_writer():
        return dict(updates)
    report = read_report(workdir)
    report.update(updates)
    storage.makedirs(workdir)
    _write_json(_join(workdir, REPORT_JSON), report)
    return report


# --------------------------------------------------------------------------------------------
# eval.json and per_example.npz


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(w) for w in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def summary(results: dict) -> dict:
    """The JSON-serialisable part of `evaluate`'s result (drops per-example arrays and images)."""
    return _jsonable({k: v for k, v in results.items() if k not in ("per_example", "adversarial_images")})


def _utc_timestamp(workdir: str) -> str:
    ts = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out, i = ts, 1
    while _exists(_join(workdir, f"eval.{out}.json")):
        out, i = f"{ts}-{i}", i + 1
    return out


def write_eval_json(
    workdir: str, results: dict, per_example: dict | None = None, *, on_exists: str = "archive"
) -> dict:
    """Writes eval.json + per_example.npz into `workdir` and sets report.json's 'eval' to the summary.

    Args:
      results: the dict returned by `evaluate`.
      per_example: arrays to save (default `results['per_example']`): index, label, prediction,
        clean_correct, robust_<attack> (int8, -1 = not evaluated), robust_overall, ...
      on_exists: 'archive' | 'error' | 'overwrite' for an existing eval.json (module docstring).
    Returns:
      {'eval_json': path, 'per_example': path or None, 'report_json': path, 'archived': [paths]}.
    """
    if on_exists not in ON_EXISTS:
        raise ValueError(f"on_exists={on_exists!r}; choose one of {list(ON_EXISTS)}")
    if not workdir:
        raise ValueError("workdir must be a directory path")
    per_example = results.get("per_example") if per_example is None else per_example
    eval_path = _join(workdir, EVAL_JSON)
    npz_path = _join(workdir, PER_EXAMPLE)
    out = dict(
        eval_json=eval_path,
        per_example=npz_path if per_example else None,
        report_json=_join(workdir, REPORT_JSON),
        archived=[],
    )
    if not _is_writer():
        return out
    storage.makedirs(workdir)
    if _exists(eval_path):
        if on_exists == "error":
            raise FileExistsError(
                f"{eval_path} exists; pass on_exists='archive' to keep it as "
                "eval.<timestamp>.json or on_exists='overwrite' to replace it"
            )
        if on_exists == "archive":
            ts = _utc_timestamp(workdir)
            dst = _join(workdir, f"eval.{ts}.json")
            storage.move(eval_path, dst)
            out["archived"].append(dst)
            if _exists(npz_path):
                dst = _join(workdir, f"per_example.{ts}.npz")
                storage.move(npz_path, dst)
                out["archived"].append(dst)
    summ = summary(results)
    _write_json(eval_path, summ)
    if per_example:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in per_example.items()})
        storage.write_bytes(npz_path, buf.getvalue())
    update_report(workdir, {"eval": summ})
    return out


def load_per_example(path: str) -> dict:
    """per_example.npz -> dict of numpy arrays."""
    with np.load(io.BytesIO(storage.path(path).read_bytes())) as z:
        return {k: z[k] for k in z.files}


def compare_per_example(a: dict, b: dict, key: str = "robust_overall") -> dict:
    """Example-by-example comparison of two runs' flags on the indices both evaluated.

    Returns counts of examples robust in both, only in a, only in b, and in neither.
    """
    ia, ib = np.asarray(a["index"]), np.asarray(b["index"])
    common, pa, pb = np.intersect1d(ia, ib, return_indices=True)
    fa, fb = np.asarray(a[key])[pa], np.asarray(b[key])[pb]
    ok = (fa >= 0) & (fb >= 0)
    fa, fb = fa[ok] == 1, fb[ok] == 1
    return dict(
        num_examples=int(ok.sum()),
        both=int((fa & fb).sum()),
        only_a=int((fa & ~fb).sum()),
        only_b=int((~fa & fb).sum()),
        neither=int((~fa & ~fb).sum()),
    )
