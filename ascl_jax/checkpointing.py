"""Orbax checkpoints of a run: workdir/checkpoints/<step>/.

The directory is an `epath.Path` (`ascl_jax.storage`): a local workdir made absolute, a URL
(gs://, s3://) passed to orbax as the URL. Every process writes its part of each checkpoint, as
orbax requires.

The workdir's other files (config.json and its guard, metrics.jsonl, report.json, eval.json) are
written by `ascl_jax.workdir`.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from ascl_jax import storage
from ascl_jax.workdir import WorkdirError

__all__ = ["WorkdirError", "make_manager", "restore", "save"]


def make_manager(workdir: str, *, save_every: int, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=max(int(save_every), 1), create=True
    )
    return ocp.CheckpointManager(storage.absolute(workdir) / "checkpoints", options=options)


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
        path = storage.path(manager.directory) / str(step)
        raise WorkdirError(
            f"checkpoint {path} is corrupt or incompatible ({type(e).__name__}: {e}). It was left "
            "in place: move it aside to resume from an earlier checkpoint, or use a fresh --workdir."
        ) from e


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)
