"""eval.json, per_example.npz and the merge into report.json.

Files in the workdir:
- ``eval.json``: the summary of ``evaluate`` (everything but the per-example arrays and images).
- ``per_example.npz``: per-example arrays (index, label, prediction, clean_correct, robust_<attack> as
  int8 with -1 = not evaluated, robust_overall, autoattack_broken_by) so that a later run can be
  compared example by example (``compare_per_example``).
- ``report.json``: its ``'eval'`` key is set to the summary; every other key is kept.

An existing ``eval.json`` is never replaced silently. ``on_exists='archive'`` (default) renames it and
its ``per_example.npz`` to ``eval.<UTC timestamp>.json`` / ``per_example.<UTC timestamp>.npz`` first;
``'error'`` refuses with FileExistsError; ``'overwrite'`` replaces them. Only process 0 writes.
"""
from __future__ import annotations

import datetime
import json
import os

import jax
import numpy as np

ON_EXISTS = ('archive', 'error', 'overwrite')
EVAL_JSON = 'eval.json'
PER_EXAMPLE = 'per_example.npz'
REPORT_JSON = 'report.json'


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
    """The JSON-serialisable part of ``evaluate``'s result (drops per-example arrays and images)."""
    return _jsonable({k: v for k, v in results.items()
                      if k not in ('per_example', 'adversarial_images')})


def _atomic_write_json(path: str, obj) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write('\n')
    os.replace(tmp, path)


def _timestamp(workdir: str) -> str:
    ts = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
    out, i = ts, 1
    while os.path.exists(os.path.join(workdir, f'eval.{out}.json')):
        out, i = f'{ts}-{i}', i + 1
    return out


def write_eval_json(workdir: str, results: dict, per_example: dict | None = None, *,
                    on_exists: str = 'archive') -> dict:
    """Writes eval.json + per_example.npz into ``workdir`` and merges the summary into report.json.

    Args:
      results: the dict returned by ``evaluate``.
      per_example: arrays to save (default ``results['per_example']``).
      on_exists: 'archive' | 'error' | 'overwrite' for an existing eval.json (see module docstring).
    Returns:
      {'eval_json': path, 'per_example': path or None, 'report_json': path, 'archived': [paths]}.
    """
    if on_exists not in ON_EXISTS:
        raise ValueError(f"on_exists={on_exists!r}; choose one of {list(ON_EXISTS)}")
    if not workdir:
        raise ValueError("workdir must be a directory path")
    per_example = results.get('per_example') if per_example is None else per_example
    eval_path = os.path.join(workdir, EVAL_JSON)
    npz_path = os.path.join(workdir, PER_EXAMPLE)
    report_path = os.path.join(workdir, REPORT_JSON)
    out = dict(eval_json=eval_path, per_example=npz_path if per_example else None,
               report_json=report_path, archived=[])
    if jax.process_index() != 0:
        return out
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(eval_path):
        if on_exists == 'error':
            raise FileExistsError(f"{eval_path} exists; pass on_exists='archive' to keep it as "
                                  "eval.<timestamp>.json or on_exists='overwrite' to replace it")
        if on_exists == 'archive':
            ts = _timestamp(workdir)
            dst = os.path.join(workdir, f'eval.{ts}.json')
            os.replace(eval_path, dst)
            out['archived'].append(dst)
            if os.path.exists(npz_path):
                dst = os.path.join(workdir, f'per_example.{ts}.npz')
                os.replace(npz_path, dst)
                out['archived'].append(dst)
    summ = summary(results)
    _atomic_write_json(eval_path, summ)
    if per_example:
        tmp = npz_path + '.tmp.npz'
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in per_example.items()})
        os.replace(tmp, npz_path)
    report = {}
    if os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
        if not isinstance(report, dict):
            raise ValueError(f"{report_path} does not hold a JSON object")
    report['eval'] = summ
    _atomic_write_json(report_path, report)
    return out


def load_per_example(path: str) -> dict:
    """per_example.npz -> dict of numpy arrays."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def compare_per_example(a: dict, b: dict, key: str = 'robust_overall') -> dict:
    """Example-by-example comparison of two runs' flags on the indices both evaluated.

    Returns counts of examples robust in both, only in a, only in b, and in neither.
    """
    ia, ib = np.asarray(a['index']), np.asarray(b['index'])
    common, pa, pb = np.intersect1d(ia, ib, return_indices=True)
    fa, fb = np.asarray(a[key])[pa], np.asarray(b[key])[pb]
    ok = (fa >= 0) & (fb >= 0)
    fa, fb = fa[ok] == 1, fb[ok] == 1
    return dict(num_examples=int(ok.sum()), both=int((fa & fb).sum()), only_a=int((fa & ~fb).sum()),
                only_b=int((~fa & fb).sum()), neither=int((~fa & ~fb).sum()))
