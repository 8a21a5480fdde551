"""A small, fast FITS reader for the plain layouts survey spectra use.

It parses 2880-byte header blocks of 80-character cards and maps the data straight
into numpy.  It covers primary/IMAGE HDUs (with BSCALE/BZERO) and BINTABLE HDUs with
fixed-width numeric columns.  Anything else raises `Unsupported`, and callers fall back
to astropy; malformed files raise `SpectrumError`.  It exists because astropy's generic
machinery costs ~1.2 ms per LAMOST file (3x this reader), and the survey scan reads
11 million of them.
"""

import zlib

import numpy as np

from astrotl.io import SpectrumError

BLOCK = 2880
CARD = 80

_GZIP_MAGIC = b"\x1f\x8b"
_END = "END" + " " * 77

# BITPIX -> big-endian dtype of the stored values.
_BITPIX = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}

# BINTABLE TFORM type codes we map directly: code -> (big-endian dtype, bytes per element).
_TFORM = {"B": ("u1", 1), "I": (">i2", 2), "J": (">i4", 4), "K": (">i8", 8),
          "E": (">f4", 4), "D": (">f8", 8)}
_TFORM_SIZE = {"L": 1, "A": 1, "X": None, "C": 8, "M": 16, "P": 8, "Q": 16}


class Unsupported(Exception):
  """Valid FITS this reader does not handle; use astropy instead."""


def load(path) -> bytes:
  """Returns the file's bytes, gunzipped when they start with the gzip magic number."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise SpectrumError(path, "no such file") from None
  except IsADirectoryError:
    raise SpectrumError(path, "is a directory, not a file") from None
  except OSError as e:
    raise SpectrumError(path, f"cannot read file: {e.strerror or e}") from None
  if not data:
    raise SpectrumError(path, "empty file (0 bytes)")
  if data[:2] == _GZIP_MAGIC:
    data = gunzip(data, path)
  return data


def gunzip(data: bytes, path) -> bytes:
  """Decompresses every gzip member; truncated or corrupt streams raise SpectrumError."""
  parts = []
  while data:
    d = zlib.decompressobj(wbits=31)
    try:
      parts.append(d.decompress(data))
      parts.append(d.flush())
    except zlib.error as e:
      raise SpectrumError(path, f"corrupt gzip data ({e})") from None
    if not d.eof:
      raise SpectrumError(path, "truncated gzip file (compressed stream ends early)")
    data = d.unused_data
    # Trailing zero padding after the last member is legal and common on tape copies.
    if data.strip(b"\x00") == b"":
      break
  out = b"".join(parts)
  if not out:
    raise SpectrumError(path, "gzip file decompresses to nothing")
  return out


def card_value(text: str):
  """Value of one card's value field (the text after '= '), as Python bool/int/float/str."""
  text = text.lstrip()
  if text.startswith("'"):
    i, out = 1, []
    while True:
      j = text.find("'", i)
      if j < 0:  # unterminated string: take the rest, as astropy does
        out.append(text[i:])
        break
      out.append(text[i:j])
      if text[j + 1:j + 2] == "'":
        out.append("'")
        i = j + 2
      else:
        break
    return "".join(out).rstrip()
  text = text.split("/", 1)[0].strip()
  if not text:
    return None
  if text == "T":
    return True
  if text == "F":
    return False
  try:
    return int(text)
  except ValueError:
    pass
  try:
    return float(text.replace("D", "E").replace("d", "e"))
  except ValueError:
    return text


class Header:
  """A FITS header's keyword values, parsed on first access.  First occurrence wins."""

  def __init__(self, raw: dict):
    self._raw = raw
    self._parsed = {}

  def __contains__(self, key):
    return key in self._raw

  def __getitem__(self, key):
    try:
      return self._parsed[key]
    except KeyError:
      value = self._parsed[key] = card_value(self._raw[key])
      return value

  def get(self, key, default=None):
    return self[key] if key in self._raw else default

  def keys(self):
    return self._raw.keys()


def parse_header(buf: bytes, start: int, path):
  """Parses the header starting at byte `start`; returns (Header, offset of its data)."""
  # Decode a few blocks at a time and let str.find locate the END card: a per-card
  # Python loop costs more than the rest of a LAMOST read.
  nblocks = 4
  while True:
    text = buf[start:start + nblocks * BLOCK].decode("latin-1")
    end = text.find(_END)
    while end >= 0 and end % CARD:
      end = text.find(_END, end + 1)
    if end >= 0:
      break
    if start + nblocks * BLOCK >= len(buf):
      raise SpectrumError(path, f"truncated FITS header at byte {start} (no END card)")
    nblocks *= 2
  # Reversed so the first occurrence of a repeated keyword wins.
  raw = {text[i:i + 8].rstrip(): text[i + 10:i + CARD]
         for i in range(end - CARD, -1, -CARD) if text[i + 8:i + 10] == "= "}
  return Header(raw), start + (end // BLOCK + 1) * BLOCK


def data_bytes(h: Header) -> int:
  """Size in bytes of an HDU's data (before padding to a block)."""
  naxis = h.get("NAXIS", 0)
  if not naxis:
    return 0
  count = 1
  for i in range(1, naxis + 1):
    count *= h.get(f"NAXIS{i}", 0)
  bitpix = h.get("BITPIX", 8)
  return abs(bitpix) // 8 * h.get("GCOUNT", 1) * (h.get("PCOUNT", 0) + count)


class Hdu:
  """One HDU: its header and the byte range of its data in the file buffer."""

  def __init__(self, buf, header, offset, index, path):
    self.buf = buf
    self.header = header
    self.offset = offset
    self.index = index
    self.path = path

  @property
  def name(self):
    return str(self.header.get("EXTNAME", "PRIMARY" if self.index == 0 else "")).strip()

  @property
  def kind(self):
    return "IMAGE" if self.index == 0 else str(self.header.get("XTENSION", "")).strip()

  def image(self) -> np.ndarray:
    """The image as a native-endian array, scaled like astropy does; None if NAXIS = 0."""
    h = self.header
    naxis = h.get("NAXIS", 0)
    if not naxis:
      return None
    if self.kind != "IMAGE" or h.get("ZIMAGE", False):
      raise Unsupported(f"HDU {self.index} is not a plain image")
    bitpix = h.get("BITPIX")
    if bitpix not in _BITPIX:
      raise SpectrumError(self.path, f"HDU {self.index}: invalid BITPIX {bitpix!r}")
    shape = tuple(h.get(f"NAXIS{i}") for i in range(naxis, 0, -1))
    raw = np.frombuffer(self.buf, _BITPIX[bitpix], int(np.prod(shape)), self.offset)
    bscale, bzero = h.get("BSCALE", 1), h.get("BZERO", 0)
    if bscale == 1 and bzero == 0:
      return raw.astype(raw.dtype.newbyteorder("="), copy=True).reshape(shape)
    if bitpix > 0 and bscale == 1 and bzero == 2 ** (bitpix - 1):
      raise Unsupported("unsigned-integer image")  # astropy returns uintN here
    # astropy's choice of float width for scaled data, and its order of operations.
    out = raw.astype(np.float32 if bitpix in (8, 16, -32) else np.float64)
    if bscale != 1:
      out *= bscale
    if bzero != 0:
      out += bzero
    return out.reshape(shape)

  def columns(self) -> dict:
    """BINTABLE columns: upper-case name -> (byte offset in a row, dtype, repeat)."""
    h = self.header
    if self.kind != "BINTABLE":
      raise Unsupported(f"HDU {self.index} is not a binary table")
    cols = {}
    pos = 0
    for i in range(1, h.get("TFIELDS", 0) + 1):
      form = str(h.get(f"TFORM{i}", "")).strip().upper()
      j = 0
      while j < len(form) and form[j].isdigit():
        j += 1
      repeat = int(form[:j]) if j else 1
      code = form[j:j + 1]
      name = str(h.get(f"TTYPE{i}", f"COL{i}")).strip().upper()
      if code in _TFORM:
        dtype, size = _TFORM[code]
        scaled = f"TSCAL{i}" in h or f"TZERO{i}" in h
        cols[name] = (pos, dtype, repeat, scaled)
        pos += size * repeat
      elif code in _TFORM_SIZE and _TFORM_SIZE[code] is not None:
        cols[name] = (pos, None, repeat, False)
        pos += _TFORM_SIZE[code] * repeat
      elif code == "X":
        cols[name] = (pos, None, repeat, False)
        pos += (repeat + 7) // 8
      else:
        raise SpectrumError(self.path, f"HDU {self.index}: bad TFORM{i} {form!r}")
    if pos != h.get("NAXIS1"):
      raise SpectrumError(self.path, f"HDU {self.index}: columns take {pos} bytes per row "
                          f"but NAXIS1 = {h.get('NAXIS1')}")
    return cols

  def column(self, name: str) -> np.ndarray:
    """One numeric column as a native array of shape (nrows, repeat), or (nrows,)."""
    cols = self.columns()
    key = name.upper()
    if key not in cols:
      raise KeyError(name)
    pos, dtype, repeat, scaled = cols[key]
    if dtype is None or scaled:
      raise Unsupported(f"column {name} needs astropy (type or scaling)")
    nrows = self.header.get("NAXIS2", 0)
    width = self.header.get("NAXIS1")
    # A strided view picks the field out of each row without copying the table.
    itemsize = np.dtype(dtype).itemsize
    view = np.ndarray((nrows, repeat), dtype, self.buf, self.offset + pos,
                      (width, itemsize))
    out = view.astype(np.dtype(dtype).newbyteorder("="))
    return out if repeat > 1 else out[:, 0]


def hdus(buf: bytes, path, limit: int = 64) -> list:
  """Every HDU in a FITS byte string (headers parsed, data left in place)."""
  if buf[:9] != b"SIMPLE  =":
    raise SpectrumError(path, "not a FITS file (does not start with a SIMPLE card)")
  out = []
  pos = 0
  while pos < len(buf) and len(out) < limit:
    if len(out) and buf[pos:pos + 8] != b"XTENSION":
      break  # trailing bytes after the last HDU are ignored, as astropy does
    header, start = parse_header(buf, pos, path)
    size = data_bytes(header)
    if start + size > len(buf):
      raise SpectrumError(path, f"truncated FITS data: HDU {len(out)} needs {size} bytes, "
                          f"file has {len(buf) - start}")
    out.append(Hdu(buf, header, start, len(out), path))
    pos = start + -(-size // BLOCK) * BLOCK
  return out
