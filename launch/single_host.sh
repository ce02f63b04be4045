#!/usr/bin/env bash
# One machine (CPU, or one/several GPUs): all local devices form the data mesh.
#   launch/single_host.sh configs/ascl_table2.py:row=ours runs/ascl_t2 [--config.seed=1 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?config file, e.g. configs/default.py}
WORKDIR=${2:?workdir}
shift 2
PY=${PY:-.venv/bin/python}
exec "$PY" -m ascl_jax.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
