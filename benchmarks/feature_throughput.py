"""UPSILoN feature extraction throughput on the EROS-1 light curves (run by hand).

    python benchmarks/feature_throughput.py [--data ../shared/data] [--band r]
        [--upsilon-python /path/to/venv/bin/python] [--reference 100]

Measures, on the R-band curves of all EROS-1 stars (train + test, ~120 points each):
- astrotl batched (`extract_batch`, jit): curves per second after compilation, and the
  compilation + first chunk time separately;
- astrotl single-curve numpy `extract`: seconds per curve on the first `--reference` curves;
- UPSILoN 1.2.10 `ExtractFeatures(...).run()` seconds per curve on the same curves, in a
  separate interpreter that has upsilon installed (it needs numpy < 2), and how many of
  its periods equal ours.  Without --upsilon-python the issue's figure (0.17 s per
  ~120-point curve, measured elsewhere) is used and marked as quoted.
Writes benchmarks/results/feature_throughput.json.
"""

import argparse
import csv
import datetime
import gzip
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from astrotl.preprocess import features as F
from astrotl.preprocess import features_batch

HERE = pathlib.Path(__file__).resolve().parent
QUOTED_UPSILON_S = 0.17

UPSILON_TIMER = r"""
import json, sys, time, warnings
import numpy as np
warnings.filterwarnings("ignore")
import upsilon
z = np.load(sys.argv[1])
times, periods = [], []
for t, m, e, n in zip(z["time"], z["mag"], z["err"], z["count"]):
  t0 = time.perf_counter()
  f = upsilon.ExtractFeatures(t[:n], m[:n], e[:n])
  f.run()
  times.append(time.perf_counter() - t0)
  periods.append(float(f.period))
from importlib.metadata import version
print(json.dumps({"times": times, "periods": periods, "version": version("upsilon"),
                  "numpy": np.__version__}))
"""


def read_eros1(data, band):
  csv.field_size_limit(1 << 30)
  curves = []
  for split in ("train", "test"):
    path = data / "lightcurves" / "eros1_ramp" / f"{split}_varlength_features.csv.gz"
    with gzip.open(path, "rt") as f:
      for row in csv.DictReader(f):
        curves.append(tuple(np.array(json.loads(row[f"{c}_points_{band}"]), np.float64)
                            for c in ("time", "light", "error")))
  return curves


def run_upsilon(python, arrays):
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "curves.npz")
    t, m, e, k = arrays
    np.savez(path, time=t, mag=m, err=e, count=k.sum(1))
    res = subprocess.run([python, "-c", UPSILON_TIMER, path], capture_output=True, text=True,
                         check=False)
  if res.returncode:
    raise SystemExit(f"upsilon timing failed in {python}:\n{res.stderr[-2000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", type=pathlib.Path,
                  default=pathlib.Path(os.environ.get("ASTROTL_SHARED_DATA",
                                                      HERE.parent.parent / "shared" / "data")))
  ap.add_argument("--band", default="r", choices=("r", "b"))
  ap.add_argument("--chunk", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--reference", type=int, default=100)
  ap.add_argument("--upsilon-python", default=None)
  ap.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "feature_throughput.json")
  args = ap.parse_args()
  if not (args.data / "lightcurves" / "eros1_ramp").is_dir():
    raise SystemExit(f"{args.data}/lightcurves/eros1_ramp not found: pass --data "
                     "(the shared data folder) or set ASTROTL_SHARED_DATA")

  curves = read_eros1(args.data, args.band)
  arrays = features_batch.pad_curves(curves, multiple=32)
  n = len(curves)
  lengths = [len(c[0]) for c in curves]
  print(f"{n} EROS-1 {args.band}-band curves, {min(lengths)}-{max(lengths)} points "
        f"(median {int(np.median(lengths))}), padded to {arrays[0].shape[1]}")

  first = [a[:args.chunk] for a in arrays]
  t0 = time.perf_counter()
  F.extract_batch(*first, chunk=args.chunk)
  compile_s = time.perf_counter() - t0
  runs = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    out = F.extract_batch(*arrays, chunk=args.chunk)
    runs.append(time.perf_counter() - t0)
  batch_rate = n / min(runs)
  print(f"batched: {batch_rate:.0f} curves/s ({1e3 / batch_rate:.2f} ms/curve; runs "
        f"{[round(r, 2) for r in runs]} s; compile + first chunk {compile_s:.1f} s); "
        f"reasons {np.bincount(out['reason'], minlength=len(F.REASONS)).tolist()}")

  ref = curves[:args.reference]
  t0 = time.perf_counter()
  ref_periods = [F.extract(*c)["period"] for c in ref]
  numpy_s = (time.perf_counter() - t0) / len(ref)
  same_numpy = int(np.sum(np.array(ref_periods) == out["period"][:len(ref)]))
  print(f"numpy extract: {numpy_s * 1e3:.1f} ms/curve; batched period == numpy period for "
        f"{same_numpy}/{len(ref)}")

  result = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "load_average_1min": os.getloadavg()[0],
                  "jax_backend": jax.default_backend(),
                  "devices": [str(d) for d in jax.devices()]},
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "numpy": np.__version__},
      "data": {"set": f"EROS-1 (RAMP variable_stars) train+test, {args.band} band",
               "curves": n, "points_min_median_max": [min(lengths), int(np.median(lengths)),
                                                      max(lengths)]},
      "batched": {"curves_per_s": batch_rate, "ms_per_curve": 1e3 / batch_rate,
                  "chunk": args.chunk, "runs_s": runs, "compile_and_first_chunk_s": compile_s,
                  "reasons": {r: int(np.sum(out["reason"] == i))
                              for i, r in enumerate(F.REASONS)}},
      "numpy_extract": {"s_per_curve": numpy_s, "curves": len(ref),
                        "same_period_as_batched": same_numpy},
  }
  if args.upsilon_python:
    ups = run_upsilon(args.upsilon_python, [a[:args.reference] for a in arrays])
    ups_s = float(np.median(ups["times"]))
    same = int(np.sum(np.array(ups["periods"]) == out["period"][:len(ref)]))
    close = int(np.sum(np.isclose(ups["periods"], out["period"][:len(ref)], rtol=1e-9)))
    result["upsilon"] = {"source": "measured", "version": ups["version"],
                         "numpy": ups["numpy"], "s_per_curve_median": ups_s,
                         "s_per_curve_mean": float(np.mean(ups["times"])),
                         "curves": len(ups["times"]), "same_period_as_batched": same,
                         "period_within_1e-9_of_batched": close}
    print(f"upsilon {ups['version']}: {ups_s:.3f} s/curve (median of {len(ups['times'])}); "
          f"same period as batched for {same}/{len(ref)}")
  else:
    ups_s = QUOTED_UPSILON_S
    result["upsilon"] = {"source": "quoted from the issue (0.17 s per ~120-point EROS-1 "
                                   "curve, not measured here)", "s_per_curve_median": ups_s}
  result["speedup_batched_vs_upsilon"] = ups_s * batch_rate
  result["speedup_numpy_vs_upsilon"] = ups_s / numpy_s
  print(f"speed-up over UPSILoN: batched {ups_s * batch_rate:.0f}x, numpy {ups_s / numpy_s:.1f}x")
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=1) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  sys.exit(main())
