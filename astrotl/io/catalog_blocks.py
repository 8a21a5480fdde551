"""A catalog read in blocks of rows, so that a survey catalog (LAMOST DR9's general
catalogue: 11.2 M rows, ~40 columns) never sits in memory whole.

`Blocks(path)` reads a CSV (plain or gzipped; ',', '|' or tab separated) or FITS (.fits,
.fits.gz) catalog front to back as arrow tables of consecutive rows, with the columns,
names, types and nulls `catalog.read_arrow` gives for the whole file; `columns=` reads
some of them (a CSV's others are parsed but never converted: a few times faster).  `survey()` reads
it once and learns what a whole-file reader knows only at the end: the number of rows,
each column's type and which columns hold a null.  pyarrow infers a CSV column's type
from the first block; when a later block does not fit ('3.5' in a column of integers,
text in a column empty so far), the survey starts over with that column's type inferred
over the whole file, as `pyarrow.csv.read_csv` (read_arrow's reader) infers it.  From
then on every block has those types.  `rows(a, b)` returns any range of rows, reading on
from the last range (an earlier range starts over).

Bytes come through `io.limits` (gunzipped by content, bounded), as read_arrow's do.  A
FITS table is read HDU header first, then NAXIS1 bytes a row, each block converted by
astropy as a small table of its own (`catalog.hdu_arrow`).
"""

import io
import os
import re

from astrotl.io import catalog as io_catalog
from astrotl.io import limits as io_limits
from astrotl.io.catalog import CatalogError

BLOCK_BYTES = 1 << 20   # CSV text parsed at a time (pyarrow's default block)
BLOCK_ROWS = 65536      # FITS rows converted at a time: astropy costs ~0.2 s a block; a DR9
                        # row is ~300 bytes
_CONVERSION = re.compile(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error")


class Blocks:
  """A catalog's rows, a block at a time (see the module docstring)."""

  def __init__(self, path, limits=None, block_bytes=BLOCK_BYTES, block_rows=BLOCK_ROWS,
               columns=None):
    name = os.fspath(path).lower()
    if name.endswith(io_catalog._FITS_SUFFIXES):
      self._src = _Fits(path, limits, block_rows, columns)
    elif name.endswith(io_catalog._TEXT_SUFFIXES):
      self._src = _Csv(path, limits, block_bytes, columns)
    else:
      raise CatalogError(path, f"not a catalog: expected one of "
                         f"{', '.join(io_catalog.SUFFIXES)}")
    self.path = path
    self.names = self._src.names      # of every column, as the file names them
    self.columns = self._src.columns  # the indices of those read, in the tables' order
    self.n_rows = None                # these three once surveyed
    self.nulls = None                 # per column read: whether it holds a null
    self.schema = None
    self._it = self._block = None

  def survey(self, each=None):
    """Reads every block once, calling each(first row, table) in order; a first row of 0
    after others means the survey started over (a CSV column's type changed)."""
    while True:
      n, nulls = 0, [False] * len(self.columns)
      try:
        for first, t in self._src.blocks(0, raw=True):
          n += t.num_rows
          nulls = [a or b for a, b in zip(nulls, self._src.nulls(t))]
          if each is not None:
            each(first, self._src.finish(t))
        break
      except _Retype:
        continue
    self.n_rows, self.nulls, self.schema = n, nulls, self._src.fix()

  def blocks(self, start=0):
    """(first row, table) of every block from the one holding row `start` on."""
    for first, t in self._src.blocks(start):
      if first + t.num_rows > start:
        yield first, t

  def rows(self, a, b):
    """Rows [a, b) as one table, with the surveyed schema."""
    import pyarrow as pa
    if self._block is None or a < self._block[0]:
      self._it, self._block = self.blocks(a), None
    parts = []
    while a < b:
      if self._block is None or self._block[0] + self._block[1].num_rows <= a:
        self._block = next(self._it, None)
        if self._block is None:
          break
        continue
      first, t = self._block
      end = min(b, first + t.num_rows)
      parts.append(t.slice(a - first, end - a))
      a = end
    return pa.concat_tables(parts) if parts else self.schema.empty_table()


class _Retype(Exception):
  """A CSV column needs another type: the survey starts over."""


class _Csv:
  def __init__(self, path, limits, block_bytes, columns):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    self.path, self.limits, self.block_bytes = path, limits, block_bytes
    with io_limits.open_text(path, limits) as f:
      first = f.first_line()
      self.delimiter = max((",", "|", "\t"), key=lambda d: first.count(d.encode()))
      try:  # the header as pyarrow reads it (quotes, empty names)
        reader = pacsv.open_csv(f, parse_options=self._parse())
        self.names = reader.schema.names
      except (OSError, pa.ArrowException) as e:
        raise CatalogError(path, f"cannot parse catalog: {e}") from None
    io_limits.check_columns(path, len(self.names), limits)
    # Read under names of their own, so that types apply to one column each even when
    # the file repeats a name or leaves one empty.
    self.ids = [f"c{i}" for i in range(len(self.names))]
    self.columns = list(range(len(self.names)) if columns is None else columns)
    self.types = {}      # id -> type: the ones inferred over the whole file
    self.schema = None   # of the last pass that ended

  def _parse(self):
    import pyarrow.csv as pacsv
    return pacsv.ParseOptions(delimiter=self.delimiter)

  def _read_options(self):
    import pyarrow.csv as pacsv
    return pacsv.ReadOptions(column_names=self.ids, skip_rows=1, block_size=self.block_bytes)

  def blocks(self, start, raw=False):
    """(first row, table) of the blocks from row `start` on: read_arrow's columns, or
    with `raw` pyarrow's (see `finish`)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    first = 0
    with io_limits.open_text(self.path, self.limits) as f:
      try:
        convert = pacsv.ConvertOptions(column_types=self.types,
                                       include_columns=[self.ids[i] for i in self.columns])
        reader = pacsv.open_csv(f, read_options=self._read_options(),
                                parse_options=self._parse(), convert_options=convert)
        self.schema = reader.schema
        for batch in reader:
          n = batch.num_rows
          if first + n > start:  # earlier blocks are parsed, never converted further
            t = pa.Table.from_batches([batch])
            yield first, t if raw else self.finish(t)
          first += n
      except (OSError, pa.ArrowException) as e:
        found = _CONVERSION.search(str(e))
        if found and self.ids[int(found.group(1))] not in self.types:
          self._retype(int(found.group(1)))
          raise _Retype() from None
        raise CatalogError(self.path, f"cannot parse catalog: {e}") from None

  def _retype(self, k):
    """Column k's type as read_csv infers it from every row (one column in memory)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    with io_limits.open_text(self.path, self.limits) as f:
      try:
        t = pacsv.read_csv(f, read_options=self._read_options(), parse_options=self._parse(),
                           convert_options=pacsv.ConvertOptions(include_columns=[self.ids[k]]))
      except (OSError, pa.ArrowException) as e:
        raise CatalogError(self.path, f"cannot parse catalog: {e}") from None
    self.types[self.ids[k]] = t.schema.field(0).type

  def finish(self, t):
    """read_arrow's columns of a raw block."""
    return io_catalog.arrow_columns(t, [self.names[i] for i in self.columns])

  @staticmethod
  def nulls(t):
    """Whether each column of a raw block holds what read_arrow makes a null ('' in text)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    return [c.null_count > 0 or (pa.types.is_string(c.type) and
                                 bool(pc.any(pc.equal(c, "")).as_py())) for c in t.columns]

  def fix(self):
    """The schema of what blocks() gives, fixed for every later pass."""
    self.types = {f.name: f.type for f in self.schema}
    return self.finish(self.schema.empty_table()).schema


class _Fits:
  def __init__(self, path, limits, block_rows, columns):
    from astropy.io import fits
    self.path, self.limits, self.block_rows = path, limits, block_rows
    self.columns = None  # all, until the names are known
    try:
      io_limits.check_fits(path, limits)  # the sizes its headers declare, before reading
      with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        for i, hdu in enumerate(hdul):
          if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            self.header = hdu.header.copy()
            self.ascii = isinstance(hdu, fits.TableHDU)
            self.offset = hdul.fileinfo(i)["datLoc"]
            break
        else:
          raise CatalogError(path, "FITS catalog has no table HDU")
      self.row_bytes, self.n = int(self.header["NAXIS1"]), int(self.header["NAXIS2"])
      self.heap = int(self.header.get("PCOUNT", 0)) > 0  # variable-length arrays
      self.names = self._table(b"", 0).column_names
      self.columns = list(range(len(self.names)) if columns is None else columns)
    except io_catalog.SpectrumError:
      raise
    except Exception as e:  # astropy raises many exception types for damaged files
      raise CatalogError(path, f"cannot read FITS catalog ({type(e).__name__}: {e})") from None

  def blocks(self, start, raw=False):  # (a FITS block is read_arrow's as it comes)
    if self.heap:  # rows point into the heap after the table: read the table whole
      yield 0, io_catalog.read_arrow(self.path, self.limits).select(self.columns)
      return
    start = min(start, self.n)
    with io_limits.Bounded(self.path, self.limits, text=False) as f:
      _skip(f, self.offset + start * self.row_bytes, self.path)
      row = start
      while row < self.n:
        k = min(self.block_rows, self.n - row)
        yield row, self._table(_read(f, k * self.row_bytes, self.path), k)
        row += k

  def _table(self, raw, k):
    """read_arrow's columns (those read) of k rows' bytes: a FITS file of their own,
    through astropy (which converts every column: a FITS block costs what it costs)."""
    from astropy.io import fits
    header = self.header.copy()
    header["NAXIS2"] = k
    pad = -len(raw) % 2880
    data = (fits.PrimaryHDU().header.tostring().encode() + header.tostring().encode() + raw
            + (b" " if self.ascii else b"\0") * pad)
    try:
      with fits.open(io.BytesIO(data), memmap=False) as hdul:
        t = io_catalog.hdu_arrow(hdul[1])
    except Exception as e:
      raise CatalogError(self.path, f"cannot read FITS catalog ({type(e).__name__}: {e})") \
          from None
    return t if self.columns is None else t.select(self.columns)

  @staticmethod
  def finish(t):
    return t

  @staticmethod
  def nulls(t):
    return [c.null_count > 0 for c in t.columns]

  def fix(self):
    return self._table(b"", 0).schema


def _skip(f, n, path):
  while n > 0:
    data = f.read(min(n, 1 << 20))
    if not data:
      raise CatalogError(path, "FITS table is shorter than its header says")
    n -= len(data)


def _read(f, n, path):
  parts = []
  while n > 0:
    data = f.read(min(n, 1 << 24))
    if not data:
      raise CatalogError(path, "FITS table is shorter than its header says")
    parts.append(data)
    n -= len(data)
  return b"".join(parts)
