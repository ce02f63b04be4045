#!/usr/bin/env bash
# Cloud TPU pod slice: every worker runs the same command; jax.distributed.initialize()
# auto-detects the topology, each process reads its own slice of the data, the mesh spans
# all chips. The workdir must be storage every worker reaches: a gs:// bucket path (or s3://,
# or a shared mount). Process 0 writes the run's files, every process its part of each orbax
# checkpoint; each worker first checks it can write there (docs/storage.md).
#   launch/tpu_pod.sh TPU_NAME ZONE configs/acl_pretrain.py:variant=ds gs://bucket/runs/acl_ds
# REPO: the checkout on the workers (default ~/ascl_jax, the workers' home directory).
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; CONFIG=${3:?config}; WORKDIR=${4:?workdir}
shift 4
case "$WORKDIR" in
  gs://* | s3://*) ;;
  *) echo "tpu_pod.sh: warning: --workdir $WORKDIR is not a gs:// or s3:// URL; every worker" \
    "must see the same directory there, or each writes its own partial checkpoints" >&2 ;;
esac
REPO=${REPO:-"~/ascl_jax"}  # quoted: expanded on the workers, not here
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  cd $REPO
  [ -d .venv ] || (python3 -m venv .venv && .venv/bin/pip install -q -e '.[gcs]' 'jax[tpu]')
  .venv/bin/python -m ascl_jax.main --multihost --config '$CONFIG' --workdir '$WORKDIR' $*
"
