"""Orbax checkpoints of a run: workdir/checkpoints/<step>/.

The directory is an `epath.Path` (`ascl_jax.storage`): a local workdir made absolute, a URL
(gs://, s3://) passed to orbax as the URL (s3:// with `storage.orbax_options`). Every process
writes its part of each checkpoint, as orbax requires.

The workdir's other files (config.json and its guard, metrics.jsonl, report.json, eval.json) are
written by `ascl_jax.workdir`.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from ascl_jax import storage
from ascl_jax.workdir import WorkdirError

__all__ = ["WorkdirError", "make_manager", "restore", "save"]


class _Manager(ocp.CheckpointManager):
    """orbax's manager that never queries JAX's preemption sync point: the train loop alone does,
    once per step (`train.preemption`), and saves its preemption checkpoint with force=True. orbax
    would also query it from its background commit thread on process 0 with the committed (past)
    step, which the sync point would take as that process's current step."""

    def reached_preemption(self, step: int) -> bool:
        del step
        return False


def make_manager(workdir: str, *, save_every: int, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=max(int(save_every), 1),
        create=True,
        **storage.orbax_options(workdir),
    )
    return _Manager(storage.absolute(workdir) / "checkpoints", options=options)


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


# --------------------------------------------------------------------------------------------------
# The best checkpoint (eval.checkpoint='best') and per-step metadata.

BEST_DIR = "best_checkpoint"
BEST_METRIC = "select_value"


def has_best(workdir: str) -> bool:
    """Whether workdir/best_checkpoint exists (without creating it); the directory
    `make_best_manager` uses (`storage.absolute`)."""
    return (storage.absolute(workdir) / BEST_DIR).exists()


def make_best_manager(workdir: str) -> ocp.CheckpointManager:
    """The manager of workdir/best_checkpoint/<step>/: orbax keeps the one checkpoint of highest
    metrics[BEST_METRIC] (`best_fn`, `best_mode='max'`, `max_to_keep=1`); checkpoints saved without
    metrics are not kept. The metric is stored with the checkpoint, so it survives a restart."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=lambda m: float(m[BEST_METRIC]),
        best_mode="max",
        keep_checkpoints_without_metrics=False,
        create=True,
        **storage.orbax_options(workdir),
    )
    return _Manager(
        storage.absolute(workdir) / BEST_DIR,
        options=options,
        item_handlers=ocp.StandardCheckpointHandler(),  # registered up front: metadata reads quietly
    )


def save_best(manager: ocp.CheckpointManager, step: int, state, value: float, metadata: dict) -> None:
    """Saves `state` at `step` with metric `value` and JSON `metadata`, and waits for it (all
    processes call it, as every orbax save)."""
    manager.save(
        step,
        args=ocp.args.StandardSave(state),
        metrics={BEST_METRIC: float(value)},
        custom_metadata=dict(metadata),
        force=True,
    )
    manager.wait_until_finished()


def best_record(manager: ocp.CheckpointManager) -> dict | None:
    """{'step', 'value', **custom metadata} of the best checkpoint `manager` holds, or None."""
    step = manager.best_step()
    if step is None:
        return None
    metrics = manager.metrics(step) or {}
    return dict(step_metadata(manager, step), step=int(step), value=float(metrics[BEST_METRIC]))


def save_with_metadata(manager: ocp.CheckpointManager, step: int, state, metadata: dict) -> bool:
    """`save(..., force=True)` with JSON `metadata` stored in the step's orbax metadata."""
    return manager.save(step, args=ocp.args.StandardSave(state), custom_metadata=dict(metadata), force=True)


def step_metadata(manager: ocp.CheckpointManager, step: int) -> dict:
    """The custom metadata saved with checkpoint `step` ({} when there is none)."""
    return dict(manager.metadata(step).custom_metadata or {})
