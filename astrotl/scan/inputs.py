"""What to scan: files from folders, globs or a catalog, resolved before any work.

The scan reads spectra (SUFFIXES); `python -m astrotl.classify_lightcurves` uses the same
listing with light-curve suffixes.  Folders are walked without following links, and every
entry whose name ends in one of the suffixes is an input, whatever it is (a folder named
x.fits.gz, a dangling link): the reader then reports it, so every input ends in exactly
one of predictions and errors.

Catalog paths are resolved against --root (default: the catalog's folder): a listed
`.fits` also matches `.fits.gz` on disk and the other way round, and when the archive
layout YYYYMMDD/PLANID/ is absent a file is found by name anywhere under --root.  Paths
that leave --root are refused unless allowed, a row without a path is refused, and a
file listed twice is scanned once.

`from_catalog` reads a catalog whole and resolves every row at once (for training sets
and queries); the scan opens its catalog with `open_catalog`, which reads it in blocks and
resolves it a chunk at a time (`Catalog`), so that a survey catalog costs the same memory
as a small one.
"""

import array
import contextlib
import dataclasses
import functools
import glob
import hashlib
import json
import os
import pathlib
import re
import threading

import numpy as np

from astrotl.io import catalog as io_catalog
from astrotl.io import catalog_blocks
from astrotl.io import limits as io_limits

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

  # What the scan asks of its inputs, here and of a streamed `Catalog` alike.
  digest = None  # the scan's manifest hashes `paths` instead

  @property
  def n_items(self) -> int:
    """How many inputs the scan cuts into chunks."""
    return len(self.paths)

  def chunk_files(self, a, b) -> list:
    """The files of inputs [a, b), in order."""
    return self.paths[a:b]

  def carried_rows(self, files, first):
    """The carried columns (arrow, `carried()`'s indices) of `files`, inputs of the chunk
    that starts at input `first`, in order."""
    return self.carry.take(self.catalog_rows(files, first))

  def chunk_note(self, first):
    """What the chunk starting at `first` left out, to keep in its table (see Catalog)."""
    return None

  def has_nulls(self, index) -> bool:
    """Whether carried column `index` holds a null anywhere in the catalog."""
    return self.carry.column(index).null_count > 0

  def tally(self, chunk, table):
    """A finished chunk's table as the merge reads it (see Catalog)."""
    return table

  @property
  def n_inputs(self) -> int:
    return len(self.paths)

  @property
  def n_duplicates(self) -> int:
    return len(self.duplicates)

  @property
  def n_refused(self) -> int:
    return len(self.refused)


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
                 suffixes=SUFFIXES, flag="--catalog", keep=None, carry=False,
                 limits=None) -> Inputs:
  """Files listed by a catalog (see the module docstring); `keep` names the catalog
  columns to hold in `table` (default all); `carry`: also hold every column, as the file
  names it, in `carry` (a pyarrow Table, compact for a survey catalog), for the scan to
  carry into its outputs; `limits` (io.limits.Limits) bounds what the file may hold."""
  if not os.path.isfile(path):
    raise InputError(f"{flag}={path}: no such file")
  try:
    rel, table = io_catalog.catalog_paths(path, path_column, keep, limits)
    carried = io_catalog.read_arrow(path, limits) if carry else None
  except io_catalog.CatalogError as e:
    raise InputError(str(e)) from None
  if root is not None and not os.path.isdir(root):
    raise InputError(f"--root={root}: no such folder")
  resolve = _Resolver(path, root, allow_outside_root, suffixes)
  paths, rows, duplicates, refused, first = [], [], [], [], {}
  missing = 0
  for row, r in enumerate(rel):
    found, why, lost = resolve(r)
    if why:
      refused.append((row, found, why))
      continue
    missing += lost
    if found in first:
      duplicates.append((row, first[found], found))
      continue
    first[found] = row
    paths.append(found)
    rows.append(row)
  return Inputs(paths, str(path), table, np.asarray(rows, np.int64), duplicates, refused, missing,
                carried)


NOTE = b"astrotl.catalog"  # a chunk table's metadata key: the rows it left out (Catalog)


def open_catalog(path, root=None, path_column=None, allow_outside_root=False,
                 suffixes=SUFFIXES, flag="--catalog", limits=None, wait=True) -> "Catalog":
  """The scan's catalog, read in blocks and resolved a chunk at a time (`Catalog`), with
  from_catalog's rules and errors; `limits` (io.limits.Limits) bounds the file.  With
  wait=False it returns once the header and columns are checked, and reads the catalog
  meanwhile (the scan loads its model then); `Catalog.wait` waits for it."""
  if not os.path.isfile(path):
    raise InputError(f"{flag}={path}: no such file")
  try:
    found = Catalog(path, root, path_column, allow_outside_root, suffixes, limits)
  except io_catalog.CatalogError as e:
    raise InputError(str(e)) from None
  return found.wait() if wait else found


class Catalog:
  """A catalog's files for the scan, resolved a chunk at a time, so that its memory does
  not grow with the catalog (LAMOST DR9's has 11.2 M rows).

  Opening reads the catalog's path columns once, in blocks (`io.catalog_blocks`; a CSV's
  other columns are parsed, not converted): the number of rows, a sha256 of every row's
  path as listed (the scan's manifest pins it, as it pinned the paths), and the rows that
  list a file an earlier row listed.  Those are found from a hash of each row's file name
  (8 bytes a row, while opening only, computed a block at a time by arrow): two rows can
  only name one file if their names match up to '.gz' (a file found by its twin or by
  name has that name), so only rows whose names collide are resolved, in one more pass.
  Opening also resolves rows from the first until one's file exists (`first`), so that a
  wrong --root fails before any work.  Then every column is read once more, for the
  types and nulls of the columns the outputs carry.  All this runs in a thread of its
  own, started by the constructor: `wait` waits for the path columns' part (`n_items`,
  `digest`, `first`, `probe`, `dups`), wait(everything=True) for the rest, which is first
  needed by a chunk's table, after its spectra are decoded.

  The scan's chunks are ranges of catalog rows, so each is a fixed function of the
  catalog and the disk (resume and --distributed stay exact).  `chunk_files(a, b)` reads
  rows [a, b)'s paths and resolves them when the chunk's first task is decoded;
  `carried_rows` reads the rows' every column when the chunk's table is made.  What a
  chunk refused, skipped as a duplicate or did not find rides in its table's metadata
  (`chunk_note`) and the merge adds it up (`tally`): the summary's counts are those of
  from_catalog.
  """

  def __init__(self, path, root, path_column, allow_outside_root, suffixes, limits=None):
    self.source = str(path)
    self.blocks = catalog_blocks.Blocks(path, limits)  # every column: what is carried
    names = {}
    for i, name in enumerate(self.blocks.names):  # read_table's keys: first of each
      key = io_catalog.column_name(name)
      if key and key not in names:
        names[key] = i
    self.columns = io_catalog.path_columns(path, names, path_column)
    self.index = [names[c] for c in self.columns]
    self.listing = catalog_blocks.Blocks(path, limits, columns=self.index)  # the paths'
    if root is not None and not os.path.isdir(root):
      raise InputError(f"--root={root}: no such folder")
    self.resolve = _Resolver(path, root, allow_outside_root, suffixes)
    self._pending = {}  # chunk's first row -> (its last row, {file: row in it}, its note)
    self._notes = {}    # chunk -> note, as the merge reads them
    self._read, self._error = {}, None
    self._ready, self._done = threading.Event(), threading.Event()
    import pyarrow.compute  # noqa: F401 (imported here, not in the thread)
    threading.Thread(target=self._open, args=(root is not None, allow_outside_root, suffixes),
                     daemon=True, name="astrotl-catalog").start()

  def _open(self, root_given, allow_outside_root, suffixes):
    """Reads the catalog (see the class docstring): the thread's work."""
    try:
      keys, listed = [], [hashlib.sha256()]  # the rows' paths, as listed
      self._first, self._probe = None, [0, 0]  # probe: rows refused, rows not found
      self.listing.survey(lambda first, t: self._survey(first, t, keys, listed))
      dups = self._duplicates(np.concatenate(keys) if keys else np.zeros(0, np.int64))
      keys.clear()
      import pyarrow as pa
      pa.default_memory_pool().release_unused()  # the survey's blocks: RSS is what counts
      digest = hashlib.sha256(json.dumps(
          ["astrotl.scan.inputs.Catalog 1", self.listing.n_rows, self.blocks.names,
           self.columns, self.resolve.base, root_given, bool(allow_outside_root),
           list(suffixes), listed[0].hexdigest()]).encode()).hexdigest()
      self._read = {"n_items": self.listing.n_rows, "digest": digest, "dups": dups,
                    "first": self._first, "probe": self._probe}
      self._ready.set()
      self.blocks.survey()
      pa.default_memory_pool().release_unused()
    except BaseException as e:  # raised by wait(), in the caller's thread
      self._error = e
    finally:
      self._ready.set()
      self._done.set()

  def wait(self, everything=False) -> "Catalog":
    """Waits until the path columns are read, or with `everything` every column (a stop
    signal ends the wait: astrotl.cli.check); errors are InputErrors."""
    from astrotl import cli
    event = self._done if everything else self._ready
    while not event.wait(0.1):
      cli.check()
    if self._error is not None and (everything or not self._read):
      if isinstance(self._error, io_catalog.CatalogError):
        raise InputError(str(self._error)) from None
      raise self._error
    return self

  n_items = property(lambda self: self.wait()._read["n_items"], doc="catalog rows")
  digest = property(lambda self: self.wait()._read["digest"], doc="for the manifest")
  dups = property(lambda self: self.wait()._read["dups"], doc="duplicate rows, sorted")
  first = property(lambda self: self.wait()._read["first"],
                   doc="the first row whose file exists, or None: then every row was seen")
  probe = property(lambda self: self.wait()._read["probe"],
                   doc="[rows refused, rows not found] before `first`")

  def _listed(self, t) -> list:
    """Each row's path as listed, from the path columns of a block of rows (`index`'s
    columns, in order), with read_table's values."""
    values = dict(zip(self.columns, (v for _, v in io_catalog._numpy_columns(t))))
    return io_catalog.listed_paths(values, self.columns)

  def _survey(self, first, t, keys, listed):
    """One block's part of opening: `t` holds the path columns."""
    if first == 0:  # the survey started over
      keys.clear()
      listed[0] = hashlib.sha256()
      self._first, self._probe = None, [0, 0]
    keys.append(self._keys(t))
    _hash_rows(listed[0], t.columns)
    if self._first is None:
      for k, r in enumerate(self._listed(t)):
        _, why, lost = self.resolve(r)
        if why or lost:
          self._probe[0 if why else 1] += 1
        else:
          self._first = first + k
          break

  def _keys(self, t) -> np.ndarray:
    """A hash of each row's file name up to '.gz' (a name's last part, or the LAMOST name's
    numbers and plan), equal for equal names: what two rows naming one file share; `t`
    holds the path columns."""
    import pyarrow as pa
    import pyarrow.compute as pc
    cols = [c.combine_chunks() for c in t.columns]
    if len(cols) == 1:
      name = pc.utf8_trim_whitespace(pc.cast(cols[0], pa.string()).fill_null(""))
      name = pc.replace_substring_regex(name, r"^.*/", "")
      name = pc.replace_substring_regex(name, r"\.gz$", "")
      return np.fromiter(map(hash, name.to_pylist()), np.int64, len(name))
    _, planid, lmjd, spid, fiberid = cols  # LAMOST_PATH_COLUMNS: the name leaves out obsdate
    plan = pc.dictionary_encode(pc.utf8_trim_whitespace(pc.cast(planid, pa.string())
                                                        .fill_null("")))
    ids = np.fromiter(map(hash, plan.dictionary.to_pylist()), np.int64, len(plan.dictionary))
    key = _integers(lmjd)
    for part in (ids[plan.indices.to_numpy()], _integers(spid), _integers(fiberid)):
      key = key * np.uint64(0x9E3779B97F4A7C15) + part.view(np.uint64)  # wraps around
    return key.view(np.int64)

  def _duplicates(self, keys) -> np.ndarray:
    """The rows (sorted) whose file an earlier row lists, as from_catalog decides."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    same = np.flatnonzero(ranked[1:] == ranked[:-1])
    rows = np.unique(np.concatenate([order[same], order[same + 1]]))  # names met twice
    del order, ranked, same
    first, dups = {}, []
    if rows.size:
      with contextlib.closing(self.listing.blocks(int(rows[0]))) as blocks:
        for start, t in blocks:
          lo, hi = np.searchsorted(rows, [start, start + t.num_rows])
          for row, r in zip(rows[lo:hi], self._listed(t.take(rows[lo:hi] - start))):
            found, why, _ = self.resolve(r)
            if why is None:
              if found in first:
                dups.append(row)
              else:
                first[found] = row
          if hi == rows.size:
            break
    return np.asarray(dups, np.int64)

  @functools.cached_property
  def _carried(self) -> dict:
    return carried_names(self.blocks.names)

  def carried(self) -> dict:
    """{output column: (column index, the catalog's own name)} of every catalog column."""
    return self._carried

  def has_nulls(self, index) -> bool:
    return self.wait(everything=True).blocks.nulls[index]

  def chunk_files(self, a, b) -> list:
    """The files of catalog rows [a, b), in order: those not refused and not listed
    before; which row each is and what the chunk left out are kept for its table."""
    t = self.wait().listing.rows(a, b)  # (never while the thread reads it)
    dups = set((self.dups[np.searchsorted(self.dups, a):np.searchsorted(self.dups, b)]
                - a).tolist())
    files, at, seen = [], [], set()
    note = {"rows": b - a, "refused": 0, "duplicates": 0, "missing": 0}
    for k, r in enumerate(self._listed(t)):
      found, why, lost = self.resolve(r)
      if why:
        note["refused"] += 1
        continue
      note["missing"] += lost  # a duplicate not found counts too, as in from_catalog
      if k in dups or found in seen:  # (`seen`: a file that appeared since opening)
        note["duplicates"] += 1
        continue
      seen.add(found)
      files.append(found)
      at.append(k)
    self._pending[a] = (b, dict(zip(files, at)), note)
    return files

  def carried_rows(self, files, first):
    """The catalog columns of `files` (some of chunk_files(first, ...)), in order: the
    chunk's rows read now (chunks come in order, so the reading goes forward)."""
    import pyarrow as pa
    b, at, _ = self._pending[first]
    t = self.wait(everything=True).blocks.rows(first, b)
    return t.take(pa.array([at[f] for f in files], pa.int64()))

  def chunk_note(self, first) -> dict:
    """What the chunk starting at row `first` left out; its rows are let go."""
    return self._pending.pop(first)[2]

  def tally(self, chunk, table):
    """Notes a finished chunk's note (chunk_note, in its table's metadata); returns the
    table without it."""
    meta = table.schema.metadata or {}
    self._notes[chunk] = json.loads(meta.get(NOTE, b"{}"))
    return table.replace_schema_metadata(None)

  def _total(self, key) -> int:
    return sum(n.get(key, 0) for n in self._notes.values())

  @property
  def n_inputs(self) -> int:
    """Files scanned (found or not): the rows neither refused nor duplicates."""
    return self._total("rows") - self._total("refused") - self._total("duplicates")

  @property
  def n_duplicates(self) -> int:
    return self._total("duplicates")

  @property
  def n_refused(self) -> int:
    return self._total("refused")

  @property
  def missing(self) -> int:
    return self._total("missing")


def _integers(col) -> np.ndarray:
  """int(float(v)) of each value as uint64 bits (an empty or bad one: any number)."""
  import pyarrow as pa
  import pyarrow.compute as pc
  try:
    v = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
  except pa.ArrowException:  # text that is not a number
    v = np.array([io_catalog._number(x) for x in col.to_pylist()], float)
  v = np.nan_to_num(np.trunc(v), nan=-1, posinf=-2, neginf=-3)
  return np.clip(v, -2.0**63, 2.0**63 - 1024).astype(np.int64).view(np.uint64)


def _hash_rows(h, cols):
  """Feeds `h` the rows of arrow columns as text, each field ended by \\x1f: the same
  bytes however the rows come in blocks."""
  import pyarrow as pa
  import pyarrow.compute as pc
  text = [pc.cast(c, pa.string()).fill_null("") for c in cols]
  rows = pc.binary_join_element_wise(*text, "", "\x1f")  # fields, a separator after each
  for chunk in (rows.chunks if isinstance(rows, pa.ChunkedArray) else [rows]):
    if len(chunk):
      offsets = np.frombuffer(chunk.buffers()[1], np.int32, len(chunk) + 1, chunk.offset * 4)
      h.update(memoryview(chunk.buffers()[2])[offsets[0]:offsets[-1]])


class _Resolver:
  """A catalog's path -> (file, why it is refused or None, whether it is missing): the
  rules of the module docstring, one row at a time.  A missing file is returned as
  listed (the reader then reports it)."""

  def __init__(self, catalog, root, allow_outside_root, suffixes):
    self.base = os.path.abspath(root if root is not None
                                else os.path.dirname(os.path.abspath(catalog)))
    self.root_given, self.outside_ok, self.suffixes = root is not None, allow_outside_root, suffixes
    self.inside = _Inside(self.base)
    self.by_name = None  # built at the first file not found where listed

  def __call__(self, r):
    if not r:
      return r, "no file path in this row", False
    full = r if os.path.isabs(r) else os.path.normpath(os.path.join(self.base, r))
    if not self.outside_ok and (self.root_given or not os.path.isabs(r)) and \
        not self.inside(full):
      return full, f"outside {self.base}; pass --allow_outside_root to scan it", False
    found = _existing(full)
    if found is None:
      if self.by_name is None:
        self.by_name = _ByName(self.base, self.suffixes)
      found = self.by_name.find(full)
    return (full, None, True) if found is None else (found, None, False)


class _Inside:
  """Whether a path, links resolved, lies under `base`.  Folders are resolved once each
  and a file only when it is a link: one lstat a file instead of a realpath (a survey
  catalog has millions of files in thousands of folders)."""

  def __init__(self, base):
    self.base = os.path.realpath(base)
    self.below = self.base.rstrip(os.sep) + os.sep  # realpath gives normal paths
    self.folders = {}

  def __call__(self, path):
    folder, name = os.path.split(path)
    real = self.folders.get(folder)
    if real is None:
      real = self.folders[folder] = os.path.realpath(folder)
    real = os.path.join(real, name)
    if os.path.islink(real):
      real = os.path.realpath(real)
    return real == self.base or real.startswith(self.below)


def _existing(path):
  """The path, or its .gz twin, if either exists."""
  if os.path.lexists(path):
    return path
  twin = path[:-3] if path.endswith(".gz") else path + ".gz"
  return twin if os.path.lexists(twin) else None


class _ByName:
  """The files under `base` by name, for catalogs whose folder layout is absent: 12 bytes
  a file (a hash of its name and its folder's number), not a dict of paths, since a
  survey's tree holds millions."""

  def __init__(self, base, suffixes):
    self.folders, keys, where = [], array.array("q"), array.array("i")
    for root, _, files in os.walk(base):
      k = None
      for name in files:
        if name.lower().endswith(suffixes):
          if k is None:
            k = len(self.folders)
            self.folders.append(root)
          keys.append(hash(name))
          where.append(k)
    keys = np.frombuffer(keys, np.int64) if keys else np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    self.keys = keys[order]
    self.where = (np.frombuffer(where, np.int32) if where else np.zeros(0, np.int32))[order]

  def hits(self, name) -> set:
    """Paths of the files called `name` (a hash shared by another name finds no file)."""
    h = hash(name)
    lo, hi = np.searchsorted(self.keys, h, "left"), np.searchsorted(self.keys, h, "right")
    paths = (os.path.join(self.folders[w], name) for w in self.where[lo:hi])
    return {p for p in paths if os.path.lexists(p)}

  def find(self, path):
    """The one file with the name of `path` or of its .gz twin, or None."""
    name = os.path.basename(path)
    for n in (name, name[:-3] if name.endswith(".gz") else name + ".gz"):
      hits = self.hits(n)
      if len(hits) == 1:
        return hits.pop()
    return None



ID_ALIASES = ("name", "id", "designation", "main_id", "object", "wd", "wdj_name", "source_id",
              "obsid")


@dataclasses.dataclass
class Known:
  """A catalog of known objects (e.g. white dwarfs) to cross-match candidates against."""
  path: str
  ids: object                       # each row's name (str array, or list)
  matcher: object
  radius: float
  n_rows: int = 0                   # rows in the catalog
  skipped: int = 0                  # of them without a usable RA/Dec: never matched
  example: str = ""                 # the first of those, escaped, for messages

  def match(self, ra, dec):
    return self.matcher.match(ra, dec, self.radius)

  def warning(self):
    """One line on the rows skipped, or None."""
    if self.skipped:
      return (f"--known={self.path}: {self.skipped} of {self.n_rows} rows skipped: no "
              f"usable RA/Dec ({self.example}); --strict_known makes this an error")
    return None


KNOWN_FLAGS = ("--known_ra_column", "--known_dec_column")


def load_known(path, ra_column=None, dec_column=None, radius=3.0, strict=False,
               limits=None) -> Known:
  """Reads and checks --known now, so a bad catalog fails before the scan, not after it.

  Only the RA, Dec and name columns are read.  A row whose RA/Dec is not a position in
  decimal degrees (text, NaN, RA outside [0, 360), Dec outside [-90, 90]) is skipped and
  counted in `skipped`; with `strict` it is an InputError, as is a catalog with no usable
  row.  `limits` (io.limits.Limits) bounds what the file may hold.
  """
  if not os.path.isfile(path):
    raise InputError(f"--known={path}: no such file")
  wanted = {*io_catalog.RA_ALIASES, *io_catalog.DEC_ALIASES, *ID_ALIASES,
            *(io_catalog.column_name(c) for c in (ra_column, dec_column) if c)}
  try:
    try:
      table = io_catalog.read_table(path, wanted, limits)
      names = io_catalog.radec_columns(table, path, ra_column, dec_column, KNOWN_FLAGS)
    except io_catalog.CatalogError as e:
      if e.limit is not None:
        raise
      table = io_catalog.read_table(path, limits=limits)  # all: the message lists them
      names = io_catalog.radec_columns(table, path, ra_column, dec_column, KNOWN_FLAGS)
  except io_catalog.CatalogError as e:
    raise InputError(f"--known: {e}") from None
  ra, dec = (io_catalog.numbers(table[c]) for c in names)
  bad = io_catalog.bad_positions(ra, dec)
  n, skipped, example = len(ra), int(bad.sum()), ""
  if skipped:
    i = int(np.argmax(bad))
    example = "first: data row {}, {}".format(i + 1, ", ".join(
        f"{io_limits.printable(c, 40)}={io_limits.shown(table[c][i])}" for c in names))
    what = (f"{skipped} of {n} rows have no usable RA/Dec (decimal degrees, RA in [0, 360), "
            f"Dec in [-90, 90]; {example})")
    if strict:
      raise InputError(f"--known={path}: {what}; without --strict_known they are skipped")
    if skipped == n:
      raise InputError(f"--known={path}: {what}: none is left to match")
  col = io_catalog.find_column(table, ID_ALIASES)
  if col is None:
    ids = np.char.add("row ", np.arange(n).astype(str))
  elif table[col].dtype == object:  # see io.catalog._text
    ids = [str(v).strip() for v in table[col]]
  else:
    ids = np.char.strip(table[col].astype(str))
  return Known(str(path), ids, io_catalog.Matcher(ra, dec), float(radius), n, skipped,
               example)
