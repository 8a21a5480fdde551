"""Joining finished chunks into the scan's outputs, streaming one chunk at a time.

Outputs: predictions.parquet (every scanned spectrum, with `candidate` and the known-object
match), candidates.fits and candidates.vot (the candidates, sorted by score), errors.csv
(every input that could not be scanned, with the reason), summary.json, and with
--anomalies=N anomalies.fits and anomalies.vot (the N highest anomaly scores).  The
embeddings stay in the chunks (`astrotl.similar` reads them there).  Memory holds one
chunk, the candidates, the best and most anomalous rows and one score per spectrum.

Before reading, each chunk's numbers of rows, errors and embeddings are checked against
its record (`check_chunks`).  An OSError while writing an output (a full disk) is one
line naming the file (`writing`): the chunks are kept, so a re-run only merges again.

Nulls, as each reader sees them: Parquet has arrow nulls, and beside every integer, text
or boolean column that can be null a `<name>.mask` column that astropy's Parquet reader
needs to give a masked column (it ignores arrow nulls: integers would come back as float
NaN, text as 'None'); FITS has TNULLn (the type's most negative value) for integers,
NaN for floats and '' for text, which `Table.read` masks; the VOTable has empty cells.
Every output's column types come from the schema, never from the values, so an empty
table has the same types as a full one.
"""

import contextlib
import csv
import json
import os
import warnings

import numpy as np

from astrotl import rules
from astrotl.scan import tables
from astrotl.scan.chunks import OutputError, write_atomic


def merge(store, model, rule, known=None, top=12, run_stats=None, inputs=None, explain=False,
          embeddings=False, anomalies=0):
  """Writes the outputs of a finished scan into `store.out`; returns the summary dict."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  out = store.out
  missing = [i for i in range(store.n_chunks) if not store.done(i)]
  if missing:
    raise RuntimeError(f"{out}: chunks {missing[:10]} are not finished; re-run the same "
                       "command to finish them")
  check_chunks(store)
  score = rule["score"] if rule else None
  lengths = string_lengths(store)
  writer, errors, scores, eligible, cands, best = None, [], [], [], [], None
  schema, masked = None, ()  # of the predictions, without and with the mask columns
  scored = embeddings and model.reference is not None
  odd = None  # the most anomalous rows so far
  classes = {}
  class_col = "class1" if "class1" in model.columns() else (
      "pred_class" if "pred_class" in model.columns() else None)
  tmp = out / f".predictions.parquet.{os.getpid()}.tmp"
  try:
    for i in range(store.n_chunks):
      t, errs = store.read(i)
      if inputs is not None:
        t = inputs.tally(i, t)  # what a catalog's chunk left out, for the summary
      errors += errs
      t = _add_columns(t, model, rule, known)
      if writer is None:
        schema = t.schema
        info = column_info(model, inputs, known, schema.names)
        masked = mask_columns(schema, inputs)
        with writing(out / "predictions.parquet"):
          writer = pq.ParquetWriter(tmp, schema_with_meta(schema, info, lengths, masked))
      with writing(out / "predictions.parquet"):
        writer.write_table(with_masks(t.cast(schema), masked).cast(writer.schema))
      if class_col:
        for c, n in zip(*np.unique(t[class_col].to_numpy(zero_copy_only=False).astype(str),
                                   return_counts=True)):
          classes[c] = classes.get(c, 0) + int(n)
      if rule:
        cols = {c: _numpy(t[c]) for c in (score, rule.get("agree"), "snr", "survey_class")
                if c and c in t.column_names}
        s = cols[score].astype(np.float32)
        ok = rules.admitted(rule, cols)
        if rule["type"] == "two_stage":
          ok &= np.isin(cols[rule["agree"]].astype(str), rule["classes"])
        scores.append(s)
        eligible.append(ok)
        cands.append(t.filter(pa.array(np.asarray(t["candidate"]), pa.bool_())))
        best = _best(best, t, score, top)
      if scored:
        odd = _most_anomalous(odd, t, max(top, anomalies))
    if writer is not None:
      with writing(out / "predictions.parquet"):
        writer.close()
        os.replace(tmp, out / "predictions.parquet")
  finally:
    tmp.unlink(missing_ok=True)
  with writing(out / "errors.csv"):
    write_atomic(out / "errors.csv", lambda p: write_csv(p, ["file", "reason"], errors))
  cand = pa.concat_tables(cands) if cands else None
  if cand is not None and cand.num_rows:
    order = np.argsort(-np.nan_to_num(_numpy(cand[score]).astype(float), nan=-np.inf),
                       kind="stable")
    cand = cand.take(order)
  n_cand = cand.num_rows if cand is not None else 0
  empty = schema.empty_table() if schema is not None else None
  write_catalog(out, "candidates", cand if cand is not None else empty, model, inputs, rule,
                known)
  if anomalies and scored:
    write_catalog(out, "anomalies", odd.slice(0, anomalies) if odd is not None else empty,
                  model, inputs, rule, known)
  n_scanned = int(sum(len(s) for s in scores)) if rule else _rows(store)
  summary = _summary(store, model, rule, known, inputs, run_stats, n_scanned, len(errors),
                     n_cand, cand, classes)
  written = min(anomalies, odd.num_rows) if anomalies and odd is not None else 0
  summary.update(embeddings=bool(embeddings), n_anomalies_written=written,
                 anomaly_reference=model.meta.get("reference") if embeddings else None)
  with writing(out / "summary.json"):
    write_atomic(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1)))
  from astrotl.scan import report
  with writing(out / "report.md"):  # or one of its plots: write_atomic names which
    report.write(out, summary, model, rule,
                 np.concatenate(scores) if scores else np.zeros(0, np.float32),
                 np.concatenate(eligible) if eligible else np.zeros(0, bool), best, cand,
                 explain, odd.slice(0, top) if odd is not None else None)
  return summary


@contextlib.contextmanager
def writing(path):
  """An OSError (a full disk, most often) while writing an output of the merge: one line
  naming the file (the one write_atomic names, else `path`) and what to do."""
  try:
    yield
  except OSError as e:
    name = e.filename if isinstance(e.filename, str) else path
    why = " ".join(str(e.strerror or e).split())
    raise OutputError(f"{name}: cannot write ({why}); free space or fix permissions, then "
                      "re-run the same command: the finished chunks are kept, so only the "
                      "merge runs again") from None


def check_chunks(store):
  """Every chunk's numbers of rows, errors and embeddings against its record; chunks that
  disagree are moved aside (`Store.set_aside`) and an OutputError says to re-run, which
  scans them again."""
  bad = {i: why for i in range(store.n_chunks) if (why := store.mismatch(i))}
  if not bad:
    return
  for i in bad:
    where = store.set_aside(i)
  i = min(bad)
  raise OutputError(f"{store.out}: {len(bad)} chunk(s) {sorted(bad)[:10]} disagree with "
                    f"their records (chunk {i}: {bad[i]}); moved to {where}: re-run the same "
                    "command to scan them again")


def _numpy(column):
  v = column.to_numpy(zero_copy_only=False)
  if v.dtype == object:
    return np.array(["" if x is None else x for x in v])
  return v


def _rows(store):
  import pyarrow.parquet as pq
  return sum(pq.read_metadata(store.chunks / f"{store.name(i)}.parquet").num_rows
             for i in range(store.n_chunks))


def _add_columns(t, model, rule, known):
  """`candidate` (the rule) and the --known match, computed at merge time so that a
  re-run with another threshold or catalog needs no new network pass."""
  import pyarrow as pa
  if rule:
    cols = {c: _numpy(t[c]) for c in t.column_names if c != "file"}
    t = t.append_column("candidate", pa.array(rules.select(rule, cols), pa.bool_()))
  if known is not None:
    idx, sep = known.match(_numpy(t["ra"]).astype(float), _numpy(t["dec"]).astype(float))
    hit = idx >= 0
    t = t.append_column("known", pa.array(hit, pa.bool_()))
    t = t.append_column("known_id", pa.array(
        [known.ids[j] if j >= 0 else None for j in idx], pa.string()))
    t = t.append_column("known_sep", pa.array(np.where(hit, sep, np.nan), from_pandas=True))
  return t


def column_info(model, inputs, known, names):
  """{name: (description, unit, UCD)} of `names` (model None: the columns of every scan)."""
  info = (tables.schema(model, inputs.carried() if inputs is not None else ())
          if model is not None else dict(tables.BASE))
  info.update(tables.MERGED)
  info.update(tables.EMBEDDING)
  return {n: info.get(n, ("", "", "")) for n in names}


NOT_NULL = ("file", "class1", "pred_class", "candidate", "known")  # never null


def mask_columns(schema, inputs=None) -> tuple:
  """Columns of `schema` that get a `<name>.mask` column in predictions.parquet: those
  that can be null and whose nulls astropy's Parquet reader would lose (integer, text,
  boolean; a float null reads as NaN).  Chosen from the types, and for the carried catalog
  columns from the whole catalog, never from the rows scanned."""
  import pyarrow as pa
  carried = inputs.carried() if inputs is not None else {}
  out = []
  for f in schema:
    t = f.type
    if f.name in NOT_NULL or not (pa.types.is_integer(t) or pa.types.is_string(t) or
                                  pa.types.is_large_string(t) or pa.types.is_boolean(t)):
      continue
    if f.name in carried and not inputs.has_nulls(carried[f.name][0]):
      continue  # the catalog has no null there
    out.append(f.name)
  return tuple(out)


def with_masks(t, masked):
  """`t` with a `<name>.mask` column (True where null) after each column in `masked`."""
  import pyarrow as pa
  names, columns = [], []
  for name, col in zip(t.column_names, t.columns):
    names.append(name)
    columns.append(col)
    if name in masked:
      names.append(f"{name}.mask")
      columns.append(col.is_null())
  return pa.Table.from_arrays(columns, names=names)


def _numpy_dtype(kind):
  import pyarrow as pa
  if pa.types.is_string(kind) or pa.types.is_large_string(kind):
    return np.dtype("U1")
  try:
    return np.dtype(kind.to_pandas_dtype())
  except (NotImplementedError, TypeError):
    return np.dtype(object)


def schema_with_meta(schema, info, lengths, masked=()):
  """The arrow schema plus astropy's table metadata (units, descriptions, string widths);
  info: {column: (description, unit, ...)}.  With `masked` (see `with_masks`) it also has
  the mask columns, declared as astropy declares a masked column (data + mask, with the
  integer or boolean type the data had: astropy reads arrow integers with nulls as float)."""
  import pyarrow as pa
  from astropy.table import Table, meta
  from astropy.table.serialize import SerializedColumn
  t, fields, serialized = Table(), [], {}
  for f in schema:
    fields.append(f)
    t[f.name] = np.zeros(0, _numpy_dtype(f.type))
    desc, unit = info.get(f.name, ("", ""))[:2]
    t[f.name].description = desc or None
    t[f.name].unit = unit or None
    if f.name in masked:
      fields.append(pa.field(f"{f.name}.mask", pa.bool_()))
      t[f"{f.name}.mask"] = np.zeros(0, bool)
      serialized[f.name] = {"__class__": "astropy.table.column.MaskedColumn",
                            "data": SerializedColumn({"name": f.name}),
                            "mask": SerializedColumn({"name": f"{f.name}.mask"})}
      if t[f.name].dtype.kind in "iub":
        serialized[f.name]["dtype"] = t[f.name].dtype.name
  if serialized:
    t.meta["__serialized_columns__"] = serialized
  md = {"table_meta_yaml": "\n".join(meta.get_yaml_from_table(t))}
  md.update({f"table::len::{k}": str(max(v, 1)) for k, v in lengths.items()})
  return pa.schema(fields).with_metadata({k.encode(): v.encode() for k, v in md.items()})


def string_lengths(store) -> dict:
  """Longest value of each string column over all chunks (astropy needs the widths)."""
  import pyarrow.compute as pc
  import pyarrow.parquet as pq
  out = {}
  for i in range(store.n_chunks):
    path = store.chunks / f"{store.name(i)}.parquet"
    schema = pq.read_schema(path)
    names = [f.name for f in schema if str(f.type) == "string"] + ["known_id"]
    t = pq.read_table(path, columns=[n for n in names if n in schema.names])
    for n in t.column_names:
      m = pc.max(pc.utf8_length(t[n])).as_py()
      out[n] = max(out.get(n, 1), m or 1)
  out.setdefault("known_id", 32)
  return out


def _best(best, t, score, top):
  """The `top` rows with the highest score, candidates first (for the report's plot)."""
  import pyarrow as pa
  both = t if best is None else pa.concat_tables([best, t.cast(best.schema)])
  s = np.nan_to_num(_numpy(both[score]).astype(float), nan=-np.inf)
  c = np.asarray(both["candidate"])
  order = np.lexsort((-s, ~c))[:top]
  return both.take(order)


def _most_anomalous(odd, t, n):
  """The `n` rows with the highest anomaly score (nulls never)."""
  import pyarrow as pa
  both = t if odd is None else pa.concat_tables([odd, t.cast(odd.schema)])
  s = _numpy(both["anomaly"]).astype(float)
  keep = np.flatnonzero(np.isfinite(s))
  return both.take(keep[np.argsort(-s[keep], kind="stable")[:n]])


def write_catalog(out, stem, cand, model, inputs, rule, known):
  """<stem>.fits (TTYPEn comments and TCOMMn for TOPCAT) and <stem>.vot (UCDs) of rows of
  the predictions (the candidates, the anomalies): an arrow table, which may be empty but
  has the predictions' schema.  The rule, model and --known catalog are written in full:
  FITS keywords as long strings (CONTINUE cards), VOTable INFO elements."""
  from astropy.io.votable import converters, exceptions, from_table
  from astropy.io.votable.tree import Info
  t = to_astropy(cand, model, inputs, known)
  about = {"RULE": rules.describe(rule) if rule else "none", "MODEL": str(model.name),
           "KNOWNCAT": os.path.basename(known.path) if known is not None else "none"}
  if known is not None:
    about["RADIUS"] = known.radius
  t.meta = dict(about)
  with writing(out / f"{stem}.fits"):
    write_atomic(out / f"{stem}.fits", lambda p: write_fits(p, t))
  vot = from_table(t)
  table = vot.get_first_table()
  info = column_info(model, inputs, known, t.colnames)
  for field in table.fields:
    ucd = info[field.name][2]
    if ucd:
      field.ucd = ucd
    if field.datatype in ("char", "unicodeChar"):
      # Variable-length text (arraysize="*"): never the arraysize="1" that VOTable 1.3
      # deprecates, and one schema however long the values are.
      field.arraysize = "*"
      field.converter = converters.get_converter(field)
  for k, v in about.items():
    table.infos.append(Info(name=k, value=str(v)))
  with writing(out / f"{stem}.vot"), warnings.catch_warnings():
    # W50: astropy's VOUnit parser knows no 'dex' ([Fe/H], log g of lamost_params); the
    # file carries the unit as given, which VO tools read.
    warnings.simplefilter("ignore", exceptions.W50)
    write_atomic(out / f"{stem}.vot", lambda p: vot.to_xml(str(p)))


def write_fits(path, t):
  """An astropy Table as FITS, with each description also in the TTYPEn comment and
  TCOMMn (TOPCAT shows those; astropy keeps descriptions only in its own comment), and
  long text keywords continued over CONTINUE cards (LONGSTRN announces the convention).
  A unit the FITS standard lacks ('dex') is written as its TUNITn string all the same,
  where astropy would drop it with a warning: readers show it as given."""
  from astropy.io import fits
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*could not be saved in native FITS format")
    hdu = fits.table_to_hdu(t)
  for i, name in enumerate(t.colnames, start=1):
    if t[name].unit is not None and f"TUNIT{i}" not in hdu.header:
      hdu.header.insert(f"TFORM{i}", (f"TUNIT{i}", t[name].unit.to_string()), after=True)
    desc = t[name].description or ""
    if desc:
      hdu.header.comments[f"TTYPE{i}"] = desc[:46]
      hdu.header[f"TCOMM{i}"] = desc[:68]
  if any(isinstance(v, str) and len(v) > 68 for v in t.meta.values()):
    hdu.header.insert(next(iter(t.meta)), ("LONGSTRN", "OGIP 1.0",
                                           "long strings continue over CONTINUE cards"))
  fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


def to_astropy(arrow_table, model, inputs, known):
  """An astropy Table with masked nulls, units and descriptions."""
  return astropy_table(arrow_table, column_info(model, inputs, known, arrow_table.column_names))


def astropy_table(arrow_table, info):
  """An astropy Table with masked nulls; each column's type comes from the arrow type,
  never from the values (so 0 rows give the same types as many), and its fill value is
  what FITS writes for a null: TNULLn = the integer type's most negative value (never a
  real id, unlike astropy's default 999999), NaN, '' or False.  Mask columns of
  predictions.parquet (`with_masks`) are left out; info: {column: (description, unit,
  ...)}."""
  import pyarrow as pa
  from astropy.table import MaskedColumn, Table
  t = Table()
  for name, col in zip(arrow_table.column_names, arrow_table.columns):
    if name.endswith(".mask"):
      continue
    kind = col.type
    null = col.is_null().to_numpy(zero_copy_only=False).astype(bool)
    if pa.types.is_integer(kind):
      v = col.fill_null(0).to_numpy()
      fill = np.iinfo(v.dtype).min if v.dtype.kind == "i" else np.iinfo(v.dtype).max
    elif pa.types.is_floating(kind):
      v, fill = col.to_numpy(), np.nan
    elif pa.types.is_boolean(kind):
      v, fill = col.fill_null(False).to_numpy(zero_copy_only=False).astype(bool), False
    else:
      v = col.cast(pa.string()) if not pa.types.is_string(kind) else col
      v, fill = np.asarray(v.fill_null("").to_numpy(zero_copy_only=False), dtype=str), ""
    desc, unit = info.get(name, ("", ""))[:2]
    t[name] = MaskedColumn(v, mask=null, fill_value=fill, description=desc or None,
                           unit=unit or None)
  return t


def write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _summary(store, model, rule, known, inputs, run_stats, n_scanned, n_errors, n_cand, cand,
             classes):
  about = model.meta.get("about") or {}
  summary = {
      "n_inputs": inputs.n_inputs if inputs is not None else store.n_inputs,
      "n_scanned": n_scanned, "n_errors": n_errors,
      "n_candidates": n_cand,
      "rule": rules.describe(rule), "rule_spec": rule,
      "model": model.name, "model_source": model.source, "classes": model.classes,
      "predicted_classes": dict(sorted(classes.items())),
      "trained_on": about.get("training_data"),
      "known_catalog": known.path if known is not None else None,
      "radius_arcsec": known.radius if known is not None else None,
      "n_known_candidates": (int(np.sum(np.asarray(cand["known"])))
                             if known is not None and n_cand else 0),
      # rows of --known without a usable RA/Dec: skipped, never matched
      "known_rows": known.n_rows if known is not None else None,
      "known_rows_skipped": known.skipped if known is not None else None,
  }
  if inputs is not None:
    summary.update(source=inputs.source, n_duplicate_rows=inputs.n_duplicates,
                   n_refused_rows=inputs.n_refused, n_missing_files=inputs.missing)
  fp = about.get("false_positive_rate")
  if fp and rule == model.rule:
    # "median" (Monte Carlo median); bundles before 2026-12 wrote a plug-in "value"
    fp = dict(fp, median=fp.get("median", fp.get("value")))
    summary["false_positive_rate"] = fp
    summary["expected_false_candidates"] = {
        k: float(fp[k]) * n_scanned for k in ("median", "low", "high") if fp.get(k) is not None}
    if about.get("expected_purity"):
      summary["expected_purity"] = about["expected_purity"]
  summary.update(run_stats or {})
  return summary
