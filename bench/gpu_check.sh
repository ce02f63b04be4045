#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py; docs/gpu.md): run from anywhere on the GPU machine,
#   bash bench/gpu_check.sh [--out FILE] [--wheels DIR] [--dry-run] ...
# Uses $PYTHON (default python3: the interpreter that holds JAX with CUDA and PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
