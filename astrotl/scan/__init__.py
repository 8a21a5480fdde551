"""`python -m astrotl.scan`: run a trained model over a survey and write a candidate catalog.

With no arguments it scans the spectra bundled with the package with the bundled
two-stage white-dwarf model, into ./astrotl-scan.  Typical survey use::

    python -m astrotl.scan --catalog=dr9_v1.0_LRS_catalogue.csv --root=/data/lamost/dr9 \\
        --known=known_wds.fits --out=/scratch/wd-scan

or from Python, `astrotl.scan.scan(catalog=..., root=..., out=...)`.

Data flows one way through small modules:
  inputs   files from folders, globs or a catalog, checked before any work; a catalog is
           read in blocks, its chunks are ranges of its rows, resolved as they are scanned;
  workers  decoding in processes with a per-file time limit (astrotl.io readers);
  runner   batches through one jit-compiled function on the local devices (resampling,
           normalisation and the networks, `astrotl.bundle.Model.make_fn`), overlapped
           with decoding and with chunk writes;
  chunks   the output folder: lock, manifest, journaled atomic chunks (resume exactly),
           each with a record of its files' sha256 (a damaged chunk is scanned again),
           with --embeddings each spectrum's embedding beside its row;
  merge    chunks -> predictions.parquet, candidates.fits/.vot, errors.csv, summary.json,
           with --anomalies=N anomalies.fits/.vot;
  report   report.md and its plots.
With --distributed each process scans the chunks i with i % processes == its index on
its own devices (inference needs no collectives), then process 0 merges.
"""

import importlib
import json
import os
import time

from astrotl import cli
from astrotl.cli import Interrupted  # noqa: F401 (SIGINT or SIGTERM; `.signum` says which)


def __getattr__(name):
  # The errors and submodules load on first use, so that `python -m astrotl.scan` sets its
  # signal handlers before numpy loads.
  if name in ("InputError", "OutputError"):
    return getattr(importlib.import_module(
        "astrotl.scan." + ("inputs" if name == "InputError" else "chunks")), name)
  if name in ("chunks", "inputs", "merge", "report", "runner", "tables", "workers"):
    return importlib.import_module(f"astrotl.scan.{name}")
  raise AttributeError(f"module 'astrotl.scan' has no attribute {name!r}")


def candidate_rule(model, select=None, threshold=None, min_snr=None, veto=None):
  """The rule the scan applies: the bundle's own, with the flags' changes, or --select."""
  from astrotl import rules
  if select:
    rule = rules.parse(select, list(model.columns()) + ["snr"], model.classes)
  else:
    rule = dict(model.rule) if model.rule else None
  if rule is None:
    if threshold is not None or min_snr or veto:
      raise rules.RuleError(f"model {model.name} has no candidate rule to adjust; give one "
                            "with --select (e.g. --select='A>=0.9')")
    return None
  if threshold is not None:
    if rule["type"] == "range":
      raise rules.RuleError("--threshold applies to a probability rule; give a range with --select")
    rule["threshold"] = float(threshold)
  if min_snr is not None:
    rule["min_snr"] = float(min_snr)
  if veto is not None:
    rule["veto"] = [v for v in veto if v]
  return rule


def scan(spectra=None, catalog=None, root=None, out="astrotl-scan", model=None, select=None,
         threshold=None, min_snr=None, veto=None, known=None, known_ra_column=None,
         known_dec_column=None, radius=3.0, path_column=None, allow_outside_root=False,
         max_missing=0.5, batch_size=256, chunk_size=0, workers=None, time_limit=60.0,
         mode="auto", top=12, explain=False, embeddings=False, anomalies=0, progress=True,
         log=print, catalog_limits=None, strict_known=False):
  """Scans spectra into `out` and returns the summary dict (None on processes other than 0).

  spectra: folders, files or globs (comma-separated text or a list); or catalog (+ root).
  embeddings: also store each spectrum's embedding (the primary network's penultimate
  features, float16) in the chunks, for `astrotl.similar`, and its anomaly score (the
  column `anomaly`; null when the bundle has no reference); anomalies: write the N most
  anomalous spectra to anomalies.fits/.vot.
  catalog_limits: what --catalog and --known may hold (io.limits.Limits, or its text:
  'rows=200M,bytes=40G'); strict_known: a --known row without a usable RA/Dec is an
  error rather than skipped (and counted in the summary).

  Re-running the same call continues where a killed or interrupted run stopped.  Bad
  arguments raise InputError, OutputError, BundleError or RuleError before any file is
  decoded.  Under the command line a SIGINT/SIGTERM sets `cli.STOP`, which this checks at
  safe points (between phases, batches and decoding waits); then, as on a
  KeyboardInterrupt, every finished chunk is kept and Interrupted is raised with `.saved`
  = the number of inputs saved so far.
  """
  from astrotl.scan.inputs import InputError
  cli.check()
  t_start = time.time()
  check_ranges(threshold=threshold, radius=radius, batch_size=batch_size,
               chunk_size=chunk_size, workers=workers, time_limit=time_limit, top=top,
               min_snr=min_snr, max_missing=max_missing, anomalies=anomalies)
  from astrotl import rules
  veto = rules.veto_classes(veto)  # a misspelt class fails now, before the catalog is read
  if anomalies and not embeddings:
    raise InputError("--anomalies needs --embeddings (the anomaly score is computed with them)")
  limits = catalog_limits_of(catalog_limits)
  found, known_cat, m, rule = prepare(spectra, catalog, root, path_column, allow_outside_root,
                                      known, known_ra_column, known_dec_column, radius, model,
                                      select, threshold, min_snr, veto, limits=limits,
                                      strict_known=strict_known)
  import jax
  from astrotl import parallel
  from astrotl.scan import chunks, merge as scan_merge, runner, workers as w
  cli.check()
  parallel.enable_compilation_cache()
  times = {"prepare": time.time() - t_start}
  n = found.n_items  # a catalog's chunks are ranges of its rows
  digest = found.digest or chunks.inputs_digest(found.paths)
  chunk_size = (chunk_size or chunks.resumed_chunk_size(out, digest)
                or chunks.auto_chunk_size(n, batch_size))
  n_proc, me = jax.process_count(), jax.process_index()
  main = me == 0
  if main and known_cat is not None and known_cat.warning():
    log(f"astrotl.scan: WARNING: {known_cat.warning()}")
  store = chunks.Store(out, n, chunk_size)
  opened = False
  # The decoders start first: their start-up overlaps the model's compilation.
  pool = w.DecodePool(os.cpu_count() if workers is None else workers, time_limit)
  try:
    # A batch never spans chunks: a chunk smaller than the batch would be mostly padding.
    run = runner.Runner(m, parallel.make_mesh(jax.local_devices()),
                        min(batch_size, chunk_size), mode, embed=embeddings)
    cli.check()
    store.open({"inputs_sha256": digest, "n_inputs": n,
                "chunk_size": chunk_size, "model": m.identity(), "model_source": m.source,
                "cascade": list(m.rule["classes"]) if run.mode == "cascade" else None,
                "embeddings": embedding_manifest(m) if embeddings else None}, main)
    opened = True
    for i in range(me, store.n_chunks, n_proc):  # each process its own chunks
      cli.check()  # summing a large scan's chunks takes a while
      store.verify(i, log)  # a damaged chunk is set aside: scanned again below
    already = store.n_done_inputs()
    todo = [i for i in range(store.n_chunks) if i % n_proc == me and not store.done(i)]
    n_todo = sum(b - a for a, b in map(store.span, todo))
    if main and already:
      log(f"astrotl.scan: resuming in {out}: {already} of {n} inputs already done")
    t0 = time.time()
    if todo:
      run.warm_up()
      # its wait for the imports of the merge (runner.Preload) is neither compiling nor
      # scanning
      times["compile"] = time.time() - t0 - run.preload_wait
      times["preload"] = run.preload_wait
      first = run_chunks(run, pool, store, todo, found, me, progress and main, n_todo)
      if first is not None:
        times["first_spectrum"] = first - t_start
    seconds = time.time() - t0 - run.preload_wait
    cli.check()
  except BaseException as e:
    _note_saved(e, store if opened else None)
    store.close()
    raise
  finally:
    pool.close()
  if n_proc > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("astrotl.scan: all chunks written")
  if not main:
    store.close()
    return None
  try:
    stats = {"files_this_run": n_todo, "seconds": seconds,
             "spectra_per_second": n_todo / seconds if n_todo and seconds > 0 else None,
             "n_already_done": already, "mode": run.mode,
             "host_wait_decode_s": run.wait_decode, "host_wait_device_s": run.wait_device,
             "decoders_replaced": pool.replaced, "timings": times}
    t1 = time.time()
    summary = scan_merge.merge(store, m, rule, known_cat, top, stats, found, explain,
                               embeddings, anomalies)
    times["merge_and_report"] = time.time() - t1
    summary["wall_seconds"] = time.time() - t_start
    summary["too_many_missing"] = bool(found.missing > max_missing * found.n_inputs)
    with scan_merge.writing(store.out / "summary.json"):
      chunks.write_atomic(store.out / "summary.json",
                          lambda p: p.write_text(json.dumps(summary, indent=1)))
    cli.check()  # a signal during the merge: the outputs are whole, but the user said stop
  except BaseException as e:
    _note_saved(e, store)
    raise
  finally:
    store.close()
  return summary


def _note_saved(e, store):
  """Gives an interrupt `.saved` (inputs in finished chunks) if nothing gave it one."""
  if (isinstance(e, (Interrupted, KeyboardInterrupt)) and store is not None
      and getattr(e, "saved", None) is None):
    e.saved = store.n_done_inputs()


def embedding_manifest(model) -> dict:
  """What a scan's stored embeddings and anomaly scores depend on beyond the weights."""
  ref = None
  if model.reference is not None:
    import hashlib
    h = hashlib.sha256(json.dumps(model.meta["reference"], sort_keys=True).encode())
    h.update(model.reference.tobytes())
    ref = h.hexdigest()[:16]
  return {"width": model.primary.embedding_width, "dtype": "float16", "reference": ref}


def catalog_limits_of(value):
  """io.limits.Limits from --catalog_limits text (or a Limits, or None for the defaults)."""
  from astrotl.io import limits as io_limits
  from astrotl.scan.inputs import InputError
  if isinstance(value, io_limits.Limits):
    return value
  try:
    return io_limits.Limits.parse(value, flag="--catalog_limits")
  except ValueError as e:
    raise InputError(f"--catalog_limits={value}: {e}") from None


def prepare(spectra, catalog, root, path_column, allow_outside_root, known, known_ra_column,
            known_dec_column, radius, model, select, threshold, min_snr, veto, *, limits=None,
            strict_known=False):
  """Every input checked before any work: (inputs, known catalog, model, candidate rule);
  `limits` (io.limits.Limits) bounds what the catalogs may hold."""
  from astrotl import bundle
  from astrotl.scan import inputs as scan_inputs
  from astrotl.scan.inputs import InputError
  if spectra and catalog:
    raise InputError("give --spectra or --catalog, not both")
  if catalog:
    # read in a thread while the known catalog and the model load; checked below
    found = scan_inputs.open_catalog(catalog, root, path_column, allow_outside_root,
                                     limits=limits, wait=False)
  else:
    if not spectra:
      from astrotl import data
      spectra = str(data.sample_dir("spectra"))
    found = scan_inputs.from_spectra(spectra)
  known_cat = (scan_inputs.load_known(known, known_ra_column, known_dec_column, radius,
                                      strict_known, limits) if known else None)
  m = bundle.load_model(model)
  if catalog:
    refused, lost = found.probe
    if found.first is None and refused == found.n_items:  # (then no row is a duplicate)
      raise InputError(f"--catalog={catalog}: no row can be scanned ({refused} refused, "
                       "0 duplicates)")
    if found.first is None:  # every row was looked at to know
      raise InputError(f"--catalog={catalog}: none of its {lost} files exist under "
                       f"{root or os.path.dirname(os.path.abspath(catalog))} (looked for each "
                       "listed path, its .fits/.fits.gz twin, and its name anywhere below); "
                       "check --root")
  if m.input.get("type", "spectrum") != "spectrum":
    raise bundle.BundleError(f"{m.source}: a {m.input.get('type')} model; the scan runs "
                             "spectrum models (for light curves use "
                             "python -m astrotl.classify_lightcurves)")
  return found, known_cat, m, candidate_rule(m, select, threshold, min_snr, veto)


def run_chunks(run, pool, store, todo, found, process, progress, n_todo, unit="spec"):
  """Decodes (ahead, in the pool), runs and saves (in the writer) every chunk of `todo`.

  `run.scan_chunk(results, first input, found)` -> (arrow table, [(file, reason)]) makes a
  chunk's rows from the pool's results (the scan's `runner.Runner`; light curves have
  their own); `unit` names an input in the progress bar.  Returns the time the first
  files came back decoded (None if none did).
  """
  from astrotl.scan import runner
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=n_todo, unit=unit, dynamic_ncols=True, smoothing=0.1, desc="saved")
  # the bar counts a chunk's inputs (a catalog's refused and duplicate rows among them)
  def saved(i, n):
    if bar is not None:
      a, b = store.span(i)
      bar.update(b - a)

  writer = runner.Writer(store, process, saved)
  tasks = runner.chunk_tasks(store, todo, found)
  ahead = 4 * max(pool.n, 1)  # tasks queued beyond the one being consumed
  first = []

  def results(i):
    while True:
      while len(pool) < ahead and (nxt := next(tasks, None)) is not None:
        pool.submit(*nxt)
      if not len(pool) or pool.peek() != i:
        return
      key, paths, result = pool.next()
      if not first:
        first.append(time.time())
      yield paths, result

  # A signal in here stops at the next safe point (cli.check), keeping the queued chunks.
  with cli.saving():
    try:
      for i in todo:
        cli.check()
        writer.put(i, *run.scan_chunk(results(i), store.span(i)[0], found))
    except (Interrupted, KeyboardInterrupt) as e:
      pool.close()  # at once: decoding more is pointless
      writer.close(timeout=runner.WRITE_GRACE)  # what is queued, if it is saved in time
      e.saved = store.n_done_inputs()
      raise
    finally:
      writer.close()
      if bar is not None:
        bar.close()
  return first[0] if first else None


def check_ranges(**values):
  """Raises InputError naming the first flag whose value is out of its range."""
  from astrotl.scan.inputs import InputError
  checks = {
      "threshold": lambda v: v is None or 0.0 <= v <= 1.0,
      "radius": lambda v: v > 0,
      "batch_size": lambda v: v >= 1,
      "chunk_size": lambda v: v >= 0,
      "workers": lambda v: v is None or v >= 0,
      "time_limit": lambda v: v > 0,
      "top": lambda v: v >= 0,
      "min_snr": lambda v: v is None or v >= 0,
      "max_missing": lambda v: 0.0 <= v <= 1.0,
      "max_file_mb": lambda v: v > 0,
      "anomalies": lambda v: v >= 0,
  }
  wanted = {"threshold": "in [0, 1]", "radius": "> 0 (arcsec)", "batch_size": ">= 1",
            "chunk_size": ">= 0 (0 = automatic)", "workers": ">= 0 (0 = decode in this process)",
            "time_limit": "> 0 (seconds)", "top": ">= 0", "min_snr": ">= 0",
            "max_missing": "in [0, 1]", "max_file_mb": "> 0 (MB)", "anomalies": ">= 0"}
  for name, value in values.items():
    if not checks[name](value):
      raise InputError(f"--{name}={value}: must be {wanted[name]}")
