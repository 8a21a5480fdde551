"""More like these: the spectra of a survey scan nearest to a few examples, and anomalies.

    python -m astrotl.scan --catalog=dr9.csv --root=/data/dr9 --embeddings --out=scan-dr9
    python -m astrotl.similar --scan=scan-dr9 --query=db1.fits.gz,db2.fits.gz --k=50
    python -m astrotl.similar --scan=scan-dr9 --query=known_db.csv   # obsid or file column

or from Python, `astrotl.similar.search("scan-dr9", files, k=50, model=model)`.

A scan with --embeddings stores each spectrum's embedding (the primary network's
penultimate features, float16) beside its predictions (`store`).  Spectra are compared by
the distance between their unit-length embeddings (`metric`).  Query spectra are embedded
by the scan's own model; spectra already in the scan are found by obsid and use their
stored embeddings.  Below `index.INDEX_FROM` spectra the search is exact; above, a faiss
IVF-PQ index is built once into <scan>/similar/ (streaming, memory-mapped) and its
candidates are re-ranked exactly (`index`).  The scan's anomaly score needs a reference
set in the model bundle (`reference`; `add_reference` makes one).
"""

import os
import warnings

import numpy as np

from astrotl.similar.store import SimilarError

DESCRIPTIONS = {
    "query": ("the query: its file name, obsid or row number", "", "meta.id"),
    "rank": ("1 = nearest", "", "meta.number"),
    "distance": ("distance between unit-length embeddings (0 = same, 2 = opposite)", "",
                 "pos.distance"),
}


def add_reference(model, spectra=None, embeddings=None, **kw):
  """A copy of `model` carrying an anomaly reference (see `astrotl.similar.reference`)."""
  from astrotl.similar import reference
  return reference.add_reference(model, spectra, embeddings, **kw)


def search(scan, queries=None, k=50, model=None, obsids=None, embeddings=None, exact=None,
           nprobe=None, rebuild=False, log=None):
  """The k spectra of `scan` (a --embeddings scan's folder) nearest each query, as an
  astropy Table: query, rank, distance, and the neighbour's file, obsid, designation, ra,
  dec, survey and model classes (and anomaly score) from the scan.

  Queries, any of: `queries`, spectra in any form `Model.embed` takes (files, Spectrum
  objects, (wavelength, flux, ivar) tuples), embedded with `model` (a loaded Model or
  bundle path; default the scan's own, which it must equal); `obsids` of spectra in the
  scan (their stored embeddings); `embeddings` (n, D) from `model.embed`.
  exact: True for the exact pass, False for the index, None to choose by size.
  A query whose embedding is not finite is skipped (`meta["skipped"]`); stored rows that
  are not finite are left out of the search and counted (`meta["search"]["left_out"]`,
  and a line to `log`).
  """
  from astrotl.similar import metric, store
  emb = store.Embeddings(scan)
  q, names, skipped = [], [], []
  m = None
  if queries is not None:
    m = scan_model(emb, model)
    with warnings.catch_warnings(record=True):  # unreadable queries are reported below
      got, e = m.embed(queries, names=True)
    ok = np.isfinite(e).all(axis=1)
    q.append(metric.unit(e[ok]))
    names += [os.path.basename(n) for n, good in zip(got, ok) if good]
    skipped += [f"{n} (its embedding is not finite)" for n, good in zip(got, ok) if not good]
    paths = [queries] if isinstance(queries, (str, os.PathLike)) else list(queries)
    skipped += [f"{os.fspath(p)} (unreadable)" for p in paths
                if isinstance(p, (str, os.PathLike)) and os.fspath(p) not in set(got)]
  if obsids is not None:
    obsids = [int(o) for o in np.atleast_1d(obsids)]
    rows = emb.find("obsid", obsids)
    skipped += [f"obsid {o} (not in the scan)" for o, r in zip(obsids, rows) if r < 0]
    e = emb.rows(rows[rows >= 0])
    ok = np.isfinite(e).all(axis=1)
    q.append(e[ok])
    found = [o for o, r in zip(obsids, rows) if r >= 0]
    names += [str(o) for o, good in zip(found, ok) if good]
    skipped += [f"obsid {o} (its stored embedding is not finite)"
                for o, good in zip(found, ok) if not good]
  if embeddings is not None:
    e = np.atleast_2d(np.asarray(embeddings, np.float32))
    if e.ndim != 2 or e.shape[1] != emb.dim:
      raise SimilarError(f"embeddings have shape {e.shape}, expected (n, {emb.dim})")
    if not np.isfinite(e).all():
      raise SimilarError("embeddings hold NaN or inf values")
    q.append(metric.unit(e))
    names += [f"row {i}" for i in range(len(e))]
  if skipped and log:
    log(f"astrotl.similar: {len(skipped)} queries skipped: {', '.join(skipped[:5])}"
        + (" ..." if len(skipped) > 5 else ""))
  if not names:
    raise SimilarError("no query could be used" + (f" ({', '.join(skipped[:5])})" if skipped
                                                   else ": give spectra, obsids or embeddings"))
  q = np.concatenate(q)
  dist, rows, how = nearest(emb, q, k, exact, nprobe, rebuild, log)
  if how.get("left_out") and log:
    log(f"astrotl.similar: {how['left_out']} spectra of the scan have embeddings that are not "
        "finite and were left out (a damaged chunk file)")
  t = _table(emb, names, dist, rows, how, m)
  t.meta["skipped"] = skipped
  return t


def scan_model(emb, model=None):
  """The model that made the scan's embeddings: `model` (checked) or the scan's own."""
  from astrotl import bundle
  source = emb.manifest.get("model_source")
  if model is None:
    try:
      model = bundle.load_model(source)
    except (FileNotFoundError, bundle.BundleError) as e:
      raise SimilarError(f"the scan's model {source} cannot be loaded ({e}); pass the same "
                         "model with --model") from None
  elif not isinstance(model, bundle.Model):
    model = bundle.load_model(model)
  if model.identity() != emb.manifest.get("model"):
    raise SimilarError(f"model {model.source} is not the model that scanned {emb.folder} "
                       f"({source}): embeddings of two models cannot be compared")
  return model


def nearest(emb, q, k, exact=None, nprobe=None, rebuild=False, log=None):
  """(distances, rows, how) of the k nearest rows of unit queries `q`."""
  from astrotl.similar import index as ann
  if exact is None:
    exact = emb.n < ann.INDEX_FROM
  if exact:
    d, r = ann.exact(emb, q, k)
    return d, r, {"kind": "exact", "n": emb.n, "left_out": emb.left_out}
  path = emb.folder / "similar" / "index.faiss"
  about = None
  if path.exists() and not rebuild:
    try:
      index, about = ann.load(path)
    except (OSError, ValueError, RuntimeError):
      about = None
  if about is None or about.get("digest") != emb.digest():
    if log:
      log(f"astrotl.similar: building the index of {emb.n} spectra in {path}")
    try:
      path.parent.mkdir(exist_ok=True)
      ann.build(emb, path, log=log)
    except OSError as e:
      raise SimilarError(f"cannot write the index into {path.parent} ({e.strerror or e}); "
                         "make the scan folder writable, or search exactly "
                         "(--method=exact)") from None
    index, about = ann.load(path)
  d, r = ann.search(index, emb, q, k, nprobe or ann.NPROBE)
  return d, r, dict(about, nprobe=int(min(nprobe or ann.NPROBE, about["nlist"])),
                    rerank=ann.RERANK)


def _table(emb, names, dist, rows, how, model=None):
  import pyarrow as pa
  from astrotl.scan import merge
  ok = rows >= 0
  qi, rank = np.nonzero(ok)
  found = emb.table(rows[ok])
  front = {"query": pa.array(np.asarray(names, dtype=str)[qi].tolist(), pa.string()),
           "rank": pa.array(rank + 1, pa.int32()),
           "distance": pa.array(dist[ok].astype(np.float32))}
  for i, (name, col) in enumerate(front.items()):
    found = found.add_column(i, name, col) if found.num_columns else pa.table({name: col})
  t = merge.to_astropy(found, model, None, None)
  for name, (desc, _, _) in DESCRIPTIONS.items():
    t[name].description = desc
  t.meta["scan"] = str(emb.folder)
  t.meta["search"] = how
  return t
