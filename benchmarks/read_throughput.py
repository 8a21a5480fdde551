"""Spectra per second per core: astropy vs astrotl's LAMOST reader, on the real files.

Run by hand (not a test):
  PYTHONPATH=. python benchmarks/read_throughput.py [--data DIR] [--repeats 5]

DIR defaults to $ASTROTL_SHARED_DATA, else ../shared/data beside the checkout (as the
tests find it).  Every method
reads every LAMOST LRS file listed in DIR/spectra/index.csv once per repeat, in one process;
the rate is files / CPU seconds of the best repeat (CPU time, so other jobs on a shared
machine do not count against us), with wall-clock rates alongside.  Writes
benchmarks/results/read_throughput.json.
"""

import argparse
import csv
import json
import os
import pathlib
import platform
import sys
import time

import astropy
import numpy as np
from astropy.io import fits

from astrotl.io import lamost

HERE = pathlib.Path(__file__).resolve().parent


def astropy_read(path):
  """What a user would write with astropy: open, pick the arrays, copy them out."""
  with fits.open(path, memmap=False) as hdul:
    if hdul[0].data is not None:
      data = hdul[0].data
      return np.array(data[0]), np.array(data[1]), np.array(data[2])
    table = hdul[1].data
    return np.array(table["FLUX"][0]), np.array(table["IVAR"][0]), np.array(
        table["WAVELENGTH"][0])


METHODS = {
    "astropy": astropy_read,
    "astrotl.read(fast=False)": lambda p: lamost.read(p, fast=False),
    "astrotl.read": lamost.read,
    "astrotl.read_raw": lamost.read_raw,
}


def files(data):
  with open(data / "spectra" / "index.csv", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r.get("survey", "LAMOST-LRS") == "LAMOST-LRS"]
  return [data / "spectra" / r["file"] for r in rows]


def measure(fn, paths, repeats):
  best = None
  for _ in range(repeats):
    c0, w0 = time.process_time(), time.perf_counter()
    for p in paths:
      fn(p)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if best is None or cpu < best[0]:
      best = (cpu, wall)
  return {"spectra_per_cpu_s": len(paths) / best[0], "spectra_per_wall_s": len(paths) / best[1],
          "cpu_s": best[0], "wall_s": best[1]}


def default_data():
  env = os.environ.get("ASTROTL_SHARED_DATA")
  candidates = [pathlib.Path(env)] if env else []
  candidates += [HERE.parent.parent / "shared" / "data", pathlib.Path("/work/shared/data"),
                 HERE.parent / "astrotl" / "data"]  # the bundled sample, where no shared data is
  return next((c for c in candidates if (c / "spectra" / "index.csv").exists()), candidates[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", type=pathlib.Path, default=default_data())
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "read_throughput.json")
  args = parser.parse_args()
  paths = files(args.data)
  for p in paths:  # warm the page cache so every method reads from memory
    p.read_bytes()
  results = {}
  for name, fn in METHODS.items():
    results[name] = measure(fn, paths, args.repeats)
    print(f"{name:26s} {results[name]['spectra_per_cpu_s']:8.0f} spectra/s per core "
          f"({results[name]['spectra_per_wall_s']:.0f} wall)")
  base = results["astropy"]["spectra_per_cpu_s"]
  for r in results.values():
    r["speedup_vs_astropy"] = r["spectra_per_cpu_s"] / base
  out = {
      "what": "LAMOST LRS files read per CPU second, one process, best of repeats",
      "command": "PYTHONPATH=. python benchmarks/read_throughput.py",
      "files": len(paths),
      "bytes_on_disk": sum(p.stat().st_size for p in paths),
      "repeats": args.repeats,
      "results": results,
      "python": sys.version.split()[0], "numpy": np.__version__,
      "astropy": astropy.__version__, "machine": platform.machine(),
      "processor": platform.processor(), "cpus": os.cpu_count(),
      "date": time.strftime("%Y-%m-%d"),
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(out, indent=2) + "\n")
  print(f"speedup of astrotl.read over astropy: "
        f"{results['astrotl.read']['speedup_vs_astropy']:.2f}x -> {args.out}")


if __name__ == "__main__":
  main()
