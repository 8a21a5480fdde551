#!/usr/bin/env bash
# Start N processes of one Python module on this machine, joined by jax.distributed
# through a coordinator on 127.0.0.1.  Each process gets its own share of CPU devices
# (ASTROTL_LOCAL_DEVICES each, default 8/N).  Output of process i goes to
# ${ASTROTL_LOG_DIR:-.}/process_i.log; the script exits non-zero if any process fails.
#
#   launch/local.sh 2 -- astrotl.main --config=astrotl/configs/default.py:data=d.npz --workdir=w --distributed
set -euo pipefail
if [[ $# -lt 3 || "$2" != "--" ]]; then
  echo "usage: $0 N -- <python module> [args...]" >&2
  exit 2
fi
n=$1; shift 2
module=$1; shift
port=${ASTROTL_PORT:-$(( 20000 + RANDOM % 20000 ))}
devices=${ASTROTL_LOCAL_DEVICES:-$(( 8 / n > 0 ? 8 / n : 1 ))}
logdir=${ASTROTL_LOG_DIR:-.}
mkdir -p "$logdir"
python=${PYTHON:-python}
pids=()
for (( i = 0; i < n; i++ )); do
  ASTROTL_COORDINATOR=127.0.0.1:$port ASTROTL_NUM_PROCESSES=$n ASTROTL_PROCESS_ID=$i \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
    "$python" -m "$module" "$@" >"$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
