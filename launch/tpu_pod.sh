#!/usr/bin/env bash
# Cloud TPU pod slice: every worker runs the same command; jax.distributed.initialize()
# auto-detects the topology, each process reads its own slice of the data, the mesh spans
# all chips. The workdir must be shared storage (e.g. a gs:// bucket path).
#   launch/tpu_pod.sh TPU_NAME ZONE configs/acl_pretrain.py:variant=ds gs://bucket/runs/acl_ds
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; CONFIG=${3:?config}; WORKDIR=${4:?workdir}
shift 4
REPO=${REPO:-~/ascl_jax}
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  cd $REPO
  [ -d .venv ] || (python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]')
  .venv/bin/python -m ascl_jax.main --multihost --config '$CONFIG' --workdir '$WORKDIR' $*
"
