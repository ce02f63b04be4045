"""Command line: `python -m ascl_jax.main --config configs/<experiment>.py --workdir DIR`.

Every config field can be overridden, e.g. `--config.optim.learning_rate=0.01`.
Modes: train (train, then evaluate into report.json), evaluate (a workdir's latest checkpoint ->
eval.json, merged into report.json), analyze (R-DIV and plots of a workdir's checkpoint).
--workdir is a local directory or a URL (gs://bucket/dir, s3://bucket/dir; docs/storage.md): a
URL workdir is probed (writable from this process) before any work.
Multi-host: `--multihost` calls jax.distributed.initialize() (auto-detected on Cloud TPU, Slurm,
Open MPI; or give --coordinator/--num_processes/--process_id), before any other JAX call.
Preemption: on SIGTERM a training run checkpoints the step it is computing, prints the command that
resumes it (this same command) and exits with code 143 (`train.preemption.PREEMPTED_EXIT_CODE`).
"""

import logging
import os
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# URLs through fsspec (as ascl_jax.storage sets it), before anything uses epath
os.environ.setdefault("EPATH_USE_TF", "false")
from ascl_jax.xla_cpu import flags as xla_flags  # noqa: E402  (before anything imports jax)

xla_flags.tune_cpu_flags()

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "analyze"], "What to run.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (multi-process).")


def main(argv):
    del argv
    from ascl_jax import parallel

    if _MULTIHOST.value:
        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax / clu INFO lines would drown the bar
    ours = logging.getLogger("ascl_jax")
    ours.setLevel(logging.INFO)
    ours.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ascl_jax: %(message)s"))
    ours.addHandler(handler)
    from ascl_jax import config as config_lib
    from ascl_jax import storage

    try:
        storage.check_workdir(_WORKDIR.value)  # a URL workdir: writable from here, before any work
    except storage.StorageError as e:
        print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
        sys.exit(2)
    from ascl_jax import train, workdir
    from ascl_jax.train import preemption

    try:
        if _MODE.value == "train":
            if _CONFIG.value is None:
                raise config_lib.ConfigError("--config is required for --mode=train")
            report = train.run(_CONFIG.value, _WORKDIR.value)
        elif _MODE.value == "evaluate":
            report = train.evaluate_workdir(_WORKDIR.value, _CONFIG.value)
        else:
            report = train.analyze_workdir(_WORKDIR.value)
    except (
        config_lib.ConfigError,
        workdir.WorkdirError,
        storage.StorageError,
        train.NonFiniteLossError,
        FileNotFoundError,
        ValueError,
    ) as e:
        print(f"error ({type(e).__name__}): {e}", file=sys.stderr)
        sys.exit(2)
    except preemption.Preempted as e:
        if jax_process_index() == 0:
            command = shlex.join([sys.executable, "-m", "ascl_jax.main", *sys.argv[1:]])
            print(f"{e}\nresume with:\n  {command}", file=sys.stderr)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    from ascl_jax import analysis

    if jax_process_index() == 0:
        print(analysis.text_summary(report))


def jax_process_index():
    import jax

    return jax.process_index()


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
