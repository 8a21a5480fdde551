"""The scan's tables: one schema (names, units, descriptions, UCDs) for every output.

Column names are unique ignoring case and valid identifiers (TOPCAT, STILTS and cfitsio
look names up case-insensitively); missing values are nulls, never -1 or ''.  Every
column of a --catalog is carried as cat_<its name> (`inputs.carried_names`).  Parquet
files carry astropy's table metadata, so `Table.read` gets units, descriptions and masked
columns (`merge.with_masks`); FITS files carry TUNITn, TNULLn, and the description in each
TTYPEn comment and TCOMMn for TOPCAT; the VOTable adds UCDs.
"""

import numpy as np

# name -> (description, unit, UCD)
BASE = {
    "file": ("spectrum file as scanned", "", "meta.file"),
    "obsid": ("survey observation id (file header)", "", "meta.id;meta.main"),
    "designation": ("survey designation (file header)", "", "meta.id"),
    "ra": ("right ascension, J2000 (file header)", "deg", "pos.eq.ra;meta.main"),
    "dec": ("declination, J2000 (file header)", "deg", "pos.eq.dec;meta.main"),
    "snr_g": ("survey's g-band S/N (file header)", "", "stat.snr;em.opt.B"),
    "survey_class": ("survey's own class (file header CLASS)", "", "src.class"),
    "survey_subclass": ("survey's own subclass (file header SUBCLASS)", "", "src.spType"),
    "snr": ("median flux*sqrt(ivar) over 4000-5500 A on the common grid", "", "stat.snr"),
}
MERGED = {
    "candidate": ("selected by the candidate rule (see summary.json)", "", "meta.code"),
    "known": ("within the match radius of an object of the --known catalog", "", "meta.code"),
    "known_id": ("name or row of the nearest --known object within the radius", "",
                 "meta.id.cross"),
    "known_sep": ("separation from that --known object", "arcsec", "pos.angDistance"),
}
EMBEDDING = {
    "anomaly": ("distance to the training set in embedding space, in units of a training "
                "spectrum's (about 1: like it); null: the model has no reference",
                "", "stat.value"),
}
_META = {"obsid": "obsid", "designation": "designation", "ra": "ra", "dec": "dec",
         "snr_g": "snr_g", "survey_class": "class", "survey_subclass": "subclass"}
_INT = ("obsid",)
_STR = ("file", "designation", "survey_class", "survey_subclass")


def schema(model, carried=(), embeddings=False) -> dict:
  """{column: (description, unit, UCD)} of a chunk table, in order; carried: the catalog's
  columns, `Inputs.carried()`."""
  out = {k: BASE[k] for k in ("file", "obsid", "designation", "ra", "dec", "snr_g",
                              "survey_class", "survey_subclass")}
  from astrotl.io.catalog import column_name
  for name, (_, c) in dict(carried).items():
    unit = "deg" if column_name(c) in ("ra", "dec", "ra_obs", "dec_obs") else ""
    out[name] = (f"catalog column {c}", unit, "")
  for name, (desc, unit) in model.columns().items():
    ucd = "src.class" if name in ("class1", "pred_class") else (
        "stat.probability" if name.startswith("p") else "")
    out[name] = (desc, unit, ucd)
  out["snr"] = BASE["snr"]
  if embeddings:
    out.update(EMBEDDING)
  return out


def to_arrow(values, kind=None):
  """An arrow array of `values` with nulls for None, '' and NaN (kind: 'str', 'int')."""
  import pyarrow as pa
  if kind == "str":
    return pa.array([None if v is None or str(v) == "" else str(v) for v in values], pa.string())
  if kind == "int":
    return pa.array([None if v is None else int(v) for v in values], pa.int64())
  arr = np.asarray(values)
  if arr.dtype == object:
    return pa.array([None if v is None else float(v) for v in values], pa.float64())
  if arr.dtype.kind in "US":
    return pa.array([None if str(v) == "" else str(v) for v in arr], pa.string())
  if arr.dtype.kind == "f":
    return pa.array(arr, from_pandas=True)  # NaN -> null
  return pa.array(arr)


def _survey_ids(meta):
  """obsid is LAMOST's integer id; other surveys' ids (SDSS's PLATE-MJD-FIBER) go to
  designation instead, so the column keeps one type."""
  obsid = meta.get("obsid")
  if obsid is None or isinstance(obsid, (int, np.integer)):
    return meta
  return dict(meta, obsid=None, designation=meta.get("designation") or
              f"{meta.get('survey', '')} {obsid}".strip())


def chunk_table(model, files, metas, outs, inputs=None, first=0, embeddings=False):
  """The arrow table of one chunk: file, header values, carried catalog columns, the
  model's outputs (null where a cascade skipped a network) and with `embeddings` the
  anomaly score (null without a reference).  The embeddings themselves are stored beside
  the table (`chunks.Store.write`)."""
  import pyarrow as pa
  cols = {"file": to_arrow(files, "str")}
  metas = [_survey_ids(m) for m in metas]
  for name, key in _META.items():
    vals = [m.get(key) for m in metas]
    cols[name] = to_arrow(vals, "int" if name in _INT else "str" if name in _STR else None)
  if inputs is not None and inputs.carried():
    # Arrow columns taken as they are: their types come from the catalog, never from
    # which rows a chunk holds, so every chunk (and an empty one) has one schema.
    part = inputs.carried_rows(files, first)
    for name, (i, _) in inputs.carried().items():
      cols[name] = part.column(i).combine_chunks()
  out_cols = model.outputs_to_columns(outs) if files else {}
  for name in list(model.columns()) + ["snr"]:
    text = name in ("class1", "pred_class")
    values = out_cols.get(name, np.zeros(0, str if text else np.float32))
    cols[name] = to_arrow(values, "str" if text else None)
  if embeddings:
    score = outs.get("anomaly") if files else None
    cols["anomaly"] = to_arrow(np.full(len(files), np.nan, np.float32) if score is None
                             else np.asarray(score, np.float32))
  note = inputs.chunk_note(first) if inputs is not None else None
  if note is None:
    return pa.table(cols)
  import json
  from astrotl.scan.inputs import NOTE  # the catalog rows the chunk left out, for the merge
  return pa.table(cols).replace_schema_metadata({NOTE: json.dumps(note).encode()})
