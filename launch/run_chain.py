"""Runs several CLI commands in sequence in one process (one of N with --multihost), so a chain of
modes pays the interpreter start, the JAX import and `jax.distributed.initialize` once.

  python launch/run_chain.py --config CHAIN.json --workdir ROOT [--multihost --coordinator host:port
      --num_processes N --process_id I]
  launch/local_multiprocess.sh 2 4 CHAIN.json ROOT      with ENTRY=launch/run_chain.py

CHAIN.json is a list of commands, each the argument list of `python -m ascl_jax.main` without the
multi-host flags, e.g. ["--mode=train", "--config=configs/default.py:smoke", "--workdir={root}/a",
"--config.method=adv"]; `{root}` is replaced by ROOT. Each command's config (file, ':arg' and
'--config.x=v' overrides) is parsed exactly as the CLI parses it, and the command runs what the CLI
runs for its mode (`train.run`, `train.evaluate_workdir`, `train.analyze_workdir`). Process 0
writes ROOT/chain.json: one entry per command, {'argv', 'report', 'seconds'}: the report the
command returned and its {'wall', 'cpu'} seconds (this process's CPU time); ROOT (and CHAIN.json)
may be gs:// or s3:// URLs, written and read through `ascl_jax.storage`. A failing command stops
the chain with exit status 1.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from ascl_jax.xla_cpu import flags as xla_flags  # noqa: E402  (before anything imports jax)

xla_flags.tune_cpu_flags()

MODES = ("train", "evaluate", "analyze")


def parse_command(argv: list[str]):
    """(mode, workdir, config or None) of one CLI argument list, parsed by absl + config_flags."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    argv = ["run_chain", *argv]
    config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=fv, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "workdir", flag_values=fv)
    flags.DEFINE_enum("mode", "train", list(MODES), "mode", flag_values=fv)
    fv(argv)
    if not fv.workdir:
        raise ValueError(f"command {argv} has no --workdir")
    return fv.mode, fv.workdir, fv.config


def run_command(argv: list[str]) -> dict:
    """Runs one CLI command (what `python -m ascl_jax.main ARGV` runs) and returns its report."""
    from ascl_jax import train

    mode, workdir, config = parse_command(argv)
    if mode == "train":
        if config is None:
            raise ValueError(f"command {argv}: --config is required for --mode=train")
        return train.run(config, workdir)
    if mode == "evaluate":
        return train.evaluate_workdir(workdir, config)
    return train.analyze_workdir(workdir)


def main(args=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="CHAIN.json: a list of CLI argument lists")
    p.add_argument("--workdir", required=True, help="ROOT, substituted for {root}")
    p.add_argument("--multihost", action="store_true")
    p.add_argument("--coordinator", default="")
    p.add_argument("--num_processes", type=int, default=0)
    p.add_argument("--process_id", type=int, default=-1)
    a = p.parse_args(args)
    from ascl_jax import parallel

    if a.multihost:
        parallel.initialize_distributed(a.coordinator, a.num_processes, a.process_id)
    import jax
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    from ascl_jax import storage

    chain = json.loads(storage.path(a.config).read_text())
    if not isinstance(chain, list) or not all(isinstance(c, list) for c in chain):
        raise ValueError(f"{a.config} must hold a list of argument lists")
    out = []
    for argv in chain:
        argv = [s.replace("{root}", a.workdir) for s in argv]
        t0, c0 = time.time(), time.process_time()
        try:
            report = run_command(argv)
        except Exception as e:  # noqa: BLE001  (named in the message, then the chain stops)
            print(f"run_chain: command {argv} failed: {type(e).__name__}: {e}", file=sys.stderr)
            raise
        seconds = {"wall": time.time() - t0, "cpu": time.process_time() - c0}
        out.append({"argv": argv, "report": report, "seconds": seconds})
    if jax.process_index() == 0:  # a local ROOT or a gs:// / s3:// URL (ascl_jax.storage)
        storage.makedirs(a.workdir)
        text = json.dumps(out, indent=1, sort_keys=True, default=float)
        storage.write_bytes(storage.path(a.workdir) / "chain.json", text.encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
