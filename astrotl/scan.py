"""`python -m astrotl.scan`: run the two-stage white-dwarf model over a survey.

With no arguments it scans the spectra bundled with the package using the bundled
model, into ./astrotl-scan.  Typical survey use::

    python -m astrotl.scan --catalog=dr9_v1.0_LRS_catalogue.csv --root=/data/lamost/dr9 \
        --known=known_wds.fits --out=/scratch/wd-scan

Pipeline: worker processes decode FITS files (the bottleneck) into fixed-size raw
arrays; one jit-compiled function on the local device mesh resamples them onto the
common grid, applies Tan et al.'s normalisation and runs both stages (7-class and
binary white dwarf), with fixed batches padded and masked, so it compiles once.

The input list is cut into chunks.  A finished chunk's rows and errors are written
to `chunks/` with an atomic rename; a re-run of the same command skips finished
chunks, so a killed scan resumes and the final outputs hold each input exactly once.
With --distributed each process scans the chunks i with i % num_processes == its
index on its own devices (inference needs no cross-host collectives), then process 0
merges.

Outputs in --out: predictions.parquet, candidates.fits, errors.csv, summary.json,
report.md with wd_probability.png and top_candidates.png.
"""

import concurrent.futures
import csv
import glob
import hashlib
import json
import multiprocessing
import os
import pathlib
import sys
import time

from absl import app, flags, logging
import numpy as np

from astrotl import parallel
from astrotl.io import batch as io_batch
from astrotl.io import catalog as io_catalog


def define_flags():
  """The command-line flags; defined only when scan runs as a program, so importing
  astrotl.scan as a library claims no flag names."""
  f = flags
  f.DEFINE_string("spectra", None, "Directory (searched recursively) or glob of spectrum "
                  "files; comma-separated for several.")
  f.DEFINE_string("catalog", None, "Catalog CSV/FITS listing the files (a path column, or "
                  "LAMOST obsdate/planid/lmjd/spid/fiberid).")
  f.DEFINE_string("root", None, "Directory the catalog's paths are relative to (default: the "
                  "catalog's folder).")
  f.DEFINE_string("path_column", None, "Catalog column holding file paths.")
  f.DEFINE_string("model", None, "Model bundle (.npz from experiments/wd_search.py), or "
                  "'torch:7_cnn_model.pt,2_cnn_model.pt' for Tan et al.'s PyTorch weights. "
                  "Default: the bundled model.")
  f.DEFINE_string("known", None, "Catalog (CSV/FITS) of known white dwarfs with RA/Dec.")
  f.DEFINE_string("known_ra_column", None, "RA column of --known.")
  f.DEFINE_string("known_dec_column", None, "Dec column of --known.")
  f.DEFINE_float("radius", 3.0, "Cross-match radius in arcsec.")
  f.DEFINE_float("threshold", 0.5, "Candidate if calibrated P(WD) >= this ...")
  f.DEFINE_bool("two_stage", True, "... and stage 1 also calls it a white dwarf (Tan et al.'s "
                "two-stage rule; on real LAMOST stars it cuts false positives ~5x).")
  f.DEFINE_string("out", "astrotl-scan", "Output directory.")
  f.DEFINE_integer("batch_size", 256, "Spectra per device step (over the local devices).")
  f.DEFINE_integer("chunk_size", 4096, "Spectra per journaled chunk.")
  f.DEFINE_integer("workers", None, "Decoding processes (default: CPU count; 0 decodes in "
                   "the main process).")
  f.DEFINE_integer("top", 12, "Spectra plotted in the report.")
  f.DEFINE_bool("distributed", False, "Join jax.distributed first.")
  f.DEFINE_bool("progress", True, "Show a progress bar.")
  f.DEFINE_bool("explain", False, "Write class-activation-map plots for the top candidates.")


_TASK = 32  # files per worker task: amortises inter-process overhead


# --- inputs -----------------------------------------------------------------------------

SPECTRUM_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz")


def list_inputs(spectra=None, catalog=None, root=None, path_column=None):
  """(paths, catalog rows or None).  Paths from a catalog keep its order; from
  directories/globs they are sorted, so every process and every re-run agrees."""
  if catalog:
    paths, table = io_catalog.spectrum_paths(catalog, root, path_column)
    return paths, table
  if not spectra:
    from astrotl import data
    spectra = str(data.sample_dir("spectra"))
  found = []
  for item in spectra.split(","):
    item = item.strip()
    p = pathlib.Path(item)
    if p.is_dir():
      found += [str(f) for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(SPECTRUM_SUFFIXES)]
    else:
      matches = glob.glob(item, recursive=True)
      if not matches and not p.exists():
        raise FileNotFoundError(f"--spectra={item!r}: no such directory, file or glob match")
      found += matches or [item]
  return sorted(set(found)), None


# --- the model --------------------------------------------------------------------------

class ScanModel:
  """The two-stage classifier: stage 1 (multi-class) and stage 2 (binary, WD vs not).

  Both stages see Tan-normalised flux on the common grid.  Temperatures come from
  calibration on held-out data (1.0 = uncalibrated).
  """

  def __init__(self, stages: dict, meta: dict):
    from astrotl import models
    self.meta = meta
    self.classes = list(meta["stage1"]["classes"])
    # stage-1 classes that count as white dwarfs for the two-stage candidate rule
    self.wd_classes = [c for c in self.classes if c.upper().startswith("WD")]
    self.wd_index = int(meta["stage2"].get("positive_index", 1))
    self.npix = int(meta.get("input_pixels", 3700))
    self.models = {k: models.get(meta[k]["model"], **meta[k].get("config", {}))
                   for k in ("stage1", "stage2")}
    self.variables = {k: stages[k] for k in ("stage1", "stage2")}
    self.temperature = {k: float(meta[k].get("temperature", 1.0)) for k in ("stage1", "stage2")}

  @classmethod
  def load(cls, spec=None):
    """From a bundle path, 'torch:a.pt,b.pt', or None for the bundled model."""
    from astrotl import checkpoint
    if spec and spec.startswith("torch:"):
      return cls.from_torch(*spec[len("torch:"):].split(","))
    if spec is None:
      from astrotl import data
      spec = data.sample_dir("models") / "wd_two_stage.npz"
      if not spec.exists():
        raise FileNotFoundError(f"{spec}: the bundled model is missing; train it with "
                                "experiments/wd_search.py or pass --model")
    trees, meta = checkpoint.load_bundle(spec)
    missing = [k for k in ("stage1", "stage2") if k not in trees or k not in meta]
    if missing:
      raise checkpoint.CheckpointError(f"{spec}: model bundle lacks {missing}")
    meta.setdefault("source", str(spec))
    return cls(trees, meta)

  @classmethod
  def from_torch(cls, stage1_pt, stage2_pt):
    """Tan et al.'s published PyTorch weights (7_cnn_model.pt, 2_cnn_model.pt)."""
    from astrotl.io import weights
    from astrotl.preprocess.spectra import DEFAULT_CLASSES
    stages, meta = {}, {"source": f"torch:{stage1_pt},{stage2_pt}", "input_pixels": 3700}
    for key, path, classes in (("stage1", stage1_pt, list(DEFAULT_CLASSES)),
                               ("stage2", stage2_pt, ["other", "WD"])):
      sd = weights.load_torch(path)
      stages[key] = weights.tan_cnn1d(sd, num_classes=len(classes))
      meta[key] = {"model": "cnn1d", "config": {"num_classes": len(classes)}, "classes": classes,
                   "temperature": 1.0}
    return cls(stages, meta)

  def make_fn(self, mesh):
    """jit-compiled (u, flux, ivar, mask) raw batches -> (stage-1 probs, P(WD))."""
    import jax
    import jax.numpy as jnp
    from astrotl.preprocess import spectra

    m1, m2 = self.models["stage1"], self.models["stage2"]
    t1, t2 = self.temperature["stage1"], self.temperature["stage2"]
    wd, npix = self.wd_index, self.npix

    def fn(variables, u, flux, ivar, mask):
      f, _, bad = spectra.resample_pixels(u, flux, ivar, mask, xp=jnp)
      x = spectra.tan_normalise(f, bad, xp=jnp, npix=npix)
      p1 = jax.nn.softmax(m1.apply(variables["stage1"], x) / t1, axis=-1)
      p2 = jax.nn.softmax(m2.apply(variables["stage2"], x) / t2, axis=-1)[:, wd]
      return p1, p2

    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(fn, in_shardings=(repl, data, data, data, data), out_shardings=(data, data))

  def identity(self) -> str:
    """Hash of the weights and config, so a resumed scan cannot mix two models."""
    from astrotl import surgery
    h = hashlib.sha256(json.dumps({k: self.meta[k] for k in ("stage1", "stage2")},
                                  sort_keys=True, default=str).encode())
    for k in ("stage1", "stage2"):
      for name, v in surgery.flatten(self.variables[k]).items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(np.asarray(v, np.float32)).tobytes())
    return h.hexdigest()[:16]


# --- chunks and the journal -------------------------------------------------------------

def _chunk_name(i):
  return f"chunk_{i:06d}"


def chunk_done(out: pathlib.Path, i: int) -> bool:
  return (out / "chunks" / f"{_chunk_name(i)}.parquet").exists()


def _write_atomic(path: pathlib.Path, write):
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  write(tmp)
  os.replace(tmp, path)


def write_chunk(out: pathlib.Path, i: int, rows: dict, errors: list):
  """Errors first, then the rows file, whose atomic appearance marks the chunk done."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  d = out / "chunks"

  def write_errors(tmp):
    with open(tmp, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["file", "reason"])
      w.writerows(errors)

  _write_atomic(d / f"{_chunk_name(i)}.errors.csv", write_errors)
  _write_atomic(d / f"{_chunk_name(i)}.parquet",
                lambda tmp: pq.write_table(pa.table(rows), tmp))
  with open(out / "journal.jsonl", "a") as f:
    f.write(json.dumps({"chunk": i, "rows": len(rows["file"]), "errors": len(errors),
                        "process": _process_index(), "time": time.time()}) + "\n")


def _process_index():
  import jax
  return jax.process_index()


def check_manifest(out: pathlib.Path, manifest: dict):
  """Refuses to resume into --out that holds a scan of other inputs or another model."""
  path = out / "scan.json"
  if path.exists():
    old = json.loads(path.read_text())
    for key in ("inputs_sha256", "n_inputs", "chunk_size", "model"):
      if old.get(key) != manifest.get(key):
        raise SystemExit(f"{out} holds a scan with a different {key} ({old.get(key)} vs "
                         f"{manifest.get(key)}); use a new --out, or delete {out}/chunks to "
                         "start over")
  elif _process_index() == 0:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))


# --- scanning ---------------------------------------------------------------------------

def _decode_task(args):
  paths, raw_len = args
  return io_batch.decode_many(paths, raw_len)


class Decoder:
  """Decodes lists of files in worker processes (or inline with workers=0), in order."""

  def __init__(self, workers: int):
    self.workers = workers
    self.pool = None
    if workers > 0:
      # spawn: forking a process that already runs XLA threads is unsafe
      ctx = multiprocessing.get_context("spawn")
      self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)

  def map(self, paths):
    tasks = [(paths[i:i + _TASK], io_batch.RAW_LEN) for i in range(0, len(paths), _TASK)]
    if self.pool is None:
      return map(_decode_task, tasks)
    return self.pool.map(_decode_task, tasks)

  def close(self):
    if self.pool is not None:
      self.pool.shutdown(cancel_futures=True)


def _meta_value(meta, key, kind):
  v = meta.get(key)
  if v is None:
    return np.nan if kind is float else ("" if kind is str else -1)
  try:
    return kind(v)
  except (TypeError, ValueError):
    return np.nan if kind is float else ("" if kind is str else -1)


def scan_chunk(paths, decoder, model, fn, variables, mesh, batch_size, bar=None):
  """Rows (dict of columns) and errors [(file, reason)] for one chunk of paths."""
  import jax
  rows_meta, rows_file, errors = [], [], []
  pending = []  # (device outputs, number of real rows)
  buf = {k: [] for k in ("u", "flux", "ivar", "mask")}

  def flush():
    n = sum(len(a) for a in buf["u"])
    if n == 0:
      return
    host = {k: np.concatenate(v) for k, v in buf.items()}
    host, _ = parallel.pad_rows(host, batch_size)
    arrays = parallel.shard_batch(host, mesh, batch_size)
    pending.append((fn(variables, arrays["u"], arrays["flux"], arrays["ivar"], arrays["mask"]), n))
    for v in buf.values():
      v.clear()

  offset = 0
  for good, arrays, metas, errs in decoder.map(paths):
    for i, path, reason in errs:
      errors.append((path, reason))
    for j, idx in enumerate(good):
      rows_file.append(paths[offset + idx])
      rows_meta.append(metas[j])
    start = 0
    while start < len(good):
      room = batch_size - sum(len(a) for a in buf["u"])
      take = min(room, len(good) - start)
      for k in buf:
        buf[k].append(arrays[k][start:start + take])
      start += take
      if sum(len(a) for a in buf["u"]) == batch_size:
        flush()
    offset += _TASK
    if bar is not None:
      bar.update(len(good) + len(errs))
  flush()
  p1 = [np.asarray(jax.device_get(o[0]))[:n] for o, n in pending]
  p2 = [np.asarray(jax.device_get(o[1]))[:n] for o, n in pending]
  p1 = np.concatenate(p1) if p1 else np.zeros((0, len(model.classes)), np.float32)
  p2 = np.concatenate(p2) if p2 else np.zeros((0,), np.float32)
  rows = {
      "obsid": np.array([_meta_value(m, "obsid", int) for m in rows_meta], np.int64),
      "file": np.array(rows_file, dtype=str),
      "designation": np.array([_meta_value(m, "designation", str) for m in rows_meta], dtype=str),
      "ra": np.array([_meta_value(m, "ra", float) for m in rows_meta], np.float64),
      "dec": np.array([_meta_value(m, "dec", float) for m in rows_meta], np.float64),
      "snr_g": np.array([_meta_value(m, "snr_g", float) for m in rows_meta], np.float64),
      "survey_class": np.array([_meta_value(m, "class", str) for m in rows_meta], dtype=str),
      "survey_subclass": np.array([_meta_value(m, "subclass", str) for m in rows_meta], dtype=str),
  }
  for c, name in enumerate(model.classes):
    rows[f"p_{name}"] = p1[:, c].astype(np.float32)
  rows["pred_class"] = np.array([model.classes[i] for i in p1.argmax(-1)] if len(p1) else [],
                                dtype=str)
  rows["p_wd"] = p2.astype(np.float32)
  return rows, errors


def run(paths, out, model, batch_size=256, chunk_size=4096, workers=None,
        progress=True, mesh=None):
  """Scans `paths` into `out`/chunks (skipping finished chunks); returns run statistics."""
  import jax
  out = pathlib.Path(out)
  (out / "chunks").mkdir(parents=True, exist_ok=True)
  mesh = mesh or parallel.make_mesh(jax.local_devices())
  n_dev = mesh.devices.size
  batch_size = max(n_dev, batch_size // n_dev * n_dev)
  manifest = {"inputs_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
              "n_inputs": len(paths), "chunk_size": chunk_size, "model": model.identity(),
              "model_source": model.meta.get("source")}
  check_manifest(out, manifest)
  n_chunks = (len(paths) + chunk_size - 1) // chunk_size
  mine = [i for i in range(n_chunks) if i % jax.process_count() == jax.process_index()]
  todo = [i for i in mine if not chunk_done(out, i)]
  n_todo = sum(len(paths[i * chunk_size:(i + 1) * chunk_size]) for i in todo)
  fn = model.make_fn(mesh)
  variables = parallel.replicate(model.variables, mesh)
  workers = os.cpu_count() if workers is None else workers
  bar = None
  if progress and n_todo:
    from tqdm import tqdm
    bar = tqdm(total=n_todo, unit="spec", dynamic_ncols=True, smoothing=0.05,
               desc=f"scan[{jax.process_index()}]" if jax.process_count() > 1 else "scan")
  decoder = Decoder(min(workers, max(1, n_todo // _TASK)) if workers else 0)
  t0 = time.time()
  done = 0
  try:
    for i in todo:
      chunk = paths[i * chunk_size:(i + 1) * chunk_size]
      rows, errors = scan_chunk(chunk, decoder, model, fn, variables, mesh, batch_size, bar)
      write_chunk(out, i, rows, errors)
      done += len(chunk)
  finally:
    decoder.close()
    if bar is not None:
      bar.close()
  seconds = time.time() - t0
  return {"n_chunks": n_chunks, "chunks_this_run": len(todo), "files_this_run": done,
          "seconds_this_run": seconds}


# --- merging and the report -------------------------------------------------------------

def _columns(table) -> dict:
  out = {}
  for c in table.column_names:
    v = table[c].to_numpy(zero_copy_only=False)
    out[c] = v.astype(str) if v.dtype == object else v
  return out


def merge(out, n_inputs, chunk_size, model, threshold=0.5, known=None, known_ra=None,
          known_dec=None, radius=3.0, top=12, stats=None, explain=False, two_stage=True):
  """Joins chunk files into the final outputs; returns the summary dict.

  Streams chunk by chunk, so memory holds one chunk, the candidates and one float per
  spectrum (for the histogram) -- enough for a whole survey.
  """
  import collections
  import pyarrow as pa
  import pyarrow.compute as pc
  import pyarrow.parquet as pq
  out = pathlib.Path(out)
  n_chunks = (n_inputs + chunk_size - 1) // chunk_size
  missing = [i for i in range(n_chunks) if not chunk_done(out, i)]
  if missing:
    raise SystemExit(f"{out}: chunks {missing[:10]} are not finished; re-run the same command")
  errors, p_wd, cands, best = [], [], [], None
  counts = collections.Counter()
  tmp = out / f".predictions.parquet.{os.getpid()}.tmp"
  writer = None
  for i in range(n_chunks):
    with open(out / "chunks" / f"{_chunk_name(i)}.errors.csv", newline="") as f:
      errors += list(csv.reader(f))[1:]
    t = pq.read_table(out / "chunks" / f"{_chunk_name(i)}.parquet")
    if writer is None:
      writer = pq.ParquetWriter(tmp, t.schema)
    writer.write_table(t)
    p_wd.append(t["p_wd"].to_numpy())
    counts.update(t["pred_class"].to_pylist())
    keep = pc.greater_equal(t["p_wd"], threshold)
    if two_stage:
      keep = pc.and_(keep, pc.is_in(t["pred_class"], value_set=pa.array(model.wd_classes)))
    cands.append(t.filter(keep))
    best = t if best is None else pa.concat_tables([best, t])
    best = best.take(np.argsort(-best["p_wd"].to_numpy(), kind="stable")[:top])
  if writer is not None:
    writer.close()
    os.replace(tmp, out / "predictions.parquet")
  _write_atomic(out / "errors.csv", lambda t: _write_csv(t, ["file", "reason"], errors))
  p_wd = np.concatenate(p_wd) if p_wd else np.zeros(0, np.float32)
  cand_cols = _columns(pa.concat_tables(cands)) if cands else {}
  n_cand = len(cand_cols.get("p_wd", ()))
  cand_cols["known"] = np.zeros(n_cand, bool)
  cand_cols["known_sep_arcsec"] = np.full(n_cand, np.nan)
  n_known = 0
  if known and n_cand:
    ktable = io_catalog.read_table(known)
    kra, kdec = io_catalog.radec(ktable, known, known_ra, known_dec)
    idx, sep = io_catalog.crossmatch(cand_cols["ra"], cand_cols["dec"], kra, kdec, radius)
    cand_cols["known"] = idx >= 0
    cand_cols["known_sep_arcsec"] = np.where(idx >= 0, sep, np.nan)
    n_known = int((idx >= 0).sum())
  if n_cand:
    order = np.argsort(-cand_cols["p_wd"], kind="stable")
    cand_cols = {k: v[order] for k, v in cand_cols.items()}
  _write_candidates(out / "candidates.fits", cand_cols, threshold, known, radius)
  seconds = (stats or {}).get("seconds_this_run", float("nan"))
  files = (stats or {}).get("files_this_run", 0)
  summary = {"n_inputs": n_inputs, "n_scanned": int(len(p_wd)), "n_errors": len(errors),
             "n_candidates": n_cand, "n_known": n_known, "threshold": threshold,
             "rule": (f"P(WD) >= {threshold} and stage 1 in {model.wd_classes}" if two_stage
                      else f"P(WD) >= {threshold}"),
             "known_catalog": known, "radius_arcsec": radius,
             "seconds": seconds, "files_this_run": files,
             "spectra_per_second": files / seconds if seconds and seconds > 0 else None,
             "model": model.meta.get("source"), "classes": model.classes,
             "predicted_classes": dict(sorted(counts.items()))}
  _write_atomic(out / "summary.json", lambda t: t.write_text(json.dumps(summary, indent=1)))
  top_cols = _columns(best) if best is not None else {"file": np.array([], str)}
  write_report(out, p_wd, top_cols, summary, model, explain)
  return summary


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _write_candidates(path, cols, threshold, known, radius):
  from astropy.table import Table
  t = Table({k: v for k, v in cols.items()})
  t.meta["THRESH"] = threshold
  t.meta["KNOWNCAT"] = os.path.basename(known) if known else "none"
  t.meta["RADIUS"] = radius
  _write_atomic(path, lambda tmp: t.write(tmp, format="fits", overwrite=True))


def write_report(out, p_wd, top, summary, model, explain=False):
  """report.md with the P(WD) histogram and the highest-scoring spectra (`top` columns)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from astrotl import io as aio
  from astrotl.preprocess import spectra

  fig, ax = plt.subplots(figsize=(6, 4))
  ax.hist(p_wd, bins=np.linspace(0, 1, 41), color="steelblue")
  ax.axvline(summary["threshold"], color="crimson", ls="--", label="threshold")
  ax.set_yscale("log")
  ax.set_xlabel("calibrated P(white dwarf)")
  ax.set_ylabel("spectra")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "wd_probability.png", dpi=110)
  plt.close(fig)

  # the highest-scoring spectra, candidates or not, so the plot is never empty
  cols = top
  order = np.arange(len(cols["file"]))
  wave = spectra.wavelength_grid()
  n = max(len(order), 1)
  fig, axes = plt.subplots(n, 1, figsize=(8, 1.6 * n), sharex=True, squeeze=False)
  for ax, i in zip(axes[:, 0], order):
    try:
      s = aio.read(cols["file"][i])
      f, _, bad = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
      x = spectra.tan_normalise(f, bad, npix=len(wave))
      ax.plot(wave, x, lw=0.6, color="k")
    except Exception as e:  # the report must not fail the scan
      ax.text(0.5, 0.5, f"unreadable: {e}", transform=ax.transAxes, ha="center")
    ax.set_title(f"{os.path.basename(cols['file'][i])}  P(WD)={cols['p_wd'][i]:.3f}  "
                 f"pred={cols['pred_class'][i]}  survey={cols['survey_subclass'][i]}",
                 fontsize=7, loc="left")
    for line in (4102, 4341, 4862, 6564):
      ax.axvline(line, color="tab:red", lw=0.4, alpha=0.5)
  axes[-1, 0].set_xlabel("wavelength [A]")
  fig.tight_layout()
  fig.savefig(out / "top_candidates.png", dpi=110)
  plt.close(fig)

  cam_note = ""
  if explain and len(order):
    cam_note = _explain(out, cols, order, model)

  lines = [
      "# astrotl white-dwarf scan", "",
      f"- inputs: {summary['n_inputs']}; scanned: {summary['n_scanned']}; "
      f"unreadable: {summary['n_errors']} (errors.csv)",
      f"- candidates ({summary['rule']}): {summary['n_candidates']}; "
      f"known (within {summary['radius_arcsec']}\" of {summary['known_catalog'] or 'no catalog given'}): "
      f"{summary['n_known']}",
      f"- model: {summary['model']}",
      f"- this run: {summary['files_this_run']} files in {summary['seconds']:.1f} s"
      + (f" ({summary['spectra_per_second']:.1f} spectra/s)" if summary["spectra_per_second"] else ""),
      "", "Predicted classes (stage 1):", "",
  ]
  lines += [f"- {n}: {c}" for n, c in summary["predicted_classes"].items()]
  lines += ["", "![P(WD) histogram](wd_probability.png)", "",
            "![highest-scoring spectra](top_candidates.png)", cam_note]
  (out / "report.md").write_text("\n".join(lines) + "\n")


def _explain(out, cols, order, model):
  try:
    from astrotl import explain
  except ImportError:
    return "\n(--explain: astrotl.explain is not available in this installation)\n"
  from astrotl import io as aio
  from astrotl.preprocess import spectra
  xs, names = [], []
  for i in order:
    try:
      s = aio.read(cols["file"][i])
    except Exception:
      continue
    f, _, bad = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    xs.append(spectra.tan_normalise(f, bad, npix=model.npix))
    names.append(os.path.basename(cols["file"][i]))
  if not xs:
    return ""
  x = np.stack(xs)
  cams = np.asarray(explain.cam(model.models["stage2"], model.variables["stage2"], x,
                                target=np.full(len(x), model.wd_index)))
  wave = spectra.wavelength_grid()[:model.npix]
  (out / "cam").mkdir(exist_ok=True)
  for name, flux, c in zip(names, x, cams):
    explain.plot_cam(wave, flux, c, out / "cam" / f"{name}.png")
  return f"\nClass-activation maps of the top {len(names)} spectra: cam/\n"


# --- entry point ------------------------------------------------------------------------

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  parallel.initialize(FLAGS.distributed)
  import jax
  out = pathlib.Path(FLAGS.out)
  if FLAGS.spectra and FLAGS.catalog:
    raise app.UsageError("give --spectra or --catalog, not both")
  paths, _ = list_inputs(FLAGS.spectra, FLAGS.catalog, FLAGS.root, FLAGS.path_column)
  if not paths:
    raise app.UsageError("no input spectra found")
  model = ScanModel.load(FLAGS.model)
  is_main = jax.process_index() == 0
  if is_main:
    logging.info("scanning %d spectra with %s into %s", len(paths), model.meta.get("source"), out)
  stats = run(paths, out, model, FLAGS.batch_size, FLAGS.chunk_size, FLAGS.workers,
              FLAGS.progress and is_main)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("astrotl.scan: all chunks written")
  if not is_main:
    return
  summary = merge(out, len(paths), FLAGS.chunk_size, model, FLAGS.threshold, FLAGS.known,
                  FLAGS.known_ra_column, FLAGS.known_dec_column, FLAGS.radius, FLAGS.top, stats,
                  FLAGS.explain, FLAGS.two_stage)
  rate = summary["spectra_per_second"]
  print(f"astrotl.scan: {summary['n_scanned']} spectra scanned, {summary['n_errors']} unreadable, "
        f"{summary['n_candidates']} candidates ({summary['n_known']} known) in "
        f"{summary['seconds']:.1f} s" + (f" ({rate:.0f} spectra/s)" if rate else "")
        + f" -> {out}", file=sys.stdout)


FLAGS = flags.FLAGS

if __name__ == "__main__":
  define_flags()
  app.run(main)
