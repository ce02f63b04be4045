"""Checkpoints (orbax) and the workdir guard.

A workdir holds `config.json` (the run's config), `checkpoints/<step>/` (orbax), `metrics.jsonl`,
TensorBoard events, `report.json`, `eval.json`. Restarting with the same workdir and the same
config resumes from the latest checkpoint; a workdir that holds a run of a different config is
refused (`WorkdirError`), never overwritten. Fields that do not change the trained model (logging,
progress bar, evaluation and analysis settings, checkpoint cadence) may differ on resume.
"""
from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import orbax.checkpoint as ocp

# Fields that may change between a run and its resumption: they do not change the trained state.
RESUMABLE_FIELDS = ("progress_bar", "log_every_steps", "checkpoint_every_steps", "max_checkpoints",
                    "eval", "analysis", "data.data_dir", "data.eval_batch_size", "name")


class WorkdirError(RuntimeError):
    """The workdir holds something this run must not overwrite or cannot read."""


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
    that differ) so that nothing already written is lost.
    """
    path = os.path.join(workdir, "config.json")
    new = config_to_dict(config)
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise WorkdirError(f"{path} exists but cannot be read ({e}); use a fresh --workdir") from e
        fo, fn = _flatten(old), _flatten(new)
        diff = sorted(k for k in set(fo) | set(fn)
                      if _normalise(fo.get(k)) != _normalise(fn.get(k))
                      and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_FIELDS))
        if diff:
            details = "; ".join(f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}" for k in diff[:8])
            raise WorkdirError(
                f"--workdir {workdir} holds a run of a different config ({details}). "
                "Use a fresh --workdir, or the same config to resume; nothing was overwritten.")
        return True
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(new, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)  # atomic: other processes see all of it or nothing
    return False


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise WorkdirError(f"{workdir} holds no run: {path} is missing")
    with open(path) as f:
        d = json.load(f)

    def tuples(v):
        if isinstance(v, dict):
            return {k: tuples(x) for k, x in v.items()}
        return tuple(v) if isinstance(v, list) else v
    return ml_collections.ConfigDict(tuples(d))


def make_manager(workdir: str, *, save_every: int, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           save_interval_steps=max(int(save_every), 1),
                                           create=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                 options=options)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """Restores `step` (default: latest) into the structure/shardings of `abstract_state`.

    A checkpoint that cannot be read raises WorkdirError naming it; it is left in place."""
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises many types for truncated or garbled files
        path = os.path.join(str(manager.directory), str(step))
        raise WorkdirError(
            f"checkpoint {path} is corrupt or incompatible ({type(e).__name__}: {e}). It was left "
            "in place: move it aside to resume from an earlier checkpoint, or use a fresh --workdir."
        ) from e


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def write_json_keeping_old(path: str, payload: dict) -> str | None:
    """Writes `payload` to `path`; an existing file is first kept as `<name>.<timestamp>.json`.

    Returns the backup path, if any. Only process 0 writes."""
    if jax.process_index() != 0:
        return None
    backup = None
    if os.path.exists(path):
        stem, ext = os.path.splitext(path)
        backup = f"{stem}.{time.strftime('%Y%m%d-%H%M%S')}{ext}"
        n = 1
        while os.path.exists(backup):
            backup = f"{stem}.{time.strftime('%Y%m%d-%H%M%S')}-{n}{ext}"
            n += 1
        os.replace(path, backup)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=float)
    os.replace(tmp, path)
    return backup
