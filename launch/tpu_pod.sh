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
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=$tmp/astrotl-src.tgz
if git -C "$here" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # The working tree as git sees it: tracked and new files, not ignored outputs (workdir/,
  # .venv/, build/), which can be gigabytes.
  git -C "$here" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do if [[ -e "$here/$f" ]]; then printf '%s\0' "$f"; fi; done |
    tar -C "$here" --null -T - -czf "$src"
else
  tar -C "$here" --exclude=.venv --exclude=.git --exclude=workdir -czf "$src" .
fi
gcloud compute tpus tpu-vm scp "$src" "$name":/tmp/astrotl-src.tgz --zone="$zone" --worker=all
ssh_all "mkdir -p ~/astrotl && tar -C ~/astrotl -xzf /tmp/astrotl-src.tgz && \
  cd ~/astrotl && python3 -m venv .venv && .venv/bin/pip install -q . 'jax[tpu]'"
# Quoted for the remote shell; no arguments must add nothing (printf ' %q' alone gives " ''").
args=""
if [[ $# -gt 0 ]]; then args=$(printf ' %q' "$@"); fi
ssh_all "cd ~/astrotl && .venv/bin/python -m $(printf '%q' "$module") --distributed$args"
