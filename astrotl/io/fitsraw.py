"""A small, fast FITS reader for the plain layouts survey spectra use.

It parses 2880-byte header blocks of 80-character cards and maps the data straight
into numpy.  It covers primary/IMAGE HDUs (with BSCALE/BZERO/BLANK) and BINTABLE HDUs
with fixed-width numeric and character columns.  Anything else raises `Unsupported`,
and callers fall back to astropy; malformed files raise `SpectrumError`.  It exists
because astropy's generic machinery costs ~1.2 ms per LAMOST file (3x this reader) and
~0.5 s per BOSS spec file, and the survey scan reads 11 million of them.

It is also the gate every spectrum file passes, on the astropy path too, because a
survey scan reads files nobody has looked at:
  - only regular files are opened (never a FIFO, device, directory or dangling link),
    and at most MAX_FILE_BYTES are read;
  - gzip is inflated piece by piece, only as far as the FITS headers say the file
    goes, and never beyond MAX_FITS_BYTES, so a gzip bomb costs nothing;
  - every structural header value is checked before it is used (FITS ranges, integer
    types, no duplicates, sizes that fit the file), so no loop or allocation follows
    a number in a header.
"""

import errno
import math
import os
import re
import stat

import numpy as np

from astrotl.io import SpectrumError

try:  # zlib-ng inflates about twice as fast as zlib (gzip is most of a LAMOST file's read)
  from zlib_ng import zlib_ng as zlib
except ImportError:  # same API, same streams and errors
  import zlib

BLOCK = 2880
CARD = 80
MAX_FILE_BYTES = 64 * 2**20      # a LAMOST LRS file is ~0.2 MB, an SDSS/BOSS spec file ~2 MB
MAX_FITS_BYTES = 64 * 2**20      # after gunzip
MAX_TRAILING_BYTES = 2**20       # gzip data after the FITS content (real files: none)
MAX_HEADER_BLOCKS = 1000         # real headers take 2-10 blocks
MAX_HDUS = 1000                  # an SDSS spec file has ~4 + 2 per exposure
MAX_NAXIS = 999                  # the FITS standard's limit
MAX_GZIP_MEMBERS = 10000         # real files: one

_GZIP_MAGIC = b"\x1f\x8b"
# One 80-character card per match, so matches stay aligned: keyword and value of a value
# card ("= " in columns 9-10), or nothing for any other card.
_CARDS = re.compile(r"(.{8})= (.{70})|.{80}", re.S)
_END = "END" + " " * 77
_PRINTABLE = bytes(range(0x20, 0x7F))
_INFLATE_IN = 1 << 16            # compressed bytes fed to zlib at a time
_INFLATE_OUT = 1 << 18           # least output asked of zlib per call
_STREAM_CHECK_BYTES = 8 << 20    # inflated past a broken header to look for a gzip error

# BITPIX -> big-endian dtype of the stored values.
_BITPIX = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}

# BINTABLE TFORM type codes we map directly: code -> (big-endian dtype, bytes per element).
_TFORM = {"B": ("u1", 1), "I": (">i2", 2), "J": (">i4", 4), "K": (">i8", 8),
          "E": (">f4", 4), "D": (">f8", 8)}
_TFORM_SIZE = {"L": 1, "A": 1, "X": None, "C": 8, "M": 16, "P": 8, "Q": 16}

# Keywords that decide where data lie and what they mean: a second copy makes readers
# disagree (astropy takes the last for the data size, the first for header[...]).
_STRUCTURAL = re.compile(
    r"SIMPLE|XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|GROUPS|EXTEND|THEAP|BSCALE|BZERO|BLANK"
    r"|EXTNAME|EXTVER|ZIMAGE|TFIELDS|T(FORM|TYPE|SCAL|ZERO|NULL|DIM)\d+")

# A FITS integer (group 1) or real; Python's int() and float() alone would also take
# "1_000", "nan", "inf" and non-ASCII digits.
_NUMBER = re.compile(r"([+-]?\d+)|[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?", re.ASCII)


class Unsupported(Exception):
  """Valid FITS this reader does not handle; use astropy instead."""


class _Invalid:
  """The value of a card no FITS reader can parse."""

  def __repr__(self):
    return "<unparsable>"


INVALID = _Invalid()


# --- files -------------------------------------------------------------------------------

def _kind(mode) -> str:
  for test, name in ((stat.S_ISDIR, "is a directory, not a file"),
                     (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file"),
                     (stat.S_ISCHR, "is a character device, not a regular file"),
                     (stat.S_ISBLK, "is a block device, not a regular file"),
                     (stat.S_ISSOCK, "is a socket, not a regular file")):
    if test(mode):
      return name
  return "is not a regular file"


def read_file(path, max_bytes: int | None = None, error=SpectrumError,
              what: str = "a spectrum file") -> bytes:
  """The bytes of a regular file of at most `max_bytes` (default MAX_FILE_BYTES), else
  `error(path, reason)`.

  The path is checked with stat before it is opened, so a FIFO or a device is never
  opened (opening a FIFO blocks; /dev/zero never ends), and checked again on the
  open descriptor, so a file swapped in between cannot slip through.  Every reader of
  astrotl (spectra, light curves) reads files through this function.
  """
  max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
  try:
    name = os.fspath(path)
    st = os.stat(name)
  except FileNotFoundError:
    if os.path.islink(name):
      raise error(path, "dangling symbolic link (its target does not exist)") from None
    raise error(path, "no such file") from None
  except (TypeError, ValueError) as e:  # not a path, or a NUL byte in it
    raise error(path, f"not a usable file path ({e})") from None
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise error(path, "symbolic link loop") from None
    raise error(path, f"cannot read file: {e.strerror or e}") from None
  _check_regular(path, st, max_bytes, error, what)
  flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
  try:
    fd = os.open(name, flags | getattr(os, "O_CLOEXEC", 0))
  except OSError as e:
    raise error(path, f"cannot read file: {e.strerror or e}") from None
  try:
    st = os.fstat(fd)
    _check_regular(path, st, max_bytes, error, what)
    # Read until EOF: one read of the size fstat gave, plus whatever a file that grew
    # since adds (and network file systems may return short reads).
    parts, size = [], 0
    while True:
      chunk = os.read(fd, max(st.st_size + 1 - size, 1 << 16))
      if not chunk:
        break
      parts.append(chunk)
      size += len(chunk)
      if size > max_bytes:
        raise error(path, f"file is over the {size_text(max_bytes)} limit for {what}")
  except OSError as e:
    raise error(path, f"cannot read file: {e.strerror or e}") from None
  finally:
    os.close(fd)
  if not size:
    raise error(path, "empty file (0 bytes)")
  return parts[0] if len(parts) == 1 else b"".join(parts)


def _check_regular(path, st, max_bytes, error, what):
  if not stat.S_ISREG(st.st_mode):
    raise error(path, _kind(st.st_mode))
  if st.st_size == 0:
    raise error(path, "empty file (0 bytes)")
  if st.st_size > max_bytes:
    raise error(path, f"file is {size_text(st.st_size)}, over the {size_text(max_bytes)} "
                f"limit for {what}")


def size_text(n: int) -> str:
  """A byte count for people: '19.5 kB', '3 MB'."""
  for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
    if n >= scale:
      return f"{n / scale:.3g} {unit}"
  return f"{n} bytes"


class _Plain:
  """Byte source over an uncompressed FITS file."""

  def __init__(self, data, path=None):
    self.buf = data
    self.path = path

  def need(self, n) -> int:
    return len(self.buf)

  def finish(self, end) -> bytes:
    _check_padding(self.buf[end:], self.path)
    return self.buf[:end] if end < len(self.buf) else self.buf

  def check_stream(self):
    pass


class _Gunzip:
  """Byte source that inflates a gzip file only as far as it is asked to.

  need(n) inflates until n bytes are out or the stream ends, so the FITS walk decides
  how much is inflated: what the headers declare, never more than MAX_FITS_BYTES.
  """

  def __init__(self, data, path):
    self.src = memoryview(data)
    self.pos = 0                       # next compressed byte to feed
    self.tail = b""                    # fed but not yet consumed by zlib
    self.z = zlib.decompressobj(wbits=31)
    self.members = 1
    self.buf = b""  # zlib's first piece as it is; a bytearray once a second one comes
    self.ended = False                 # the last gzip member is complete
    self.path = path

  def _error(self, what):
    return SpectrumError(self.path, f"truncated or corrupt gzip stream: {what}")

  def _next_member(self) -> bool:
    """After a member's end: True if another member follows, False at the end of the
    file (zero padding after the last member is legal and common on tape copies)."""
    rest = self.z.unused_data
    while not rest.strip(b"\x00"):
      if self.pos >= len(self.src):
        return False
      rest = self.src[self.pos:self.pos + _INFLATE_IN].tobytes()
      self.pos += len(rest)
    self.members += 1
    if self.members > MAX_GZIP_MEMBERS:
      raise self._error(f"more than {MAX_GZIP_MEMBERS} gzip members")
    self.z = zlib.decompressobj(wbits=31)
    self.tail = rest
    return True

  def _step(self, room) -> bytes:
    """Inflates up to `room` bytes; b"" once the whole file is inflated."""
    if self.z.eof and not self._next_member():
      self.ended = True
      return b""
    chunk = self.tail
    if not chunk and self.pos < len(self.src):
      chunk = self.src[self.pos:self.pos + _INFLATE_IN]
      self.pos += len(chunk)
    try:
      piece = self.z.decompress(chunk, room)
    except zlib.error as e:
      raise self._error(f"corrupt gzip data ({e})") from None
    self.tail = self.z.unconsumed_tail
    if not piece and not chunk and not self.z.eof:
      raise self._error("truncated gzip file (the compressed data end early)")
    return piece

  def need(self, n) -> int:
    n = min(n, MAX_FITS_BYTES + 1)
    while len(self.buf) < n and not self.ended:
      piece = self._step(max(n - len(self.buf), _INFLATE_OUT))
      if not self.buf:
        self.buf = piece  # most files inflate in one piece: no copy
      elif piece:
        if type(self.buf) is bytes:
          self.buf = bytearray(self.buf)
        self.buf += piece
    return len(self.buf)

  def finish(self, end) -> bytes:
    """The inflated FITS bytes.  The rest of the stream (at most MAX_TRAILING_BYTES
    beyond the FITS content) is inflated and thrown away, so that its CRC is checked:
    a corrupt or cut-off stream must not pass for a shorter file."""
    total = len(self.buf)
    _check_padding(self.buf[end:], self.path)
    while not self.ended:
      if total > max(end, 0) + MAX_TRAILING_BYTES:
        raise SpectrumError(self.path, f"gzip data go on for more than "
                            f"{MAX_TRAILING_BYTES >> 20} MB beyond the FITS content "
                            "(a gzip bomb?)")
      piece = self._step(_INFLATE_OUT)
      _check_padding(piece, self.path)
      total += len(piece)
    if type(self.buf) is bytes and end >= len(self.buf):
      return self.buf
    return bytes(memoryview(self.buf)[:end])  # one copy, trimmed to the FITS content

  def check_stream(self):
    """Raises the stream's own error, if it shows within the next _STREAM_CHECK_BYTES:
    when the FITS structure looks broken, a corrupt gzip stream is the better
    explanation."""
    total, stop = len(self.buf), len(self.buf) + _STREAM_CHECK_BYTES
    while not self.ended and total <= stop:
      total += len(self._step(_INFLATE_OUT))


def _source(data, path):
  if data[:2] == _GZIP_MAGIC:
    return _Gunzip(data, path)
  return _Plain(data, path)


def _check_padding(tail, path):
  """Bytes after the last HDU may only be padding (zeros or blanks): anything else is
  a damaged HDU the walk could not follow, which must not pass for the end of the file."""
  if tail and tail.strip(b"\x00 "):
    raise SpectrumError(path, "bytes after the last readable HDU are neither an extension "
                        "nor padding: a damaged or misdeclared HDU")


def load(path) -> bytes:
  """The FITS bytes of a file (gunzipped when it starts with the gzip magic number),
  with every HDU's structure checked; raises SpectrumError."""
  return read(path)[0].buf


# --- header values -----------------------------------------------------------------------

def card_value(text: str):
  """Value of one card's value field (the text after '= '), as Python bool/int/float/str;
  None for an empty value and INVALID for text no FITS reader would parse."""
  text = text.lstrip()
  if text[:1] == "'":
    i, out = 1, []
    while True:
      j = text.find("'", i)
      if j < 0:  # unterminated string
        return INVALID
      out.append(text[i:j])
      if text[j + 1:j + 2] == "'":
        out.append("'")
        i = j + 2
      else:
        break
    rest = text[j + 1:].lstrip()
    value = "".join(out)
    # printable ASCII only, and nothing but a comment after the closing quote
    if (rest and rest[0] != "/") or not (value.isascii() and value.isprintable()):
      return INVALID
    return value.rstrip()
  text = text.partition("/")[0].rstrip()
  if text.isdigit() and text.isascii():  # the common case, checked first
    return int(text)
  if not text:
    return None
  if text == "T":
    return True
  if text == "F":
    return False
  number = _NUMBER.fullmatch(text)
  if number is None:
    return INVALID
  if number.group(1):
    return int(text)
  return float(text.replace("D", "E").replace("d", "e"))


class Header:
  """A FITS header's keyword values, parsed on first access.  First occurrence wins,
  as astropy's header[key] does; `duplicates` names keywords that occur twice.

  A value no FITS reader can parse raises Unsupported, so callers hand the file to
  astropy (which then decides) rather than guess.
  """

  def __init__(self, raw: dict, duplicates=frozenset()):
    self._raw = raw
    self._parsed = {}
    self.duplicates = duplicates

  def __contains__(self, key):
    return key in self._raw

  def value(self, key, default=None):
    """The parsed value, INVALID included; `default` when the keyword is absent."""
    if key not in self._raw:
      return default
    try:
      return self._parsed[key]
    except KeyError:
      value = self._parsed[key] = card_value(self._raw[key])
      return value

  def __getitem__(self, key):
    if key not in self._raw:
      raise KeyError(key)
    value = self.value(key)
    if value is INVALID:
      raise Unsupported(f"unparsable value of {key}: {self._raw[key].strip()!r}")
    return value

  def get(self, key, default=None):
    return self[key] if key in self._raw else default

  def keys(self):
    return self._raw.keys()


def parse_header(src, start: int, path):
  """Parses the header starting at byte `start` of `src` (bytes, or a byte source that
  inflates on demand); returns (Header, offset of its data)."""
  if isinstance(src, (bytes, bytearray, memoryview)):
    src = _Plain(src)
  # Decode a few blocks at a time and let str.find locate the END card: a per-card
  # Python loop costs more than the rest of a LAMOST read.
  nblocks = 4
  while True:
    have = src.need(start + nblocks * BLOCK)
    text = src.buf[start:start + nblocks * BLOCK].decode("latin-1")
    end = text.find(_END)
    while end >= 0 and end % CARD:
      end = text.find(_END, end + 1)
    if end >= 0:
      break
    if have < start + nblocks * BLOCK:
      raise SpectrumError(path, f"truncated FITS header at byte {start} (no END card)")
    if nblocks >= MAX_HEADER_BLOCKS:
      raise SpectrumError(path, f"FITS header at byte {start} has no END card in "
                          f"{MAX_HEADER_BLOCKS} blocks")
    nblocks = min(2 * nblocks, MAX_HEADER_BLOCKS)
  # FITS headers are printable ASCII; no real survey header holds anything else, and
  # readers disagree on what a damaged byte means (Python strips U+00A0 as a space).
  if src.buf[start:start + end].translate(None, _PRINTABLE):  # 5x faster than isprintable
    at = next(i for i, ch in enumerate(text[:end]) if not " " <= ch <= "~")
    raise SpectrumError(path, f"FITS header at byte {start} holds a byte that is not printable "
                        f"ASCII ({text[at]!r} in card {at // CARD + 1})")
  found = _CARDS.findall(text, 0, end)
  raw = {key.rstrip(): value for key, value in reversed(found) if key}  # the first one wins
  if not "".join(raw).isupper():  # keywords are case-blind (astropy upper-cases them)
    raw = {key.rstrip().upper(): value for key, value in reversed(found) if key}
  duplicates = frozenset()
  if len(raw) != len(found) - found.count(("", "")):
    seen = set()
    duplicates = frozenset(k for k in (key.rstrip().upper() for key, _ in found if key)
                           if k in seen or seen.add(k))
  return Header(raw, duplicates), start + (end // BLOCK + 1) * BLOCK


# --- structure ---------------------------------------------------------------------------

_NAXISN = tuple(f"NAXIS{i}" for i in range(MAX_NAXIS + 1))
_SCALAR_STRUCTURAL = ("EXTEND", "GROUPS", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "BLANK",
                      "EXTNAME", "EXTVER", "THEAP", "ZIMAGE")


def _refuse(h, key, value, index, path, what):
  """The SpectrumError for a structural value that is absent or not `what`."""
  if value is None and key not in h:
    return SpectrumError(path, f"HDU {index}: required keyword {key} is missing")
  return SpectrumError(path, f"HDU {index}: {key} = {value!r} is not {what}")


def _int(h, key, index, path, default=None) -> int:
  value = h.value(key, default)
  if type(value) is not int:  # bool is not an int here
    raise _refuse(h, key, value, index, path, "an integer")
  return value


def check_header(h: Header, index: int, path) -> int:
  """Checks the structural keywords of HDU `index`; returns its data size in bytes.

  Written for speed (it runs for every HDU of every file): messages are only built
  when a check fails.
  """
  if h.duplicates:
    structural = sorted(k for k in h.duplicates if _STRUCTURAL.fullmatch(k))
    if structural:
      raise SpectrumError(path, f"HDU {index}: keyword {structural[0]} appears more than "
                          "once (readers disagree on which one counts)")
  value = h.value
  for key in _SCALAR_STRUCTURAL:  # astropy refuses a file with these unparsable
    if key in h and value(key) is INVALID:
      text = h._raw[key].partition("/")[0].strip()
      raise SpectrumError(path, f"HDU {index}: {key} = {text!r} is not a valid FITS value")
  if index == 0:
    simple = value("SIMPLE")
    if simple is not True:
      if simple is False:
        raise SpectrumError(path, "SIMPLE = F: the file declares that it does not conform "
                            "to FITS (astropy opens it only as a non-standard HDU); refused")
      raise SpectrumError(path, f"SIMPLE = {simple!r}, not T: not a standard FITS file")
    if value("GROUPS") is True:
      raise SpectrumError(path, "random-groups FITS file, not a spectrum")
    kind = "IMAGE"
  else:
    kind = value("XTENSION")
    if type(kind) is not str or not kind.strip():
      raise SpectrumError(path, f"HDU {index}: XTENSION = {kind!r} is not an extension type")
    kind = kind.strip()
  bitpix = _int(h, "BITPIX", index, path)
  if bitpix not in _BITPIX:
    raise SpectrumError(path, f"HDU {index}: BITPIX = {bitpix} is not one of {sorted(_BITPIX)}")
  naxis = _int(h, "NAXIS", index, path)
  if not 0 <= naxis <= MAX_NAXIS:
    raise SpectrumError(path, f"HDU {index}: NAXIS = {naxis} is outside 0..{MAX_NAXIS}")
  count = 1 if naxis else 0
  for i in range(1, naxis + 1):
    n = _int(h, _NAXISN[i], index, path)
    if n < 0:
      raise SpectrumError(path, f"HDU {index}: NAXIS{i} = {n} is negative")
    count *= n
    if count > MAX_FITS_BYTES:
      raise SpectrumError(path, f"HDU {index}: NAXIS1..NAXIS{i} declare more than "
                          f"{MAX_FITS_BYTES >> 20} MB of data")
  pcount = _int(h, "PCOUNT", index, path, 0)
  gcount = _int(h, "GCOUNT", index, path, 1)
  if gcount != 1:
    raise SpectrumError(path, f"HDU {index}: GCOUNT = {gcount}; only 1 (no random groups) "
                        "is read")
  if pcount and (pcount < 0 or kind != "BINTABLE"):
    raise SpectrumError(path, f"HDU {index}: PCOUNT = {pcount} is not valid for {kind}")
  if kind == "IMAGE":
    for key in ("BSCALE", "BZERO"):
      v = value(key)
      if v is not None or key in h:
        if type(v) not in (int, float) or not math.isfinite(v):
          raise _refuse(h, key, v, index, path, "a finite number")
    if value("BSCALE") == 0:
      raise SpectrumError(path, f"HDU {index}: BSCALE = 0 leaves no information in the data")
    if bitpix > 0 and "BLANK" in h and _int(h, "BLANK", index, path) == 0:
      # astropy ignores BLANK = 0 (it tests the value's truth), other readers do not.
      raise SpectrumError(path, f"HDU {index}: BLANK = 0 is read differently by FITS "
                          "readers; refused rather than guess")
  elif kind in ("BINTABLE", "TABLE"):
    if bitpix != 8 or naxis != 2:
      raise SpectrumError(path, f"HDU {index}: a {kind} needs BITPIX = 8 and NAXIS = 2, not "
                          f"{bitpix} and {naxis}")
    if kind == "BINTABLE" and not 0 <= _int(h, "TFIELDS", index, path) <= MAX_NAXIS:
      raise SpectrumError(path, f"HDU {index}: TFIELDS = {value('TFIELDS')} is outside "
                          f"0..{MAX_NAXIS}")
  name = value("EXTNAME")
  if name is not None and type(name) is not str:
    raise SpectrumError(path, f"HDU {index}: EXTNAME = {name!r} is not a string")
  size = abs(bitpix) // 8 * (pcount + count)  # GCOUNT is 1
  if size > MAX_FITS_BYTES:
    raise SpectrumError(path, f"HDU {index}: declares {size} bytes of data, more than "
                        f"{MAX_FITS_BYTES >> 20} MB")
  return size


class Hdu:
  """One HDU: its header and the byte range of its data in the file buffer."""

  def __init__(self, buf, header, offset, index, path):
    self.buf = buf
    self.header = header
    self.offset = offset
    self.index = index
    self.path = path
    self._columns = None

  @property
  def name(self):
    return str(self.header.get("EXTNAME", "PRIMARY" if self.index == 0 else "")).strip()

  @property
  def kind(self):
    return "IMAGE" if self.index == 0 else str(self.header.get("XTENSION", "")).strip()

  def image(self) -> np.ndarray:
    """The image as a native-endian array, scaled like astropy does; None if NAXIS = 0.

    Integer pixels equal to BLANK become NaN, as in astropy (which then returns float
    data even without BSCALE/BZERO).
    """
    h = self.header
    naxis = h.get("NAXIS", 0)
    if not naxis:
      return None
    if self.kind != "IMAGE" or h.get("ZIMAGE", False):
      raise Unsupported(f"HDU {self.index} is not a plain image")
    bitpix = h["BITPIX"]
    shape = tuple(h[f"NAXIS{i}"] for i in range(naxis, 0, -1))
    raw = np.frombuffer(self.buf, _BITPIX[bitpix], math.prod(shape), self.offset)
    bscale, bzero = h.get("BSCALE", 1), h.get("BZERO", 0)
    blank = h.get("BLANK") if bitpix > 0 else None
    if bscale == 1 and bzero == 0 and blank is None:
      return raw.astype(raw.dtype.newbyteorder("="), copy=True).reshape(shape)
    if bitpix > 0 and bscale == 1 and bzero == (-128 if bitpix == 8 else 2 ** (bitpix - 1)):
      raise Unsupported("unsigned-integer image")  # astropy returns uintN / int8 here
    # astropy's choice of float width for scaled data, and its order of operations.
    out = raw.astype(np.float32 if bitpix in (8, 16, -32) else np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
      if bscale != 1:
        out *= bscale
      if bzero != 0:
        out += bzero
    if blank is not None:
      out[raw == blank] = np.nan
    return out.reshape(shape)

  def columns(self) -> dict:
    """BINTABLE columns: upper-case name -> (byte offset in a row, dtype, repeat, scaled).

    A table whose column widths do not add up to NAXIS1, or that has two columns of one
    name (readers would pick different ones), raises SpectrumError.
    """
    if self._columns is not None:
      return self._columns
    h = self.header
    if self.kind != "BINTABLE":
      raise Unsupported(f"HDU {self.index} is not a binary table")
    if h.value("ZIMAGE", False) is not False:  # astropy reads it as a tile-compressed image
      raise Unsupported(f"HDU {self.index} is a compressed image (ZIMAGE), not a plain table")
    cols = {}
    pos = 0
    for i in range(1, h["TFIELDS"] + 1):
      form = h.value(f"TFORM{i}")
      if not isinstance(form, str):
        raise SpectrumError(self.path, f"HDU {self.index}: TFORM{i} = {form!r} is not a "
                            "column format")
      form = form.strip().upper()
      j = 0
      while j < len(form) and form[j].isdigit():
        j += 1
      repeat = int(form[:j]) if j else 1
      code = form[j:j + 1]
      name = h.value(f"TTYPE{i}", f"COL{i}")
      if not isinstance(name, str):
        raise SpectrumError(self.path, f"HDU {self.index}: TTYPE{i} = {name!r} is not a name")
      name = name.strip().upper()
      if name in cols:
        raise SpectrumError(self.path, f"HDU {self.index}: two columns are named {name}")
      special = (any(f"{k}{i}" in h for k in ("TSCAL", "TZERO", "TDIM"))
                 or h.value(f"TNULL{i}") is INVALID)
      if code in _TFORM:
        dtype, size = _TFORM[code]
        cols[name] = (pos, dtype, repeat, special)
        pos += size * repeat
      elif code == "A" and repeat:  # one fixed-width string per row
        cols[name] = (pos, f"S{repeat}", 1, special)
        pos += repeat
      elif code in _TFORM_SIZE and _TFORM_SIZE[code] is not None:
        cols[name] = (pos, None, repeat, False)
        pos += _TFORM_SIZE[code] * repeat
      elif code == "X":
        cols[name] = (pos, None, repeat, False)
        pos += (repeat + 7) // 8
      else:
        raise SpectrumError(self.path, f"HDU {self.index}: bad TFORM{i} {form!r}")
    if pos != h["NAXIS1"]:
      raise SpectrumError(self.path, f"HDU {self.index}: columns take {pos} bytes per row "
                          f"but NAXIS1 = {h['NAXIS1']}")
    self._columns = cols
    return cols

  def column(self, name: str) -> np.ndarray:
    """One numeric column as a native array of shape (nrows, repeat), or (nrows,); a
    character column as bytes of shape (nrows,) (numpy drops trailing NULs)."""
    cols = self.columns()
    key = name.upper()
    if key not in cols:
      raise KeyError(name)
    pos, dtype, repeat, special = cols[key]
    if dtype is None or special:
      raise Unsupported(f"column {name} needs astropy (type, scaling or TDIM)")
    nrows = self.header["NAXIS2"]
    width = self.header["NAXIS1"]
    # A strided view picks the field out of each row without copying the table.
    itemsize = np.dtype(dtype).itemsize
    view = np.ndarray((nrows, repeat), dtype, self.buf, self.offset + pos,
                      (width, itemsize))
    out = view.astype(np.dtype(dtype).newbyteorder("="))
    return out if repeat > 1 else out[:, 0]


def hdus(data: bytes, path) -> list:
  """Every HDU in a FITS file's bytes (gzip or not): headers parsed and checked, data
  left in place.  After the last HDU only padding (zeros or blanks) may follow."""
  src = _source(data, path)
  if src.need(9) < 9 or src.buf[:9] != b"SIMPLE  =":
    raise SpectrumError(path, "not a FITS file (does not start with a SIMPLE card)")
  found = []
  pos = 0
  try:
    while True:
      header, start = parse_header(src, pos, path)
      size = check_header(header, len(found), path)
      if start + size > MAX_FITS_BYTES:
        raise SpectrumError(path, f"HDU {len(found)} ends beyond {MAX_FITS_BYTES >> 20} MB, more "
                            "than a spectrum file holds")
      have = src.need(start + size)
      if start + size > have:
        raise SpectrumError(path, f"truncated FITS data: HDU {len(found)} needs {size} bytes, "
                            f"file has {max(have - start, 0)}")
      found.append((header, start))
      pos = start + -(-size // BLOCK) * BLOCK
      if src.need(pos + 8) < pos + 8 or src.buf[pos:pos + 8] != b"XTENSION":
        break
      if len(found) >= MAX_HDUS:
        raise SpectrumError(path, f"more than {MAX_HDUS} HDUs: not a spectrum file")
    buf = src.finish(pos)
  except SpectrumError:
    src.check_stream()
    raise
  return [Hdu(buf, h, start, i, path) for i, (h, start) in enumerate(found)]


def read(path) -> list:
  """Every HDU of the FITS file at `path` (see read_file and hdus)."""
  return hdus(read_file(path), path)
