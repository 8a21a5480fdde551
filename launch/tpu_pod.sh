#!/usr/bin/env bash
# astrotl on a Cloud TPU VM pod slice: install the same checkout on every worker, then
# run the same command on all of them; jax.distributed detects the pod by itself.
#
#   launch/tpu_pod.sh NAME ZONE -- astrotl.scan --catalog=gs-fuse/dr9.csv --out=/mnt/shared/scan
#   launch/tpu_pod.sh NAME ZONE -- astrotl.main --config=... --workdir=/mnt/shared/run
#
# Outputs must go to storage all workers share (a Filestore/NFS mount or gcsfuse).
# Re-running the same command after a preemption resumes (scan journal, orbax checkpoints).
set -euo pipefail
if [[ $# -lt 4 || "$3" != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- <python module> [args...]" >&2
  exit 2
fi
name=$1; zone=$2; shift 3
module=$1; shift
here=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"
}
tar -C "$here" --exclude=.venv --exclude=.git -czf /tmp/astrotl-src.tgz .
gcloud compute tpus tpu-vm scp /tmp/astrotl-src.tgz "$name":/tmp/ --zone="$zone" --worker=all
ssh_all "mkdir -p ~/astrotl && tar -C ~/astrotl -xzf /tmp/astrotl-src.tgz && \
  cd ~/astrotl && python3 -m venv .venv && .venv/bin/pip install -q . 'jax[tpu]'"
args=$(printf ' %q' "$@")
ssh_all "cd ~/astrotl && .venv/bin/python -m $module --distributed$args"
