"""What to scan: files from folders, globs or a catalog, resolved before any work.

The scan reads spectra (SUFFIXES); `python -m astrotl.classify_lightcurves` uses the same
listing with light-curve suffixes.  Folders are walked without following links, and every
entry whose name ends in one of the suffixes is an input, whatever it is (a folder named
x.fits.gz, a dangling link): the reader then reports it, so every input ends in exactly
one of predictions and errors.

Catalog paths are resolved against --root (default: the catalog's folder): a listed
`.fits` also matches `.fits.gz` on disk and the other way round, and when the archive
layout YYYYMMDD/PLANID/ is absent a file is found by name anywhere under --root.  Paths
that leave --root are refused unless allowed, and a file listed twice is scanned once.
"""

import dataclasses
import functools
import glob
import os
import pathlib
import re

import numpy as np

from astrotl.io import catalog as io_catalog

SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz")


class InputError(ValueError):
  """A problem with the inputs a user named; the message says what to do."""


@dataclasses.dataclass
class Inputs:
  paths: list                       # files to scan, in order
  source: str                       # what the user named, for messages
  table: dict | None = None         # catalog columns (numpy), or None
  rows: np.ndarray | None = None    # catalog row of each path
  duplicates: list = dataclasses.field(default_factory=list)  # (row, first row, path)
  refused: list = dataclasses.field(default_factory=list)     # (row, path, reason)
  missing: int = 0                  # inputs with no file on disk
  carry: object = None              # every catalog column (pyarrow Table), or None

  def catalog_rows(self, files, first) -> np.ndarray:
    """Catalog rows of `files`, which are inputs from number `first` on, in order."""
    rows, k = [], first
    for f in files:
      while self.paths[k] != f:
        k += 1
      rows.append(self.rows[k])
      k += 1
    return np.asarray(rows, np.int64)

  @functools.cached_property
  def _carried(self) -> dict:
    return carried_names(self.carry.column_names) if self.carry is not None else {}

  def carried(self) -> dict:
    """{output column: (index in `carry`, the catalog's own name)} of every catalog column
    carried into the predictions (see `carried_names`); {} without a catalog."""
    return self._carried


def carried_names(names) -> dict:
  """{output column: (index, catalog column)}: every catalog column as cat_<its name> (case
  and any 'combined_' prefix kept), made a valid identifier ('snru.1' -> 'snru_1', an
  unnamed column -> column<k>) and unique ignoring case (a second 'RA' -> cat_RA_2)."""
  out, seen = {}, set()
  for i, name in enumerate(names):
    base = "cat_" + (re.sub(r"\W", "_", str(name).strip()) or f"column{i + 1}")
    out_name, k = base, 1
    while out_name.lower() in seen:
      k += 1
      out_name = f"{base}_{k}"
    seen.add(out_name.lower())
    out[out_name] = (i, str(name))
  return out


def from_spectra(text) -> Inputs:
  """Spectrum files named by folders, files or globs (comma-separated text, or a list)."""
  return from_files(text, SUFFIXES, "--spectra")


def from_files(text, suffixes, flag: str) -> Inputs:
  """Files named by folders (files ending in `suffixes` below them), files or globs, as
  comma-separated text or a list; sorted and unique; `flag` names the option in messages."""
  items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
  text = text if isinstance(text, str) else f"{len(items)} paths"
  found = []
  for item in (s.strip() for s in items):
    if not item:
      continue
    p = pathlib.Path(item)
    if p.is_dir():
      found += _walk(p, suffixes)
    elif glob.has_magic(item):
      matches = glob.glob(item, recursive=True)
      if not matches:
        raise InputError(f"{flag}={item}: the pattern matches nothing")
      for m in matches:
        found += (_walk(pathlib.Path(m), suffixes) if os.path.isdir(m) and not os.path.islink(m)
                  else [m])
    elif os.path.lexists(item):
      found.append(item)
    else:
      raise InputError(f"{flag}={item}: no such folder or file")
  paths = sorted(set(found))
  if not paths:
    raise InputError(f"no input files found in {text} (looked for files named "
                     f"{', '.join('*' + s for s in suffixes)})")
  return Inputs(paths, text)


def _walk(folder: pathlib.Path, suffixes) -> list:
  out = []
  for root, dirs, files in os.walk(folder):  # never follows links: no loops
    for name in files + dirs:
      if name.lower().endswith(suffixes):
        out.append(os.path.join(root, name))
    dirs[:] = [d for d in dirs if not d.lower().endswith(suffixes)]
  return out


def is_catalog(path, path_column=None) -> bool:
  """True when `path` is a CSV/FITS table with a file-path column (`path_column`, or one
  of io.catalog.PATH_ALIASES) rather than an input file itself."""
  if not os.path.isfile(path) or not os.fspath(path).lower().endswith(io_catalog.SUFFIXES):
    return False
  if path_column:
    return True
  try:
    table = io_catalog.read_table(path)
  except io_catalog.CatalogError:
    return False
  return io_catalog.find_column(table, io_catalog.PATH_ALIASES) is not None


def from_catalog(path, root=None, path_column=None, allow_outside_root=False,
                 suffixes=SUFFIXES, flag="--catalog", keep=None, carry=False) -> Inputs:
  """Files listed by a catalog (see the module docstring); `keep` names the catalog
  columns to hold in `table` (default all); `carry`: also hold every column, as the file
  names it, in `carry` (a pyarrow Table, compact for a survey catalog), for the scan to
  carry into its outputs."""
  if not os.path.isfile(path):
    raise InputError(f"{flag}={path}: no such file")
  try:
    rel, table = io_catalog.catalog_paths(path, path_column, keep)
    carried = io_catalog.read_arrow(path) if carry else None
  except io_catalog.CatalogError as e:
    raise InputError(str(e)) from None
  if root is not None and not os.path.isdir(root):
    raise InputError(f"--root={root}: no such folder")
  base = os.path.abspath(root if root is not None else os.path.dirname(os.path.abspath(path)))
  by_name = None
  paths, rows, duplicates, refused, first = [], [], [], [], {}
  missing = 0
  inside = _Inside(base)
  for row, r in enumerate(rel):
    full = r if os.path.isabs(r) else os.path.normpath(os.path.join(base, r))
    if not allow_outside_root and (root is not None or not os.path.isabs(r)) and \
        not inside(full):
      refused.append((row, full, f"outside {base}; pass --allow_outside_root to scan it"))
      continue
    found = _existing(full)
    if found is None:
      if by_name is None:
        by_name = _names_under(base, suffixes)
      found = _by_name(by_name, full)
    if found is None:
      missing += 1
      found = full
    if found in first:
      duplicates.append((row, first[found], found))
      continue
    first[found] = row
    paths.append(found)
    rows.append(row)
  return Inputs(paths, str(path), table, np.asarray(rows, np.int64), duplicates, refused, missing,
                carried)


class _Inside:
  """Whether a path, links resolved, lies under `base`.  Folders are resolved once each
  and a file only when it is a link: one lstat a file instead of a realpath (a survey
  catalog has millions of files in thousands of folders)."""

  def __init__(self, base):
    self.base = os.path.realpath(base)
    self.folders = {}

  def __call__(self, path):
    folder, name = os.path.split(path)
    real = self.folders.get(folder)
    if real is None:
      real = self.folders[folder] = os.path.realpath(folder)
    real = os.path.join(real, name)
    if os.path.islink(real):
      real = os.path.realpath(real)
    return os.path.commonpath([real, self.base]) == self.base


def _existing(path):
  """The path, or its .gz twin, if either exists."""
  if os.path.lexists(path):
    return path
  twin = path[:-3] if path.endswith(".gz") else path + ".gz"
  return twin if os.path.lexists(twin) else None


def _names_under(base, suffixes) -> dict:
  """file name -> paths under `base`, for catalogs whose folder layout is absent."""
  out = {}
  for root, _, files in os.walk(base):
    for name in files:
      if name.lower().endswith(suffixes):
        out.setdefault(name, []).append(os.path.join(root, name))
  return out


def _by_name(index, path):
  name = os.path.basename(path)
  for n in (name, name[:-3] if name.endswith(".gz") else name + ".gz"):
    hits = index.get(n, [])
    if len(hits) == 1:
      return hits[0]
  return None



ID_ALIASES = ("name", "id", "designation", "main_id", "object", "wd", "wdj_name", "source_id",
              "obsid")


@dataclasses.dataclass
class Known:
  """A catalog of known objects (e.g. white dwarfs) to cross-match candidates against."""
  path: str
  ids: list
  matcher: object
  radius: float

  def match(self, ra, dec):
    return self.matcher.match(ra, dec, self.radius)


def load_known(path, ra_column=None, dec_column=None, radius=3.0) -> Known:
  """Reads and checks --known now, so a bad catalog fails before the scan, not after it."""
  if not os.path.isfile(path):
    raise InputError(f"--known={path}: no such file")
  try:
    table = io_catalog.read_table(path)
    ra, dec = io_catalog.radec(table, path, ra_column, dec_column,
                               flags=("--known_ra_column", "--known_dec_column"))
  except io_catalog.CatalogError as e:
    raise InputError(f"--known: {e}") from None
  col = io_catalog.find_column(table, ID_ALIASES)
  n = len(ra)
  ids = [str(v).strip() for v in table[col]] if col else [f"row {i}" for i in range(n)]
  return Known(str(path), ids, io_catalog.Matcher(ra, dec), float(radius))
