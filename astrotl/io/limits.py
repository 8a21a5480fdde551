"""Bounds on what reading a catalog may cost, checked as the bytes arrive.

A catalog may come from anywhere, and a small file must not be able to take the machine:
a gzip bomb (3 MB that inflates to GBs), a line without end, hundreds of millions of tiny
rows, or a FITS header that declares terabytes.  `Limits` holds the bounds; `open_text`
is the stream every text catalog is read through (it refuses at the first byte past a
bound), `check_text` runs a gzip catalog through it before a parser builds rows from it,
and `check_fits` checks a FITS catalog's header-declared sizes before a byte of its table
is read.  A refusal is a `CatalogError`: one line naming the file, the limit and how to
raise it.  `printable` and `shown` keep text from a file out of the terminal's control.

The defaults are sized on the largest real input, LAMOST DR9's LRS general catalogue
(11.2 M rows, ~40 columns, ~350 bytes a line, ~4 GB as CSV or FITS, ~3x smaller
gzipped): each leaves it 4x or more room.  Catalog gzip inflates 3-10x; a bomb ~1000x.
"""

import dataclasses
import io
import os

import numpy as np

try:  # zlib-ng inflates about twice as fast as zlib
  from zlib_ng import gzip_ng as gzip, zlib_ng as zlib
except ImportError:
  import gzip
  import zlib

GZIP_MAGIC = b"\x1f\x8b"
RATIO_FLOOR = 64 << 20  # inflated bytes never refused by `ratio` (small catalogs compress well)
MAX_HDUS = 1000         # HDUs walked to find a FITS catalog's table (real: 2)
MAX_SHOWN = 1000        # characters of a message quoting a file (a header's column list)
_READ = 1 << 20         # bytes inflated at a time


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one catalog may hold.  `flag` names the option that raises them, for messages
  (e.g. '--catalog_limits'); `Limits.parse` reads that option's text."""

  bytes: int = 16 << 30       # text after gunzip, or a FITS file's declared size (DR9: ~4 GB)
  ratio: float = 100.0        # inflated bytes per gzip byte, past RATIO_FLOOR (real: 3-10)
  line: int = 1 << 20         # bytes in one text line, the header included (DR9: ~350)
  rows: int = 50_000_000      # DR9: 11.2 M
  columns: int = 10_000       # DR9: ~40; FITS allows 999
  flag: str | None = None

  KEYS = ("bytes", "ratio", "line", "rows", "columns")

  @classmethod
  def parse(cls, text, flag=None) -> "Limits":
    """Limits from 'rows=200M,bytes=40G,...' (any of KEYS; the rest keep their defaults).
    Sizes take k/M/G/T: powers of 1024 for bytes and line, of 1000 for rows and columns.
    Raises ValueError naming the bad part."""
    values = {}
    for part in filter(None, (p.strip() for p in str(text or "").split(","))):
      key, eq, value = part.partition("=")
      key = key.strip().lower()
      if not eq or key not in cls.KEYS:
        raise ValueError(f"{part!r} is not KEY=VALUE with KEY one of {', '.join(cls.KEYS)}")
      values[key] = _number(value, key)
    return cls(**values, flag=flag)

  def refuse(self, path, what: str, key: str):
    """The CatalogError for `path` crossing limit `key`; `what` says what was found."""
    from astrotl.io.catalog import CatalogError
    value = getattr(self, key)
    limit = f"{key}={size_text(value) if key in ('bytes', 'line') else f'{value:,}'}"
    how = (f"if it really is a catalog, raise it with {self.flag}={key}=N" if self.flag
           else "if it really is a catalog, raise astrotl.io.limits.Limits." + key)
    error = CatalogError(path, f"{what}: over the catalog limit {limit} ({how})")
    error.limit = key
    return error


def _number(text, key):
  text = text.strip()
  scale = 1024 if key in ("bytes", "line") else 1000
  powers = {"k": 1, "m": 2, "g": 3, "t": 4}
  body = text.lower().removesuffix("ib").removesuffix("b") if key != "ratio" else text
  power = powers.get(body[-1:].lower(), 0) if body else 0
  try:
    value = float(body[:-1] if power else body) * scale ** power
  except ValueError:
    raise ValueError(f"{key}={text!r} is not a number") from None
  if not (value > 0 and np.isfinite(value)):
    raise ValueError(f"{key}={text!r} must be a positive number")
  return value if key == "ratio" else int(value)


def size_text(n) -> str:
  from astrotl.io.fitsraw import size_text
  return size_text(int(n))


def printable(text, limit: int = MAX_SHOWN) -> str:
  """`text` safe for a terminal line: characters that are not printable (escape
  sequences, newlines, bidi controls) written as Python escapes, and cut in the middle
  to `limit` (the end of a message says what to do)."""
  text = str(text)
  if not text.isprintable():
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
  if len(text) <= limit:
    return text
  cut = f" ...({len(text) - limit} characters)... "
  return text[:limit // 2] + cut + text[len(text) - limit // 2:]


def shown(value, limit: int = 60) -> str:
  """A value from a file, quoted and escaped for a message: 'abc', '\\x1b[31m'."""
  return printable(repr(str(value)), limit)


def _error(path, reason):
  from astrotl.io.catalog import CatalogError
  return CatalogError(path, reason)


def _open(path):
  """(raw file, its size) of a regular file; a FIFO or device would never end."""
  import stat
  try:
    f = open(path, "rb")
  except OSError as e:
    raise _error(path, f"cannot read catalog: {e.strerror or e}") from None
  st = os.fstat(f.fileno())
  if not stat.S_ISREG(st.st_mode):
    f.close()
    raise _error(path, "not a regular file")
  return f, st.st_size


class Bounded(io.RawIOBase):
  """A read-only binary stream of a catalog's bytes, gunzipped when the file starts with
  the gzip magic, that raises CatalogError as soon as the bytes out pass `limits.bytes`
  (or `limits.ratio` times the gzip file) and, for text, as soon as a line passes
  `limits.line` or the lines `limits.rows` + 1 (the header).  pyarrow's csv readers take
  it as their input (they pass the error on), and reads are at most the size asked for,
  so nothing past a limit is ever inflated."""

  def __init__(self, path, limits=None, text=True):
    super().__init__()
    self.path, self.limits, self.text = path, limits or Limits(), text
    self.raw = self.src = None
    self.raw, self.size = _open(path)
    self.gz = self.raw.read(2) == GZIP_MAGIC
    self.raw.seek(0)
    self.src = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.gz else self.raw
    self.out = 0          # bytes handed out (inflated)
    self.lines = 0        # newlines seen
    self.run = 0          # bytes since the last newline
    self.pending = b""    # read by first_line, not yet handed out
    if not self.gz and self.size > self.limits.bytes:
      self.close()
      raise self.limits.refuse(path, f"file is {size_text(self.size)}", "bytes")

  def readable(self):
    return True

  def seekable(self):
    return False

  def read(self, n=-1) -> bytes:
    if self.pending:
      out = self.pending if n is None or n < 0 else self.pending[:n]
      self.pending = self.pending[len(out):]
      return out
    if n is None or n < 0:
      return b"".join(iter(lambda: self.read(_READ), b""))
    try:
      data = self.src.read(min(n, _READ) if self.gz else n)
    except (OSError, EOFError, zlib.error) as e:
      raise _error(self.path, f"damaged gzip file ({printable(e)})") from None
    self._check(data)
    return data

  def readinto(self, b):
    data = self.read(len(b))
    b[:len(data)] = data
    return len(data)

  def first_line(self) -> bytes:
    """The first line (its newline included), kept to be read again."""
    parts = []
    while True:
      data = self.read(1 << 16)
      parts.append(data)
      if not data or b"\n" in data:
        break
    self.pending = b"".join(parts)
    return self.pending.partition(b"\n")[0] + b"\n"

  def _check(self, data):
    lim = self.limits
    self.out += len(data)
    if self.out > lim.bytes:
      raise lim.refuse(self.path, f"inflates to over {size_text(lim.bytes)}", "bytes")
    if self.gz and self.out > max(RATIO_FLOOR, lim.ratio * self.size):
      raise lim.refuse(self.path, f"inflates to over {self.out / self.size:.0f} times its "
                       f"{size_text(self.size)} of gzip (a gzip bomb?)", "ratio")
    if not self.text or not data:
      return
    # Each line must end within `line` bytes: rfind jumps to the last newline in the
    # window, so a read takes a few C calls however many rows it holds.
    run, pos = self.run, 0
    while True:
      end = pos + lim.line - run + 1  # the current line's newline must come before this
      last = data.rfind(b"\n", pos, end)
      if last >= 0:
        run, pos = 0, last + 1
      elif end <= len(data):
        line = self.lines + data.count(b"\n", 0, pos) + 1
        raise lim.refuse(self.path, f"line {line:,} is over {size_text(lim.line)}", "line")
      else:
        self.run = run + len(data) - pos
        break
    self.lines += data.count(b"\n")
    if self.lines > lim.rows + 1:
      raise lim.refuse(self.path, f"over {lim.rows:,} rows", "rows")

  def close(self):
    for f in (self.src, self.raw):  # None when the file could not be opened
      if f is not None:
        f.close()
    super().close()


def open_text(path, limits=None) -> Bounded:
  """A text catalog's bytes, bounded by `limits` (see Bounded).  A gzip file is first
  run through once (`check_text`), so a bomb never reaches a parser."""
  check_text(path, limits)
  return Bounded(path, limits, text=True)


_checked = set()  # (path, size, mtime, limits) of gzip catalogs check_text has passed


def check_text(path, limits=None):
  """Inflates a gzip text catalog to its end, keeping nothing, so that its limits are
  checked before a parser builds rows from it: a 4 MB bomb of 50 M tiny rows is refused
  in ~1 s with no memory, where parsing them takes 8 s and 1.5 GB.  The pass costs about
  a tenth of a parse.  A plain file needs none (its size is its bytes, and the parse
  stays proportional to it), nor does a file already checked with the same limits."""
  limits = limits or Limits()
  try:
    st = os.stat(path)
  except (OSError, TypeError, ValueError):
    return  # Bounded says why
  key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, limits)
  if key in _checked:
    return
  with Bounded(path, limits, text=True) as f:
    if not f.gz:
      return
    while f.read(_READ):
      pass
  _checked.add(key)


def check_columns(path, n: int, limits=None):
  """Refuses a header of more than `limits.columns` columns."""
  limits = limits or Limits()
  if n > limits.columns:
    raise limits.refuse(path, f"{n:,} columns", "columns")


def check_fits(path, limits=None):
  """Walks a FITS file's headers to its first table and refuses it, before any data is
  read, when the sizes they declare pass `limits`: rows (NAXIS2), columns (TFIELDS),
  bytes (the file up to the table's end), bytes beyond a plain file's end, or past
  `limits.ratio` times a gzip file.  `path` may also be a seekable file object (read
  from its position, which is restored)."""
  from astrotl.io import fitsraw
  from astrotl.io.catalog import CatalogError
  limits = limits or Limits()
  if hasattr(path, "read"):
    home = path.tell()
    size = path.seek(0, 2) - home
    path.seek(home)
    stream, gz, name = path, False, "catalog"
  else:
    stream = Bounded(path, limits, text=False)
    size, gz, name = stream.size, stream.gz, path
  try:
    offset, pending = 0, b""
    for index in range(MAX_HDUS):
      src = _Blocks(stream, pending)
      if not src.need(fitsraw.BLOCK):
        raise _error(name, "no FITS table HDU")
      try:
        header, start = fitsraw.parse_header(src, 0, name)
        size_hdu, table = _declared(header, index, name)
      except fitsraw.SpectrumError as e:
        if isinstance(e, CatalogError):
          raise
        raise _error(name, e.reason) from None
      end = offset + start + size_hdu
      if table:
        rows, cols = table
        if rows > limits.rows:
          raise limits.refuse(name, f"HDU {index} declares {rows:,} rows (NAXIS2)", "rows")
        check_columns(name, cols, limits)
      if end > limits.bytes:
        raise limits.refuse(name, f"HDU {index} declares {size_text(end)} (up to its end)",
                            "bytes")
      if table:
        if gz and end > max(RATIO_FLOOR, limits.ratio * size):
          raise limits.refuse(name, f"HDU {index} declares {size_text(end)}, "
                              f"{end / size:.0f} times its {size_text(size)} of gzip",
                              "ratio")
        if not gz and end > size:
          raise _error(name, f"HDU {index} declares {size_text(end)} but the file holds "
                       f"{size_text(size)}: truncated or damaged")
        return
      skip = start + -(-size_hdu // fitsraw.BLOCK) * fitsraw.BLOCK  # data padded to blocks
      pending = src.buf[skip:]
      left = skip - len(src.buf)
      while left > 0:  # bounded: `end` passed the bytes limit above
        data = stream.read(min(left, _READ))
        if not data:
          raise _error(name, "no FITS table HDU")
        left -= len(data)
      offset += skip
    raise _error(name, f"no FITS table HDU in its first {MAX_HDUS} HDUs")
  finally:
    if hasattr(path, "read"):
      path.seek(home)
    else:
      stream.close()


class _Blocks:
  """fitsraw.parse_header's byte source over a stream: `buf` from the header's start."""

  def __init__(self, stream, pending=b""):
    self.stream, self.buf = stream, bytes(pending)

  def need(self, n) -> int:
    while len(self.buf) < n:
      data = self.stream.read(n - len(self.buf))
      if not data:
        break
      self.buf += data
    return len(self.buf)


def _declared(header, index, path):
  """(data bytes, (rows, columns) if a table HDU else None) as the header declares them."""
  def integer(key, default=None):
    v = header.value(key, default)
    if type(v) is not int or v < 0:
      raise _error(path, f"HDU {index}: {key} = {shown(header._raw.get(key, v))} is not a "
                   "count (a FITS integer >= 0)")
    return v
  naxis = integer("NAXIS")
  bitpix = header.value("BITPIX")
  if bitpix not in (8, 16, 32, 64, -32, -64):
    raise _error(path, f"HDU {index}: BITPIX = {shown(header._raw.get('BITPIX'))} is not valid")
  if naxis > 999:
    raise _error(path, f"HDU {index}: NAXIS = {naxis} is over 999")
  count = 1 if naxis else 0
  for i in range(1, naxis + 1):
    count *= integer(f"NAXIS{i}")
  size = abs(bitpix) // 8 * integer("GCOUNT", 1) * (integer("PCOUNT", 0) + count)
  kind = header.value("XTENSION") if index else None
  if isinstance(kind, str) and kind.strip() in ("BINTABLE", "TABLE") and naxis == 2:
    return size, (integer("NAXIS2"), integer("TFIELDS"))
  return size, None
