"""Scaling table: scan spectra/s and train samples/s against decode workers and devices.

  python benchmarks/scaling.py --n=4000 --workers=1,2 --devices=1,2,8

Each configuration runs in a fresh subprocess (the device count is fixed when JAX
starts): on CPU it gets that many forced host devices, which share the same cores; on a GPU
node it sees the first that many GPUs, and counts beyond the node's GPUs are skipped.  Uses the mirror made by
benchmarks/scan_throughput.py (or makes one).  Writes benchmarks/results/scaling_<backend>.json
and prints a Markdown table.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_N = flags.DEFINE_integer("n", 4000, "Spectra scanned per configuration.")
_MIRROR = flags.DEFINE_string("mirror", os.path.join(tempfile.gettempdir(), "astrotl-mirror"),
                              "Mirror folder (made if absent).")
_WORKERS = flags.DEFINE_string("workers", "1,2", "Decode worker counts.")
_DEVICES = flags.DEFINE_string("devices", "1,2,8", "Device counts (forced host devices on CPU).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 10, "Timed cnn1d train steps (batch 128).")
_OUT = flags.DEFINE_string("out", str(pathlib.Path(__file__).parent / "results"), "Output dir.")

REPO = pathlib.Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time, tempfile, shutil
import jax
from astrotl import scan
n, workers, steps, catalog = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out = {"devices": jax.local_device_count(), "backend": jax.default_backend()}
if workers > 0:
  paths = scan.inputs.from_catalog(catalog).paths[:n]
  d = tempfile.mkdtemp()
  s = scan.scan(spectra=paths, out=d, workers=workers, progress=False,
                log=lambda *a: None)
  out["scan_rate"] = s["spectra_per_second"]
  shutil.rmtree(d)
if steps > 0:
  sys.path.insert(0, "benchmarks")
  from absl import flags; flags.FLAGS(["x"])
  import train_throughput
  out["train_rate"] = train_throughput.time_astrotl(128, steps, 3700)
print("RESULT " + json.dumps(out))
"""


def run_child(devices, workers, steps, catalog):
  # On CPU, `devices` forced host devices; on a GPU node, the first `devices` GPUs
  # (CUDA_VISIBLE_DEVICES; the child reports how many it really got).
  env = dict(os.environ, PYTHONPATH=str(REPO),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             CUDA_VISIBLE_DEVICES=",".join(str(i) for i in range(devices)))
  r = subprocess.run([sys.executable, "-c", _CHILD, str(_N.value), str(workers), str(steps),
                      str(catalog)], env=env, capture_output=True, text=True, cwd=REPO)
  for line in r.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(r.stderr[-2000:])


def main(argv):
  del argv
  from astrotl.tools import make_mirror
  mirror = pathlib.Path(_MIRROR.value)
  catalog = mirror / "catalog.csv"
  if not catalog.exists() or sum(1 for _ in open(catalog)) - 1 < _N.value:
    make_mirror.make(_N.value, mirror)
  rows = []
  for devices in [int(d) for d in _DEVICES.value.split(",")]:
    train = run_child(devices, 0, _TRAIN_STEPS.value, catalog)
    if train["devices"] < devices:  # fewer GPUs than asked for: that row was already measured
      print(f"asked for {devices} devices, {train['devices']} available: skipped")
      continue
    rows.append({"kind": "train", "workers": 0, **train})
    for workers in [int(w) for w in _WORKERS.value.split(",")]:
      rows.append({"kind": "scan", "workers": workers, **run_child(devices, workers, 0, catalog)})
  print("| kind | devices | decode workers | spectra/s |")
  print("|---|---|---|---|")
  for r in rows:
    rate = r.get("scan_rate", r.get("train_rate"))
    print(f"| {r['kind']} | {r['devices']} | {r['workers'] or '-'} | {rate:.0f} |")
  outdir = pathlib.Path(_OUT.value)
  outdir.mkdir(parents=True, exist_ok=True)
  backend = rows[0].get("backend", "cpu")
  (outdir / f"scaling_{backend}.json").write_text(json.dumps(
      {"n": _N.value, "cpu_count": os.cpu_count(), "rows": rows, "time": time.time()}, indent=1))


if __name__ == "__main__":
  app.run(main)
