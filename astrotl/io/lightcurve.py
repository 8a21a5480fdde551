"""Light-curve readers: one star's file (`read_curve`), a file of many stars split by
their id columns (`read_stars`), and labelled survey layouts.

`read_curve(path)` reads a single-star light curve as astronomers have them: CSV or
whitespace-separated ASCII with or without a header (plain or `#`-commented), UPSILoN's
`.time` files, FITS tables, any of them gzipped.  Columns are found by name (aliases below,
or `time_column=` / `mag_column=` / `err_column=`), or taken as time, mag, err in that
order when there is no header.  Rows with a missing or flagged value are dropped (see
`read_curve`); every other problem raises `LightCurveError` naming the file, what is wrong
and what to do.  Only regular files are opened, and at most `max_bytes` are read.
`read_stars(path, "fieldid,tileid,seqn")` reads a survey table holding many stars' rows the
same way and yields (star id, (time, mag, err)) per star.

The survey readers below each return `(stars, skipped)`: a list of `Star` and a list of
(star id, reason) for entries that could not be parsed.  A Star's bands map a band name
("r", "b", "v") to (time, mag, err) float64 arrays sorted by time; flagged rows are
dropped, so every value left is a measurement.

| reader            | layout                                                          |
|-------------------|-----------------------------------------------------------------|
| `eros1_ramp`      | RAMP variable_stars CSVs: `<part>.csv` + `<part>_varlength_features.csv.gz` |
| `catalina_csv`    | one CSS CSV per star, label in the file name (`rr_lyrae_<id>.csv`) |
| `asas_cesium`     | cesium's ASAS tarball of `<id>.dat` + a `filename,target` table |
| `macho_csv`       | MACHO rows `classification,fieldid,tileid,seqn,...,rmag,rerr,bmag,berr` |
"""

import csv
import gzip
import io
import json
import pathlib
import re
import sys
import tarfile
import zlib
from typing import NamedTuple

import numpy as np

EROS1_TYPES = {1: "EB", 2: "Cepheid", 3: "RR Lyrae", 4: "Mira"}
CATALINA_TYPES = {"delta_scuti": "DSCT", "rr_lyrae": "RR Lyrae", "w_uma": "W UMa"}
ASAS_TYPES = {"Mira": "Mira", "Classical_Cepheid": "Cepheid", "W_Ursae_Maj": "W UMa"}
# light_curve_ml's data/macho/READ_ME.txt
MACHO_TYPES = {1: "RRL ab", 2: "RRL c", 3: "RRL e", 4: "Cepheid F", 5: "Cepheid 1O",
               6: "LPV Wood A", 7: "LPV Wood B", 8: "LPV Wood C", 9: "LPV Wood D", 10: "EB",
               11: "RRL + GB blend"}
MACHO_MAX_ERR = 1.0   # rows with err <= 0 or >= this are flags (-99 mags, 29.999 errors)

MAX_BYTES = 64 << 20  # one star: a million points is ~40 MB of text
MISSING_MAG = 90.0    # |mag| >= this is a survey's "no measurement" (99.999, -99)
MISSING_TEXT = ("", "nan", "na", "n/a", "null", "none", "--", "-")  # read as NaN, then dropped
# Column names are compared lower-cased with everything but letters and digits removed.
TIME_ALIASES = ("time", "t", "hjd", "bjd", "mjd", "jd", "date", "dateobs", "obstime", "epoch")
MAG_ALIASES = ("mag", "magnitude", "m")
ERR_ALIASES = ("err", "error", "magerr", "magerror", "errmag", "emag", "dmag", "dm", "sigma",
               "sigmag", "magsigma", "sigmamag", "unc", "uncertainty", "e")
SUFFIXES = tuple(s + z for s in (".csv", ".tsv", ".txt", ".dat", ".time", ".lc", ".mjd",
                                 ".fits", ".fit") for z in ("", ".gz"))


class LightCurveError(ValueError):
  """A light-curve file that cannot be read.  `path` and `reason` are kept for error tables."""

  def __init__(self, path, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


class Star(NamedTuple):
  id: str
  label: str
  bands: dict   # band -> (time, mag, err)


def _curve(time, mag, err):
  time, mag, err = (np.asarray(a, np.float64) for a in (time, mag, err))
  if not len(time) == len(mag) == len(err):
    raise ValueError(f"time/mag/err lengths differ: {len(time)}, {len(mag)}, {len(err)}")
  order = np.argsort(time, kind="stable")
  return time[order], mag[order], err[order]


def _need(path):
  path = pathlib.Path(path)
  if not path.is_file():
    raise LightCurveError(path, "no such file")
  return path


def eros1_ramp(folder, part: str):
  """EROS-1 LMC stars of the RAMP challenge, `part` = "train" or "test", bands r and b."""
  folder = pathlib.Path(folder)
  meta_path = _need(folder / f"{part}.csv")
  curves_path = _need(folder / f"{part}_varlength_features.csv.gz")
  with open(meta_path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or "type" not in rows[0]:
    raise LightCurveError(meta_path, "expected a CSV with a 'type' column")
  index = next(iter(rows[0]))   # the unnamed first column holds the star id
  labels = {r[index]: r["type"] for r in rows}
  csv.field_size_limit(sys.maxsize)   # one cell holds a whole light curve
  stars, skipped = [], []
  with gzip.open(curves_path, "rt", newline="") as f:
    for row in csv.DictReader(f):
      star = row.get("") or row.get(index) or ""
      try:
        label = EROS1_TYPES[int(float(labels[star]))]
        bands = {b: _curve(*(json.loads(row[f"{k}_points_{b}"]) for k in ("time", "light", "error")))
                 for b in ("r", "b")}
      except (KeyError, ValueError, TypeError) as e:
        skipped.append((star, f"{curves_path.name}: {type(e).__name__}: {e}"))
        continue
      stars.append(Star(star, label, bands))
  missing = sorted(set(labels) - {s.id for s in stars} - {s for s, _ in skipped})
  skipped += [(s, f"in {meta_path.name} but not in {curves_path.name}") for s in missing]
  return stars, skipped


def catalina_csv(folder):
  """Catalina Sky Survey CSVs named `<type>_<MasterID>.csv` (types CATALINA_TYPES); band v."""
  folder = pathlib.Path(folder)
  files = sorted(folder.glob("*.csv"))
  if not files:
    raise LightCurveError(folder, "no *.csv light curves")
  stars, skipped = [], []
  for path in files:
    kind, _, star = path.stem.rpartition("_")
    try:
      if kind not in CATALINA_TYPES:
        raise ValueError(f"file name type {kind!r} not in {sorted(CATALINA_TYPES)}")
      with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
      curve = _curve(*([float(r[k]) for r in rows] for k in ("MJD", "Mag", "Magerr")))
    except (KeyError, ValueError) as e:
      skipped.append((path.name, f"{type(e).__name__}: {e}"))
      continue
    stars.append(Star(star, CATALINA_TYPES[kind], {"v": curve}))
  return stars, skipped


def asas_cesium(tarball, table):
  """ASAS V-band curves (`<id>.dat`: time,mag,err rows) labelled by `table` (filename,target)."""
  tarball, table = _need(tarball), _need(table)
  with open(table, newline="") as f:
    labels = {r["filename"]: r["target"] for r in csv.DictReader(f)}
  stars, skipped = [], []
  with tarfile.open(tarball) as tar:
    for member in sorted(tar.getmembers(), key=lambda m: m.name):
      if not member.isfile() or not member.name.endswith(".dat"):
        continue
      star = pathlib.PurePosixPath(member.name).stem
      try:
        label = ASAS_TYPES[labels[star]]
        text = tar.extractfile(member).read().decode("ascii")
        cols = np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2)
        if cols.shape[1] != 3:
          raise ValueError(f"expected 3 columns time,mag,err, got {cols.shape[1]}")
      except (KeyError, ValueError, UnicodeDecodeError) as e:
        skipped.append((star, f"{member.name}: {type(e).__name__}: {e}"))
        continue
      stars.append(Star(star, label, {"v": _curve(*cols.T)}))
  return stars, skipped


def macho_csv(path):
  """MACHO stars from one CSV of rows (see module table); bands r and b, flagged rows dropped."""
  path = _need(path)
  opener = gzip.open if path.suffix == ".gz" else open
  groups = {}
  with opener(path, "rt", newline="") as f:
    for r in csv.DictReader(f):
      star = f"{r['fieldid']}.{r['tileid']}.{r['seqn']}"
      groups.setdefault(star, []).append(r)
  stars, skipped = [], []
  for star, rows in groups.items():
    try:
      label = MACHO_TYPES[int(rows[0]["classification"])]
      t = np.array([float(r["dateobs"]) for r in rows])
      bands = {}
      for b in ("r", "b"):
        m = np.array([float(r[f"{b}mag"]) for r in rows])
        e = np.array([float(r[f"{b}err"]) for r in rows])
        keep = (e > 0) & (e < MACHO_MAX_ERR) & (m > -90)
        bands[b] = _curve(t[keep], m[keep], e[keep])
    except (KeyError, ValueError) as e:
      skipped.append((star, f"{path.name}: {type(e).__name__}: {e}"))
      continue
    stars.append(Star(star, label, bands))
  return stars, skipped


# --- one star's file ------------------------------------------------------------------------

def read_curve(path, time_column=None, mag_column=None, err_column=None,
               max_bytes: int = MAX_BYTES):
  """(time, mag, err) float64 arrays of one star's light curve, sorted by time.

  Formats (found from the content, not the name): CSV (`,` or `;`) or whitespace-separated
  text, with a header line, a `#`-commented header line right above the data (UPSILoN's
  `.time` files, MACHO's `.mjd`), or none; FITS tables (the first table HDU); gzip of any.
  Columns: `time_column`, `mag_column`, `err_column` (a name, any case, or a 0-based
  number) or else found by name -- time: TIME_ALIASES or a name starting with
  hjd/bjd/mjd/jd; mag: MAG_ALIASES, else the first name that starts or ends with "mag"
  (so UPSILoN's `.time` gives its R band, MagR); err: an error-like name right after the
  magnitude (ErMagR), else ERR_ALIASES, else the only error-like column.  With no header
  the columns are time, mag[, err].  err is None when the file has no error column (the
  features then use std(mag) as every error, as UPSILoN does).

  Rows where time, mag or err is missing (empty, NaN), |mag| >= MISSING_MAG (99.999,
  -99: "no measurement") or err < 0 (a flag) are dropped.  Raises LightCurveError (with
  `.path` and `.reason`) for anything else: no such file, not a regular file (folders,
  pipes, devices are refused before reading), more than `max_bytes` (also once
  decompressed), damaged gzip, binary content, no usable column, a value that is not a
  number, or no usable row.  A file holding many stars' rows is read with `read_stars`.
  """
  t, m, e, keep, _, why = _load(path, time_column, mag_column, err_column, (), max_bytes)
  if not keep.any():
    raise LightCurveError(path, f"no usable rows: all {len(t)} {why}")
  return _kept(t, m, e, keep)


def read_stars(path, id_column, time_column=None, mag_column=None, err_column=None,
               max_bytes: int = MAX_BYTES):
  """Yields (star id, (time, mag, err)) for each star of a file holding many stars' rows
  (a survey's light-curve table, e.g. MACHO's fieldid,tileid,seqn,...,dateobs,rmag,rerr).

  `id_column` names the column(s) that identify a star: a name or 0-based number, several
  as a list or comma-separated ("fieldid,tileid,seqn").  A star's id is its values in
  those columns as written in the file, joined by "." ("1.3441.1214"); its rows need not be
  adjacent.  Stars come in the order of their first row.  The file is read and the
  time/mag/err columns found (never among the id columns) as by `read_curve`, and each
  star's flagged rows are dropped the same way; a star none of whose rows is usable is
  yielded with empty arrays, so the caller can report it rather than lose it.  Raises
  LightCurveError for the file as `read_curve` does, and for an id column it lacks
  (naming the column and the file's columns) -- before the first star is yielded.
  """
  ids = id_columns(id_column)
  t, m, e, keep, stars, _ = _load(path, time_column, mag_column, err_column, ids, max_bytes)
  # group rows by star without a pass per star: stable sort by the star's number
  _, first, inverse = np.unique(stars, return_index=True, return_inverse=True)
  rows = np.argsort(inverse, kind="stable")
  bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(first)))])
  for k in np.argsort(first, kind="stable"):
    r = rows[bounds[k]:bounds[k + 1]]
    yield str(stars[first[k]]), _kept(t[r], m[r], None if e is None else e[r], keep[r])


def id_columns(id_column) -> list:
  """`id_column` as a list of column names/numbers: "fieldid,tileid,seqn" or a list."""
  if isinstance(id_column, (int, np.integer)):
    return [int(id_column)]
  items = id_column.split(",") if isinstance(id_column, str) else list(id_column or ())
  items = [c.strip() if isinstance(c, str) else c for c in items]
  if not items or any(c == "" for c in items):
    raise ValueError(f"id_column={id_column!r}: give one column name or number, or several "
                     "separated by commas (fieldid,tileid,seqn)")
  return items


def _load(path, time_column, mag_column, err_column, ids, max_bytes):
  """(t, m, e or None, usable-row mask, star ids (n,) str or None, why rows are unusable)
  of a file: the parsing shared by read_curve and read_stars."""
  data = _read_bounded(path, max_bytes)
  table = _fits_table(path, data) if data.startswith(b"SIMPLE  =") else _text_table(path, data)
  names = table.names
  ii = [_index(path, c, table.ncols, names, "id_column") for c in ids]
  ti, mi, ei = _find_columns(path, names, table.ncols, time_column, mag_column, err_column,
                             skip=ii)
  label = (lambda i: repr(names[i])) if names else (lambda i: f"number {i}")
  use = [ti, mi] + ([ei] if ei is not None else [])
  t, m, *rest = table.columns(path, use, label)
  e = rest[0] if rest else None
  with np.errstate(invalid="ignore"):
    keep = np.isfinite(t) & np.isfinite(m) & (np.abs(m) < MISSING_MAG)
    if e is not None:
      keep &= np.isfinite(e) & (e >= 0)
  why = (f"miss a value or are flagged (NaN, |mag| >= {MISSING_MAG:g} such as 99.999, or a "
         f"negative error) in columns {label(ti)}, {label(mi)}"
         + (f", {label(ei)}" if ei is not None else ""))
  stars = table.text(path, ii, label) if ii else None
  return t, m, e, keep, stars, why


def _kept(t, m, e, keep):
  if e is None:
    order = np.argsort(t[keep], kind="stable")
    return t[keep][order], m[keep][order], None
  return _curve(t[keep], m[keep], e[keep])


def read_many(paths, max_bytes: int = MAX_BYTES, on_file=None, id_column=None, **columns):
  """`read_curve` over `paths`: (index of each good file, [(time, mag, err)], metas,
  [(index, path, reason)] for each bad file), the contract of `io.batch.decode_many`, so
  `scan.workers.DecodePool` can run it (pass `max_bytes` as its raw_len).  With
  `id_column` each file is split by `read_stars`: a file's index is repeated once per star,
  and each star's meta is {"id": star id}."""
  good, curves, metas, errors = [], [], [], []
  for i, path in enumerate(paths):
    if on_file is not None:
      on_file(i)
    try:
      if id_column is None:
        stars = [(None, read_curve(path, max_bytes=max_bytes, **columns))]
      else:
        stars = list(read_stars(path, id_column, max_bytes=max_bytes, **columns))
    except LightCurveError as e:
      errors.append((i, str(path), e.reason))
      continue
    except Exception as e:  # a reader bug must cost one file, not the run
      errors.append((i, str(path), f"unexpected {type(e).__name__}: {e}"))
      continue
    for star, curve in stars:
      good.append(i)
      curves.append(curve)
      metas.append({} if star is None else {"id": star})
  return good, curves, metas, errors


def _read_bounded(path, max_bytes):
  """The file's bytes (gunzipped): regular files only, at most max_bytes before and after
  decompression (astrotl.io.fitsraw.read_file, the one bounded reader)."""
  from astrotl.io import fitsraw
  what = "a light curve (if it really is one, raise max_bytes, or --max_file_mb)"
  raw = fitsraw.read_file(path, max_bytes, LightCurveError, what)
  if raw.startswith(b"\x1f\x8b"):
    try:
      with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
        raw = g.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
      raise LightCurveError(path, f"damaged gzip file ({e}); download it again") from None
    if len(raw) > max_bytes:
      raise LightCurveError(path, f"decompresses to over the {fitsraw.size_text(max_bytes)} "
                            f"limit for {what}")
  return raw


def _fits_table(path, data):
  from astrotl.io import catalog
  try:
    columns = catalog._read_fits(io.BytesIO(data))
  except catalog.CatalogError as e:
    raise LightCurveError(path, e.reason) from None
  return _Columns(list(columns), list(columns.values()))


class _Columns:
  """A table's column names (None: no header) and values, converted when asked for."""

  def __init__(self, names, values):
    self.names, self.values, self.ncols = names, values, len(values)

  def columns(self, path, idx, label):
    return [_numbers(path, self.values[i], label(i)) for i in idx]

  def text(self, path, idx, label):
    """(n,) str: each row's values in columns `idx` joined by "." (a star's id)."""
    parts = [_id_text(path, self.values[i], label(i)) for i in idx]
    return parts[0] if len(parts) == 1 else np.array([".".join(p) for p in zip(*parts)])


class _TextRows:
  """Rows of a text table, split into fields only when the fast parser fails."""

  def __init__(self, names, rows, delim):
    self.names, self.rows, self.delim = names, rows, delim
    self.ncols = len(self.split(rows[0]))

  def split(self, row):
    return [f.strip().strip("\"'") for f in row.split(self.delim)] if self.delim else row.split()

  def columns(self, path, idx, label):
    try:
      a = np.loadtxt(self.rows, delimiter=self.delim, usecols=idx, ndmin=2, comments=None)
      return list(a.T)
    except ValueError:  # empty fields, quotes, short rows, text: parse slowly, name the row
      pass
    fields = [self.split(r) for r in self.rows]
    need = max(idx)
    for k, f in enumerate(fields):
      if len(f) <= need:
        raise LightCurveError(path, f"data row {k + 1} has {len(f)} fields, too few for column "
                              f"{label(need)}; the file may be truncated: fix or remove the row")
    return [_numbers(path, [f[i] for f in fields], label(i)) for i in idx]

  def text(self, path, idx, label):
    """(n,) str: each row's fields `idx` as written, joined by "." (a star's id)."""
    need = max(idx)
    out = []
    for k, row in enumerate(self.rows):
      f = self.split(row)
      if len(f) <= need:
        raise LightCurveError(path, f"data row {k + 1} has {len(f)} fields, too few for the "
                              f"star id column {label(need)}; fix or remove the row")
      out.append(".".join(f[i] for i in idx))
    return np.array(out, dtype=str)


def _is_number(token):
  try:
    float(token)
    return True
  except ValueError:
    return False


def _text_table(path, data):
  if b"\0" in data:
    raise LightCurveError(path, "binary content: not a text or FITS light curve")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    text = data.decode("latin-1")  # a degree sign in a comment must not cost the file
  comment, rows, delim = None, [], None
  for line in text.splitlines():
    s = line.strip()
    if not s:
      continue
    if s[0] in "#%":
      if not rows:
        comment = s.lstrip("#%").strip()
      continue
    if not rows:
      delim = "," if "," in s else ";" if ";" in s else None
    rows.append(s)
  if not rows:
    raise LightCurveError(path, "no data rows (the file is empty or only comments)")
  table = _TextRows(None, rows, delim)
  first = table.split(rows[0])
  if not any(_is_number(n) for n in first if n):   # a header line
    if len(rows) == 1:
      raise LightCurveError(path, "a header but no data rows")
    return _TextRows(first, rows[1:], delim)
  above = table.split(comment) if comment else []
  if len(above) == len(first) and not any(_is_number(n) for n in above):
    table.names = above    # a commented header right above the data (.time, .mjd)
  return table


def _norm(name):
  return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _err_like(n):
  return n in ERR_ALIASES or "err" in n or n.startswith(("sig", "unc", "emag", "dmag", "ermag"))


def _find_columns(path, names, ncols, time_column, mag_column, err_column, skip=()):
  """Indices (time, mag, err or None) of the columns to use; columns in `skip` (a star's
  id columns) are never chosen by default."""
  skip = tuple(skip)
  if names is None:
    given = [_index(path, c, ncols, None, flag) for c, flag in
             ((time_column, "time_column"), (mag_column, "mag_column"), (err_column, "err_column"))]
    rest = [i for i in range(ncols) if i not in skip]   # time, mag, err in this order
    if len(rest) < 2 and (given[0] is None or given[1] is None):
      raise LightCurveError(path, f"{ncols} column{'s' if ncols != 1 else ''} and no header"
                            + (f", {len(skip)} of them star ids" if skip else "")
                            + "; a light curve needs time, mag and (optionally) err columns")
    ti = given[0] if given[0] is not None else rest[0]
    mi = given[1] if given[1] is not None else rest[1]
    ei = given[2] if given[2] is not None else (rest[2] if len(rest) > 2 else None)
    return ti, mi, ei
  norm = [_norm(n) for n in names]

  def first(test, avoid=()):
    return next((i for i, n in enumerate(norm) if i not in avoid + skip and test(n)), None)

  def need(i, what, looked, flag):
    if i is None:
      raise LightCurveError(path, f"no {what} column (looked for {looked}); columns are "
                            f"{names}; name it with {flag}= (--{flag})")
    return i

  ti = _index(path, time_column, ncols, names, "time_column")
  if ti is None:
    ti = first(lambda n: n in TIME_ALIASES)
    if ti is None:
      ti = first(lambda n: n.startswith(("hjd", "bjd", "mjd", "jd")) and not _err_like(n))
  need(ti, "time", ", ".join(TIME_ALIASES) + ", hjd*/bjd*/mjd*/jd*", "time_column")
  mi = _index(path, mag_column, ncols, names, "mag_column")
  if mi is None:
    mi = first(lambda n: n in MAG_ALIASES, (ti,))
    if mi is None:
      mi = first(lambda n: (n.startswith("mag") or n.endswith("mag")) and not _err_like(n),
                 (ti,))
  need(mi, "magnitude", ", ".join(MAG_ALIASES) + ", mag*, *mag", "mag_column")
  ei = _index(path, err_column, ncols, names, "err_column")
  if ei is None:
    if mi + 1 < ncols and mi + 1 not in skip and _err_like(norm[mi + 1]):
      ei = mi + 1
    else:
      ei = first(lambda n: n in ERR_ALIASES, (ti, mi))
    if ei is None:
      errs = [i for i, n in enumerate(norm) if i not in (ti, mi) + skip and _err_like(n)]
      if len(errs) > 1:
        raise LightCurveError(path, f"several error columns {[names[i] for i in errs]} and "
                              f"none follows the magnitude {names[mi]!r}; name one with "
                              "err_column= (--err_column)")
      ei = errs[0] if errs else None
  return ti, mi, ei


def _index(path, column, ncols, names, flag):
  """The 0-based index a `*_column` override names, or None if not given."""
  if column is None:
    return None
  if isinstance(column, (int, np.integer)) or str(column).strip().isdigit():
    i = int(column)
    if not 0 <= i < ncols:
      raise LightCurveError(path, f"{flag}={column}: the file has {ncols} columns, numbered "
                            f"0..{ncols - 1}")
    return i
  if names is None:
    raise LightCurveError(path, f"{flag}={column!r}: the file has no header line; give the "
                          f"column's number (0-based, 0..{ncols - 1})")
  hits = [i for i, n in enumerate(names) if _norm(n) == _norm(column)]
  if not hits:
    raise LightCurveError(path, f"{flag}={column!r}: no such column; columns are {names}")
  return hits[0]


def _id_text(path, values, label):
  """A FITS column as id text: integers as written, integral floats without ".0"."""
  values = np.asarray(values)
  if values.ndim != 1:
    raise LightCurveError(path, f"column {label} holds arrays of shape {values.shape[1:]} per "
                          "row; a star id column must hold one value per row")
  if values.dtype.kind == "f":
    return np.array([str(int(v)) if np.isfinite(v) and v == int(v) else repr(float(v))
                     for v in values], dtype=str)
  if values.dtype.kind in "SO":
    return np.array([v.decode("utf-8", "replace").strip() if isinstance(v, bytes)
                     else str(v).strip() for v in values], dtype=str)
  return values.astype(str)


def _numbers(path, values, label):
  """float64 array of a column; empty/NaN-like fields become NaN (dropped later)."""
  if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
    if values.ndim != 1:
      raise LightCurveError(path, f"column {label} holds arrays of shape {values.shape[1:]} "
                            "per row; name a column of numbers")
    return values.astype(np.float64)
  try:
    return np.array(values, dtype=np.float64)
  except ValueError:
    pass
  out = np.empty(len(values))
  for i, v in enumerate(values):
    v = str(v).strip()
    try:
      out[i] = float(v)
    except ValueError:
      if v.lower() not in MISSING_TEXT:
        raise LightCurveError(path, f"column {label}, data row {i + 1}: {v!r} is not a number; "
                              "times must be days (MJD, HJD, JD), magnitudes and errors "
                              "numbers: fix the row or name other columns") from None
      out[i] = np.nan
  return out
