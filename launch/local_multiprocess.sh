#!/usr/bin/env bash
# N processes on this machine, each with D simulated CPU devices, joined by jax.distributed
# through a localhost coordinator: the multi-host code path without a cluster (used by the tests).
#   launch/local_multiprocess.sh 2 4 configs/default.py:smoke /tmp/mp [--config.x=...]
#   launch/local_multiprocess.sh 2 4 chain.json /tmp/root
# CONFIG is a config file (configs/*.py[:arg]: each process runs `python -m ascl_jax.main`) or a
# .json list of CLI commands (each process runs them in sequence with launch/run_chain.py).
# PY: the Python interpreter (default .venv/bin/python). COORDINATOR_HOST, PORT: the coordinator's
# address (default localhost and a random port). XLA_FLAGS: passed to every process, with
# --xla_force_host_platform_device_count=NDEV appended (the last occurrence of a flag wins).
# Prints each process's pid when it starts and its exit status when it ends (to stderr); exits
# with the last non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${1:?number of processes}; NDEV=${2:?devices per process}; CONFIG=${3:?config}; WORKDIR=${4:?workdir}
shift 4
PY=${PY:-.venv/bin/python}
COORDINATOR_HOST=${COORDINATOR_HOST:-localhost}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
ENTRY=ascl_jax.main
if [[ "$CONFIG" == *.json ]]; then ENTRY=launch.run_chain; fi
pids=()
for ((i = 0; i < NPROC; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$NDEV" \
    "$PY" -m "$ENTRY" --multihost --coordinator "$COORDINATOR_HOST:$PORT" --num_processes "$NPROC" \
    --process_id "$i" --config "$CONFIG" --workdir "$WORKDIR" "$@" &
  pids+=($!)
  echo "local_multiprocess: process $i pid $!" >&2
done
status=0
for i in "${!pids[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  echo "local_multiprocess: process $i exited with status $rc" >&2
  if ((rc != 0)); then status=$rc; fi
done
exit $status
