"""`python -m astrotl.classify_lightcurves`: classify every light curve of a folder, glob or
catalog with a light-curve model (default: the bundled UPSILoN-T, Kim et al. 2021).

    python -m astrotl.classify_lightcurves --lightcurves=curves/ --out=lc-run
    python -m astrotl.classify_lightcurves --lightcurves=stars.csv --root=/data/curves

With no --lightcurves it classifies the two EROS-2 sample curves bundled with astrotl.
From Python: `astrotl.classify_lightcurves.classify(lightcurves=..., out=...)`.

Inputs: folders (searched for `io.lightcurve.SUFFIXES`), files or globs, or one catalog
(CSV/FITS with a file column, `io.catalog.PATH_ALIASES` or --path_column; paths relative
to --root, default its folder): every other catalog column is carried into the
predictions as cat_<name>, and a label column (LABEL_ALIASES) is compared with the
predicted classes in summary.json.  Files are read by `io.lightcurve.read_curve`.

Many stars in one file (a survey's light-curve table, e.g. MACHO's rows of
fieldid,tileid,seqn,...): --id_column=fieldid,tileid,seqn splits each file by star
(`io.lightcurve.read_stars`); every star is then one row of predictions or one row of
errors, with an `id` column holding its id columns' values joined by "." ("1.3441.1214").

Outputs in --out: predictions.parquet (one row per classified curve: file[, id], cat_*,
n_points, the 16 UPSILoN features and p_<class>, pred_class, with units and
descriptions), predictions.fits (the same, up to FITS_MAX_ROWS rows), errors.csv
(file,reason -- with --id_column file,id,reason, id empty when the whole file failed --
for every input or star without a row: unreadable, too few points, ...; each is in
exactly one of the two), summary.json.

It runs on the scan's machinery: the input listing (scan.inputs), reading in worker
processes with a time limit per file (scan.workers), and chunks saved atomically and
journaled (scan.chunks), so re-running a killed run's command resumes it and gives each
input exactly once.  Features are computed batched under jit (`astrotl.lightcurves`).
"""

import functools
import json
import os
import time

import numpy as np

from astrotl.scan import InputError, Interrupted, OutputError  # noqa: F401 (the CLI's errors)

FITS_MAX_ROWS = 200_000
LABEL_ALIASES = ("label", "class", "type", "target", "true_class", "var_type")
SMALL_RUN = 200   # fewer inputs are read in this process (starting workers costs more)


def classify(lightcurves=None, out="astrotl-lightcurves", model=None, root=None,
             path_column=None, allow_outside_root=False, max_missing=0.5, time_column=None,
             mag_column=None, err_column=None, id_column=None, max_file_mb=64.0,
             batch_size=256, chunk_size=0, workers=None, time_limit=60.0, progress=True,
             log=print):
  """Classifies light curves into `out`; returns the summary dict (see the module docstring).

  `id_column` (names or 0-based numbers, a list or comma-separated) splits every file into
  stars.  Bad arguments raise InputError, OutputError or BundleError before any file is
  decoded (an id column missing from the first readable input is one of them).
  On SIGINT/SIGTERM (raised as scan.Interrupted by the command line, or
  KeyboardInterrupt) finished chunks are kept and the exception gets `.saved`.
  """
  from astrotl import bundle, lightcurves as lc, scan
  from astrotl.io import lightcurve as io_lc
  from astrotl.scan import chunks, workers as w
  t_start = time.time()
  scan.check_ranges(batch_size=batch_size, chunk_size=chunk_size, workers=workers,
                    time_limit=time_limit, max_missing=max_missing, max_file_mb=max_file_mb)
  ids = check_id_column(id_column)
  found, carried = find_inputs(lightcurves, root, path_column, allow_outside_root)
  m = bundle.load_model(model or "upsilont")
  lc.check_model(m)
  paths = found.paths
  max_bytes = int(max_file_mb * 2**20)
  reader = {"time_column": time_column, "mag_column": mag_column, "err_column": err_column}
  if ids:  # only then, so runs without it resume as before
    reader["id_column"] = ids
    check_id_columns_in(paths, reader, max_bytes)
  chunk_size = chunk_size or chunks.auto_chunk_size(len(paths))
  store = chunks.Store(out, len(paths), chunk_size)
  if workers is None:
    workers = 0 if len(paths) < SMALL_RUN else os.cpu_count()
  pool = None
  try:
    store.open({"inputs_sha256": chunks.inputs_digest(paths), "n_inputs": len(paths),
                "chunk_size": chunk_size, "model": m.identity(), "model_source": m.source,
                "cascade": None, "reader": dict(reader, max_bytes=max_bytes)})
    pool = w.DecodePool(workers, time_limit, raw_len=max_bytes,
                        decode=functools.partial(io_lc.read_many, **reader))
    for i in range(store.n_chunks):
      store.verify(i, log)  # a damaged chunk (its record's sha256) is set aside: redone below
    already = store.n_done_inputs()
    todo = [i for i in range(store.n_chunks) if not store.done(i)]
    n_todo = sum(b - a for a, b in map(store.span, todo))
    if already:
      log(f"astrotl.classify_lightcurves: resuming in {out}: {already} of {len(paths)} inputs "
          "already done")
    t0 = time.time()
    if todo:
      # the scan's bar counts saved rows + errors, i.e. stars with ids, whose number is
      # unknown before reading: then the runner counts files itself
      bar = None
      if progress and ids:
        from tqdm import tqdm
        bar = tqdm(total=n_todo, unit="file", dynamic_ncols=True, smoothing=0.1, desc="read")
      try:
        scan.run_chunks(Runner(m, batch_size, carried, bool(ids), bar), pool, store, todo,
                        found, 0, progress and not ids, n_todo, unit="curve")
      finally:
        if bar is not None:
          bar.close()
    seconds = time.time() - t0
    stats = {"files_this_run": n_todo, "seconds": seconds,
             "curves_per_second": n_todo / seconds if n_todo and seconds > 0 else None,
             "n_already_done": already, "workers": workers, "reader": reader,
             "max_file_mb": max_file_mb}
    summary = merge(store, m, found, carried, stats, ids)
  finally:
    if pool is not None:
      pool.close()
    store.close()
  summary["wall_seconds"] = time.time() - t_start
  summary["too_many_missing"] = bool(found.missing > max_missing * len(paths))
  return summary


def check_id_column(id_column):
  """--id_column as a list of columns, [] when not given; InputError if malformed."""
  from astrotl.io import lightcurve as io_lc
  if id_column is None or (isinstance(id_column, str) and not id_column.strip()):
    return []
  try:
    ids = io_lc.id_columns(id_column)
  except ValueError:
    raise InputError(f"--id_column={id_column}: give one column name or number, or several "
                     "separated by commas (e.g. fieldid,tileid,seqn)") from None
  return [c if isinstance(c, str) else int(c) for c in ids]


ID_CHECK_FILES = 5   # inputs tried for a readable header before --id_column is trusted


def check_id_columns_in(paths, reader, max_bytes):
  """Raises InputError (one line: the file, the column, the file's columns) if the first
  readable input lacks an --id_column column, before the run starts; inputs that cannot
  be read are left to the run, which lists them in errors.csv."""
  from astrotl.io import lightcurve as io_lc
  for path in paths[:ID_CHECK_FILES]:
    try:
      next(io_lc.read_stars(path, max_bytes=max_bytes, **reader), None)
    except io_lc.LightCurveError as e:
      if "id_column=" in e.reason:   # the reader's message for a column the file lacks
        raise InputError(f"{e.path}: --{e.reason}") from None
    except Exception:  # a reader bug costs this file in the run (errors.csv), not the run
      pass
    else:
      return


def find_inputs(lightcurves, root=None, path_column=None, allow_outside_root=False):
  """(scan.inputs.Inputs, {catalog column: output column} to carry) for --lightcurves."""
  from astrotl import bundle, data
  from astrotl.io import catalog as io_catalog, lightcurve as io_lc
  from astrotl.scan import inputs
  flag = "--lightcurves"
  if not lightcurves:
    lightcurves = str(data.sample_dir("lightcurves"))
  if not inputs.is_catalog(lightcurves, path_column):
    if root or path_column:
      raise InputError(f"--root and --path_column apply to a catalog; {flag}={lightcurves} is "
                       "not one (a CSV/FITS table with a file or path column)")
    return inputs.from_files(lightcurves, io_lc.SUFFIXES, flag), {}
  found = inputs.from_catalog(lightcurves, root, path_column, allow_outside_root,
                              io_lc.SUFFIXES, flag)
  if not found.paths:
    raise InputError(f"{flag}={lightcurves}: no row can be classified ({len(found.refused)} "
                     f"refused, {len(found.duplicates)} duplicates)")
  if found.missing == len(found.paths):
    raise InputError(f"{flag}={lightcurves}: none of its {found.missing} files exist under "
                     f"{root or os.path.dirname(os.path.abspath(lightcurves))}; check --root")
  path_col = io_catalog.find_column(found.table, io_catalog.PATH_ALIASES, lightcurves,
                                    override=path_column)
  carried, seen = {}, set()
  for c in found.table:
    name = "cat_" + bundle.column_name(c).lower()
    if c != path_col and name not in seen:   # unique ignoring case (TOPCAT, cfitsio)
      carried[c] = name
      seen.add(name)
  return found, carried


class Runner:
  """Makes the rows of one chunk: read curves in, features + networks, a table out."""

  def __init__(self, model, batch_size, carried, ids=False, bar=None):
    self.model, self.batch_size, self.carried, self.ids = model, batch_size, carried, ids
    self.bar = bar   # a progress bar of files, updated as each chunk's files are read

  def scan_chunk(self, results, first, inputs):
    """(arrow table, [(file, reason)] or with ids [(file, id, reason)]) of one chunk from
    the pool's results (see scan.run_chunks); the chunk's inputs start at input `first`."""
    from astrotl import lightcurves as lc
    files, stars, curves, errors = [], [], [], []
    for task_paths, (good, arrays, metas, errs) in results:
      errors += [(p, "", r) if self.ids else (p, r) for _, p, r in errs]
      if good:
        files += [task_paths[i] for i in good]
        stars += [meta.get("id", "") for meta in metas]
        curves += list(arrays)
      if self.bar is not None:
        self.bar.update(len(task_paths))
    kept, cols, errs = (lc.classify(self.model, curves, batch_size=self.batch_size) if curves
                        else ([], {}, []))
    errors += [(files[i], stars[i], reason) if self.ids else (files[i], reason)
               for i, reason in errs]
    return self.table([files[i] for i in kept], [stars[i] for i in kept], cols, inputs,
                      first), errors

  def table(self, files, stars, cols, inputs, first):
    import pyarrow as pa
    from astrotl import lightcurves as lc
    from astrotl.scan import tables
    out = {"file": tables.to_arrow(files, "str")}
    if self.ids:
      out["id"] = tables.to_arrow(stars, "str")
    if self.carried:
      rows = _catalog_rows(inputs, files, first)
      for c, name in self.carried.items():
        out[name] = tables.to_arrow(np.asarray(inputs.table[c])[rows])
    for k in lc.column_info(self.model):
      kind = "int" if k == "n_points" else "str" if k in ("pred_class", "class1") else None
      out[k] = tables.to_arrow(cols.get(k, np.zeros(0, str if kind == "str" else float)), kind)
    return pa.table(out)


def _catalog_rows(inputs, files, first):
  """inputs.catalog_rows for `files` in which a file split into stars repeats (adjacent)."""
  if not files:
    return np.zeros(0, np.int64)
  starts = [k for k in range(len(files)) if k == 0 or files[k] != files[k - 1]]
  rows = inputs.catalog_rows([files[k] for k in starts], first)
  return np.repeat(rows, np.diff(starts + [len(files)]))


def column_info(model, carried, ids=False) -> dict:
  """{column: (description, unit)} of predictions.parquet."""
  from astrotl import lightcurves as lc
  info = {"file": ("light-curve file as read", "")}
  if ids:
    info["id"] = ("star: its --id_column values joined by '.'", "")
  info.update({name: (f"catalog column {c}", "") for c, name in carried.items()})
  info.update(lc.column_info(model))
  return info


def merge(store, model, found, carried, stats, ids=()) -> dict:
  """predictions.parquet (+ .fits), errors.csv and summary.json from the finished chunks."""
  import pyarrow.parquet as pq
  from astrotl.io import catalog as io_catalog
  from astrotl.scan import merge as smerge
  from astrotl.scan.chunks import write_atomic
  out = store.out
  info = column_info(model, carried, bool(ids))
  lengths = smerge.string_lengths(store)
  label = io_catalog.find_column(found.table, LABEL_ALIASES) if found.table is not None else None
  label = carried.get(label)
  writer, errors, n_rows, classes, versus = None, [], 0, {}, {}
  smerge.check_chunks(store)  # rows against each chunk's record, before any is read
  tmp = out / f".predictions.parquet.{os.getpid()}.tmp"
  try:
    with smerge.writing(out / "predictions.parquet"):  # a full disk: one line
      for i in range(store.n_chunks):
        t, errs = store.read(i)
        errors += errs
        if writer is None:
          writer = pq.ParquetWriter(tmp, smerge.schema_with_meta(t.schema, info, lengths))
        writer.write_table(t.cast(writer.schema))
        n_rows += t.num_rows
        pred = [str(v) for v in t["pred_class"].to_pylist()] if "pred_class" in t.column_names \
            else []
        for p in pred:
          classes[p] = classes.get(p, 0) + 1
        if label:
          for truth, p in zip(t[label].to_pylist(), pred):
            row = versus.setdefault(str(truth), {})
            row[p] = row.get(p, 0) + 1
      writer.close()
      os.replace(tmp, out / "predictions.parquet")
  finally:
    tmp.unlink(missing_ok=True)
  if n_rows <= FITS_MAX_ROWS:
    t = smerge.astropy_table(pq.read_table(out / "predictions.parquet"), info)
    t.meta = {"MODEL": str(model.name)[:60]}
    with smerge.writing(out / "predictions.fits"):
      write_atomic(out / "predictions.fits", lambda p: smerge.write_fits(p, t))
  else:
    (out / "predictions.fits").unlink(missing_ok=True)  # a stale copy would mislead
  errors += [(p, "", f"refused: {reason}") if ids else (p, f"refused: {reason}")
             for _, p, reason in found.refused]
  header = ["file", "id", "reason"] if ids else ["file", "reason"]
  with smerge.writing(out / "errors.csv"):
    write_atomic(out / "errors.csv", lambda p: smerge.write_csv(p, header, errors))
  about = model.meta.get("about") or {}
  summary = {
      "n_inputs": store.n_inputs + len(found.refused), "n_classified": n_rows,
      "n_errors": len(errors), "model": model.name, "model_source": model.source,
      "classes": model.classes, "trained_on": about.get("trained_by"),
      "predicted_classes": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
      "source": found.source, "n_duplicate_rows": len(found.duplicates),
      "n_refused_rows": len(found.refused), "n_missing_files": found.missing,
      "predictions_fits": n_rows <= FITS_MAX_ROWS,
  }
  if ids:  # stars: each one row of predictions or of errors (id empty: a whole file)
    summary["id_column"] = list(ids)
    summary["n_stars"] = n_rows + sum(1 for e in errors if e[1])
  if label:
    summary["label_column"] = label
    summary["labels_vs_predicted"] = versus
  summary.update(stats)
  with smerge.writing(out / "summary.json"):
    write_atomic(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1)))
  return summary
