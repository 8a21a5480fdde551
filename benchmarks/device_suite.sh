#!/usr/bin/env bash
# The benchmarks that matter on an accelerator, in one go (< 8 minutes on one GPU):
# train step, reading, the scan side by side with decode-only / network-only / Tan-style,
# and the scaling table.  Writes JSON into benchmarks/results/ (or $OUT when set, as on
# the lent device machine) plus versions.json with the device, driver and library versions.
#   bash benchmarks/device_suite.sh            # uses ./.venv if present, else python3
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
RES=${OUT:-benchmarks/results}
mkdir -p "$RES"
WORKERS=${WORKERS:-$(nproc)}
N=${N:-20000}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; shift; timeout "${LIMIT:-150}" "$@" || echo "   (failed or timed out: $?)"; }

"$PY" - "$RES/versions.json" <<'PYEOF'
import json, platform, subprocess, sys
import jax, jaxlib, numpy
out = {"python": sys.version, "platform": platform.platform(), "jax": jax.__version__,
       "jaxlib": jaxlib.__version__, "numpy": numpy.__version__,
       "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
       "device_kind": jax.devices()[0].device_kind}
try:
  out["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                      "--format=csv,noheader"], capture_output=True, text=True,
                                     timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
  out["nvidia_smi"] = None
try:
  import torch
  out["torch"] = torch.__version__
  out["torch_cuda"] = torch.cuda.is_available()
except ImportError:
  out["torch"] = None
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out, indent=1))
PYEOF

step "train step" "$PY" benchmarks/train_throughput.py --steps=30 --out="$RES"
step "reading" "$PY" benchmarks/read_throughput.py --out="$RES/read_throughput.json"
LIMIT=300 step "scan, decode, network, Tan-style" "$PY" benchmarks/scan_throughput.py \
  --n="$N" --workers="$WORKERS" --tan_n=500 --out="$RES"
step "scaling" "$PY" benchmarks/scaling.py --n=4000 --workers="$WORKERS" --devices=1 --out="$RES"
echo "== done in $(( $(date +%s) - start )) s; results in $RES"
