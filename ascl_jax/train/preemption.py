"""Preemption: SIGTERM (what Cloud TPU, GKE and Slurm send before they evict a job) stops the train
loop at a step every process agrees on, after a checkpoint of that step.

`Watcher` is the train loop's context: `reached(step)` is called after every step and returns True
at the step to stop at.
- Multi-process (`jax.distributed` initialised): JAX's preemption sync manager, which catches
  SIGTERM on any process and makes every process stop at the same step
  (`jax.experimental.multihost_utils.reached_preemption_sync_point`, what orbax's
  `CheckpointManager.reached_preemption` calls). Every process must call `reached` at every step.
- One process: a SIGTERM handler (installed by `__enter__` from the main thread, the previous
  handler restored by `__exit__`) sets a flag; the step being computed finishes first.

The loop then saves a checkpoint of that step (with the partial logging window, so the resumed run
logs what an uninterrupted one logs), flushes metrics.jsonl and raises `Preempted`; the command line
prints the resume command and exits with PREEMPTED_EXIT_CODE. Resuming (same config, same workdir)
gives the uninterrupted run's state bit for bit.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax

log = logging.getLogger("ascl_jax")

# 128 + SIGTERM: what a shell reports for a process ended by SIGTERM; schedulers' requeue rules key on it.
PREEMPTED_EXIT_CODE = 143


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint of `step` in `workdir`."""

    def __init__(self, step: int, workdir: str):
        self.step, self.workdir = int(step), workdir
        super().__init__(
            f"preempted (SIGTERM): stopped after step {self.step}, checkpoint saved in {workdir}. "
            "Resume with the same config and workdir (the same command)."
        )


def distributed_initialized() -> bool:
    return bool(jax.distributed.is_initialized())


class Watcher:
    """Context manager; `reached(step)` -> True at the step where training stops (module doc)."""

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        self._sync = False

    def __enter__(self):
        self._sync = distributed_initialized()
        if not self._sync:
            if threading.current_thread() is threading.main_thread():
                self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            else:
                log.warning("not in the main thread: SIGTERM will not stop training at a checkpoint")
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def _on_sigterm(self, signum, frame):
        del signum, frame
        if not self._flag.is_set():
            log.warning("SIGTERM: finishing the current step, then saving a checkpoint")
        self._flag.set()

    def request(self) -> None:
        """Asks for a stop at the next step (what SIGTERM does in one process)."""
        self._flag.set()

    def reached(self, step: int) -> bool:
        if not self._sync:
            return self._flag.is_set()
        from jax.experimental import multihost_utils

        try:
            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        except RuntimeError:  # the preemption service is disabled (jax_enable_preemption_service)
            return self._flag.is_set()
