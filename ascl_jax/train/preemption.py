"""Preemption: SIGTERM (what Cloud TPU, GKE and Slurm send before they evict a job) stops the train
loop at a step every process agrees on, after a checkpoint of that step.

`Watcher` is the train loop's context: `reached(step)` is called after every step and returns True
at the step to stop at.
- Multi-process (`jax.distributed` initialised): JAX's preemption sync manager
  (`jax.experimental.multihost_utils.reached_preemption_sync_point`, what orbax's
  `CheckpointManager.reached_preemption` calls). `jax.distributed.initialize` installs its SIGTERM
  handler in every process (a C++ handler; this module installs none, which would replace it); a
  listener thread polls it every second and posts the notice to the coordination service, every
  process then reports the last step it passed to `reached` and all stop at the fastest one's next
  step. Every process must call `reached` with the same step numbers at every step, and nothing else
  may call the sync point: orbax's managers do not (`checkpointing` turns their query off, as
  orbax's background commit thread would report a past step for process 0). With the service off
  (`jax_enable_preemption_service=False`) SIGTERM ends the processes without a checkpoint (a
  warning says so at the first step).
- One process: a SIGTERM handler (installed by `__enter__` from the main thread, the previous
  handler restored by `__exit__`) sets a flag; the step being computed finishes first.

The loop then saves a checkpoint of that step (with the partial logging window, so the resumed run
logs what an uninterrupted one logs), flushes metrics.jsonl and raises `Preempted` in every process;
the command line exits with PREEMPTED_EXIT_CODE in every process, the one that got the signal and
the others, and process 0 prints the resume command (the same command; for N processes, the same
launch). Resuming (same config, same workdir) gives the uninterrupted run's state bit for bit.
SIGTERM acts between the first and the last training step: in a multi-process run a SIGTERM during
setup or evaluation does not end the process (JAX's handler holds SIGTERM for the process's life;
the scheduler's SIGKILL does), and rerunning the command resumes from the latest checkpoint.

Tested (tests/test_preemption.py) with a real SIGTERM to a real `python -m ascl_jax.main`: one
process x 8 devices, and one of 2 processes x 4 devices (launch/local_multiprocess.sh): exit codes,
the common stop step, its checkpoint, metrics.jsonl up to it, and the resumed state and metrics
equal to an uninterrupted run's.
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
            log.warning("JAX's preemption service is off: SIGTERM will end training without a checkpoint")
            self._sync = False
            return False
