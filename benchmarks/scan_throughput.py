"""Scan throughput on a made mirror: decode-only, the full scan, and a naive loop.

  python benchmarks/scan_throughput.py --n=20000 --mirror=/tmp/astrotl-mirror --workers=2

All three read the same files with the same number of worker processes, in one run:
  decode-only  astrotl's parallel decoder alone (the upper bound for the scan);
  scan         astrotl.scan.run: decode + device resample/normalise/both models + chunk writes;
  naive        what a script would do: astropy.io.fits.open per file, numpy resample and
               Tan normalisation per file (in the same worker pool), then batch predict.
Prints rates and the ratios scan/decode and scan/naive (and, without the networks, astrotl's
decode against the naive astropy + numpy decode and preprocessing), projects the time for LAMOST DR9
(11.2 million spectra) on a 16-core node from the per-core decode rate, and writes
benchmarks/results/scan_throughput_<backend>.json.  Runs unchanged on CPU and GPU.
"""

import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import time

from absl import app, flags
import numpy as np

_N = flags.DEFINE_integer("n", 20000, "Spectra in the mirror.")
_MIRROR = flags.DEFINE_string("mirror", os.path.join(tempfile.gettempdir(), "astrotl-mirror"),
                              "Mirror folder (made with astrotl.tools.make_mirror if absent).")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count(), "Decoding processes.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Scan batch size.")
_NAIVE_N = flags.DEFINE_integer("naive_n", 4000, "Files for the (slow) naive loop; its rate "
                                "is per file, so a subset is enough.")
_OUT = flags.DEFINE_string("out", str(pathlib.Path(__file__).parent / "results"), "Output dir.")

DR9_SPECTRA = 11_200_000


def naive_one(path):
  """astropy open + per-file preprocessing, the way a hand-written script does it."""
  from astropy.io import fits
  from astrotl.preprocess import spectra
  try:
    with fits.open(path) as h:
      row = h[1].data[0]
      wave, flux, ivar = (np.asarray(row[k], np.float64) for k in ("WAVELENGTH", "FLUX", "IVAR"))
      andmask = np.asarray(row["ANDMASK"])
  except Exception:
    return None
  f, _, bad = spectra.resample(np.log10(wave), flux, ivar, andmask != 0)
  return spectra.tan_normalise(f, bad).astype(np.float32)


def main(argv):
  del argv
  import jax
  from astrotl import scan, train
  from astrotl.tools import make_mirror

  mirror = pathlib.Path(_MIRROR.value)
  catalog = mirror / "catalog.csv"
  if not catalog.exists() or sum(1 for _ in open(catalog)) - 1 < _N.value:
    t = time.time()
    make_mirror.make(_N.value, mirror)
    print(f"made a {_N.value}-spectrum mirror in {time.time() - t:.0f} s")
  paths, _ = scan.list_inputs(catalog=str(catalog))
  paths = paths[:_N.value]
  workers = _WORKERS.value
  result = {"n": len(paths), "workers": workers, "batch_size": _BATCH.value,
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "n_devices": jax.local_device_count(), "cpu_count": os.cpu_count()}

  # 1. decode only
  dec = scan.Decoder(workers)
  t = time.time()
  n_ok = sum(len(good) for good, *_ in dec.map(paths))
  result["decode_seconds"] = time.time() - t
  dec.close()
  result["decode_rate"] = len(paths) / result["decode_seconds"]
  print(f"decode-only: {result['decode_rate']:.0f} spectra/s ({n_ok} good)")

  # 2. the scan (model load and compilation included)
  model = scan.ScanModel.load(None)
  out = pathlib.Path(tempfile.mkdtemp(prefix="astrotl-scan-bench-"))
  t = time.time()
  scan.run(paths, out, model, batch_size=_BATCH.value, chunk_size=4096, workers=workers,
           progress=False)
  result["scan_seconds"] = time.time() - t
  result["scan_rate"] = len(paths) / result["scan_seconds"]
  shutil.rmtree(out)
  print(f"scan:        {result['scan_rate']:.0f} spectra/s")

  # 3. naive loop on a subset (same pool size), then batch predict both stages
  sub = paths[:min(_NAIVE_N.value, len(paths))]
  t = time.time()
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max(workers, 1), mp_context=ctx) as pool:
    xs = [x for x in pool.map(naive_one, sub, chunksize=16) if x is not None]
  x = np.stack(xs)
  result["naive_decode_rate"] = len(sub) / (time.time() - t)
  for stage in ("stage1", "stage2"):
    train.predict(model.models[stage], model.variables[stage], x, batch_size=_BATCH.value)
  result["naive_seconds"] = time.time() - t
  result["naive_n"] = len(sub)
  result["naive_rate"] = len(sub) / result["naive_seconds"]
  print(f"naive loop:  {result['naive_rate']:.0f} spectra/s (on {len(sub)} files)")

  result["scan_over_decode"] = result["scan_rate"] / result["decode_rate"]
  # the part the pipeline controls, without the networks: astrotl decode vs astropy+numpy
  result["decode_over_naive_decode"] = result["decode_rate"] / result["naive_decode_rate"]
  result["scan_over_naive"] = result["scan_rate"] / result["naive_rate"]
  per_core = result["decode_rate"] / max(workers, 1)
  result["decode_rate_per_core"] = per_core
  result["dr9_hours_16_cores_decode_bound"] = DR9_SPECTRA / (per_core * 16) / 3600
  print(f"scan / decode-only = {result['scan_over_decode']:.2f}   "
        f"scan / naive = {result['scan_over_naive']:.2f}   decode-only / naive decode+preprocess "
        f"= {result['decode_over_naive_decode']:.2f} ({result['naive_decode_rate']:.0f} spectra/s)")
  print(f"decode {per_core:.0f} spectra/s/core -> DR9 ({DR9_SPECTRA:,} spectra) on 16 cores: "
        f"{result['dr9_hours_16_cores_decode_bound']:.2f} h if decode-bound")
  outdir = pathlib.Path(_OUT.value)
  outdir.mkdir(parents=True, exist_ok=True)
  (outdir / f"scan_throughput_{result['backend']}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
