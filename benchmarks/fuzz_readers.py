"""Fuzz the survey scan's spectrum reader with mutated real files.

Run by hand (not a test; tests/test_io_hostile.py runs a few hundred fixed cases):
  PYTHONPATH=. python benchmarks/fuzz_readers.py --n=10000 [--seed=0] [--data DIR]

Each case takes a real file, chosen layout first so rare layouts count as much as
common ones (LAMOST pilot/DR1, DR2-era, DR6/7, DR8 images; DR9, DR13 tables; the MRS
file; SDSS/BOSS and SDSS-I spec files), applies one to three mutations (byte flips,
truncation, header card edits with huge/negative/NaN/string values, duplicated cards,
a removed END, NAXIS edits, BLANK/BSCALE/BZERO edits and integer requantisation,
swapped HDUs, appended garbage, edited data values, gzip bombs, damaged gzip streams),
writes it under a LAMOST- or SDSS-style name, and reads it in a worker process:

  - with the scan's decoder, astrotl.io.batch.decode: any exception other than
    SpectrumError is a failure;
  - with the reader its content calls for, lamost.read or sdss.read, both directly
    and with fast=False (astropy decoding): where both accept, every array and the
    meta must be identical;
  - where the reader accepts, astropy.io.fits.open on the file itself is the
    independent reference for the stored flux and ivar.

A case taking more than 5 s, or a worker whose peak memory passes 1 GB, is a failure
too.  Writes benchmarks/results/fuzz_readers.json.
"""

import argparse
import collections
import gzip
import io
import json
import multiprocessing
import os
import pathlib
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
import zlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
BLOCK, CARD = 2880, 80
MAX_SECONDS = 5.0
MAX_RSS_BYTES = 2**30
_END = b"END" + b" " * 77

GROUPS = {  # layout -> glob under spectra/
    "lamost_pilot_dr1": "lamost_dr1_pilot_B6212/*.fits.gz",
    "lamost_dr2era": "lamost_dr2era_image_format/*.fits.gz",
    "lamost_dr6_dr7": "lamost_dr6_dr7_image_format/*.fits.gz",
    "lamost_dr8": "lamost_dr8v1_image_format/*.fits.gz",
    "lamost_dr9_table": "lamost_dr9_bintable_format/*.fits.gz",
    "lamost_dr13_table": "lamost_dr13q1_bintable_format/*.fits.gz",
    "lamost_mrs": "lamost_mrs_dr7_example/*.fits.gz",
    "sdss_boss": "sdss_boss/*.fits.gz",
    "sdss_spec": "real_wd_validation/sdss_qso_galaxies/*.fits",
}


# --- FITS structure of the (possibly already mutated) bytes ------------------------------

def headers(buf):
  """[(header start, END card offset, data start, data size)], as far as it can tell."""
  out, pos = [], 0
  while pos + BLOCK <= len(buf) and len(out) < 64:
    if buf[pos:pos + 8] not in (b"SIMPLE  ", b"XTENSION"):
      break
    end = -1
    for b in range(pos, min(len(buf), pos + 200 * BLOCK), BLOCK):
      block = buf[b:b + BLOCK]
      for c in range(0, len(block), CARD):
        if block[c:c + CARD] == _END:
          end = b + c
          break
      if end >= 0:
        break
    if end < 0:
      break
    start = pos + ((end - pos) // BLOCK + 1) * BLOCK
    cards = {buf[i:i + 8].strip().decode("latin-1"): buf[i + 10:i + CARD]
             for i in range(pos, end, CARD) if buf[i + 8:i + 10] == b"= "}
    try:
      naxis = int(cards.get("NAXIS", b"0").split(b"/")[0])
      n = 1 if naxis else 0
      for i in range(1, min(naxis, 8) + 1):
        n *= int(cards[f"NAXIS{i}"].split(b"/")[0])
      size = abs(int(cards["BITPIX"].split(b"/")[0])) // 8 * (
          n + int(cards.get("PCOUNT", b"0").split(b"/")[0]))
    except (KeyError, ValueError):
      out.append((pos, end, start, None))
      break
    out.append((pos, end, start, size))
    pos = start + -(-size // BLOCK) * BLOCK
  return out


def card_positions(buf, hdu=None):
  """{keyword: [offsets]} of the value cards in the header of HDU `hdu` (None: all)."""
  found = collections.defaultdict(list)
  for i, (pos, end, _, _) in enumerate(headers(buf)):
    if hdu is not None and i != hdu:
      continue
    for c in range(pos, end, CARD):
      if buf[c + 8:c + 10] == b"= ":
        found[buf[c:c + 8].strip().decode("latin-1")].append(c)
  return found


def make_card(key, value):
  return f"{key:<8}= {value:>20} / fuzz".ljust(CARD)[:CARD].encode("latin-1")


def set_card(buf, rng, key, value, hdu=None):
  pos = card_positions(buf, hdu).get(key)
  if pos:
    at = int(rng.choice(pos))
    buf[at:at + CARD] = make_card(key, value)
    return True
  return add_card(buf, rng, key, value, hdu if hdu is not None else 0)


def add_card(buf, rng, key, value, hdu=0):
  """Puts a card in place of the END card (END moves to the next card, if it fits)."""
  hs = headers(buf)
  if hdu >= len(hs):
    return False
  pos, end, start, _ = hs[hdu]
  if end + 2 * CARD > start:
    return False  # the header block is full: leave it
  buf[end:end + CARD] = make_card(key, value)
  buf[end + CARD:end + 2 * CARD] = _END
  return True


# --- mutations ---------------------------------------------------------------------------

STRANGE = ["1000000000000000000", "-1", "0", "-5", "NAN", "'abc'", "1.5", "1E300", "3_904",
           "T", "F", "", "99999999999999999999999999", "+4", "inf", "-0", "1D3", "'  '",
           "(1, 2)", "'unterminated", "1E-300", "-1E300", "2147483648", "999", "1000"]
STRUCTURAL = ["SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "PCOUNT", "GCOUNT",
              "TFIELDS", "TFORM1", "TFORM2", "TFORM3", "TTYPE1", "TTYPE3", "EXTNAME",
              "XTENSION", "BSCALE", "BZERO", "BLANK", "EXTEN0", "COEFF0", "COEFF1",
              "TELESCOP", "GROUPS", "THEAP", "TDIM1", "TSCAL2", "TZERO1", "ZIMAGE"]


def m_flip(buf, rng):
  where = rng.choice(["header", "data", "anywhere"])
  hs = headers(buf)
  lo, hi = 0, len(buf)
  if hs and where == "header":
    hi = hs[0][2]
  elif hs and where == "data" and hs[-1][2] < len(buf):
    lo = hs[0][2]
  for p in rng.integers(lo, max(hi, lo + 1), size=rng.integers(1, 9)):
    if p < len(buf):
      flip = 1 << int(rng.integers(8))
      buf[p] = int(rng.integers(256)) if rng.random() < 0.5 else buf[p] ^ flip
  return f"flip-{where}"


def m_truncate(buf, rng):
  cut = int(rng.integers(0, len(buf)))
  if rng.random() < 0.3:
    cut -= cut % BLOCK
  del buf[cut:]
  return "truncate"


def m_card_edit(buf, rng):
  key = str(rng.choice(STRUCTURAL + list(card_positions(buf))))
  value = str(rng.choice(STRANGE))
  hdu = int(rng.integers(0, max(len(headers(buf)), 1)))
  set_card(buf, rng, key, value, hdu)
  return f"card-{key}"


def m_plausible_edit(buf, rng):
  """Numbers near the real ones, so deeper checks (wavelength, dispersion) are reached."""
  cards = card_positions(buf, 0)
  key = str(rng.choice(["COEFF0", "COEFF1", "NAXIS1", "NAXIS2", "BSCALE", "BZERO", "EXTEN0",
                        "TELESCOP", "FILENAME"]))
  if key == "COEFF0":
    value = f"{3.5682 + rng.choice([-0.3, -0.05, 0.0001, 0.02, 0.4]):.4f}"
  elif key == "COEFF1":
    value = str(rng.choice(["1E-9", "2E-4", "5E-5", "1.0001E-4", "-1E-4", "0.0", "1E-2"]))
  elif key in ("NAXIS1", "NAXIS2"):
    old = cards.get(key)
    n = int(buf[old[0] + 10:old[0] + 30]) if old else 5
    value = str(max(n + int(rng.choice([-128, -2, -1, 1, 2, 128])), 0))
  elif key == "BSCALE":
    value = str(rng.choice(["0.5", "2", "-1", "1E-3", "1E10", "0", "1"]))
  elif key == "BZERO":
    value = str(rng.choice(["0", "1", "-1000", "32768", "1E30"]))
  elif key == "EXTEN0":
    value = str(rng.choice(["'Flux Inverse Wavelength Andmask Ormask'",
                            "'Flux Inverse Subcontinuum Andmask Ormask'",
                            "'Flux Inverse Sky Andmask Ormask'", "''", "'Wavelength Flux'"]))
  elif key == "TELESCOP":
    value = str(rng.choice(["'LAMOST'", "'SDSS 2.5-M'", "'HST'", "''"]))
  else:
    value = str(rng.choice(["'med-58408-TD230151N343645T01_sp01-015.fits'", "'x'"]))
  set_card(buf, rng, key, value, 0)
  return f"plausible-{key}"


def m_duplicate(buf, rng):
  cards = card_positions(buf)
  keys = [k for k in STRUCTURAL if k in cards] or list(cards)
  if not keys:
    return "duplicate-none"
  key = str(rng.choice(keys))
  at = int(rng.choice(cards[key]))
  hs = headers(buf)
  hdu = next((i for i, h in enumerate(hs) if h[0] <= at < h[1]), 0)
  value = buf[at + 10:at + CARD].decode("latin-1").split("/")[0].strip()
  if rng.random() < 0.5:
    value = str(rng.choice(STRANGE[:8] + [value]))
  add_card(buf, rng, key, value, hdu)
  return f"duplicate-{key}"


def m_remove_end(buf, rng):
  hs = headers(buf)
  if hs:
    _, end, _, _ = hs[int(rng.integers(len(hs)))]
    buf[end:end + CARD] = (b"END     garbage" if rng.random() < 0.3 else b" " * 3).ljust(CARD)
  return "remove-end"


def m_naxis(buf, rng):
  key = str(rng.choice(["NAXIS", "NAXIS1", "NAXIS2", "NAXIS3"]))
  value = str(rng.choice(["0", "1", "2", "3", "5", "999", "1000", "-2", "10000000",
                          "1000000000000000000", "3904", "3909", "4032", "93792"]))
  set_card(buf, rng, key, value, int(rng.integers(0, max(len(headers(buf)), 1))))
  return f"naxis-{key}"


def m_scaling(buf, rng):
  key = str(rng.choice(["BLANK", "BSCALE", "BZERO"]))
  value = str(rng.choice(["0", "-1", "1", "7", "32767", "-32768", "0.5", "2", "1E-3", "'x'",
                          "NAN", "1E300"]))
  set_card(buf, rng, key, value, 0)
  return f"scaling-{key}"


def m_requantise(buf, rng):
  """The primary image stored as scaled integers (BITPIX 16/32, BSCALE, BZERO, BLANK for
  NaN): valid FITS that the direct parser must decode exactly as astropy does."""
  from astropy.io import fits
  try:
    with fits.open(io.BytesIO(bytes(buf)), memmap=False) as hdul:
      if len(hdul) != 1 or hdul[0].data is None:
        return "requantise-none"
      data = np.asarray(hdul[0].data, np.float64)
      header = hdul[0].header.copy()
  except Exception:
    return "requantise-unreadable"
  bits = int(rng.choice([8, 16, 32]))
  finite = np.isfinite(data)
  lo, hi = (data[finite].min(), data[finite].max()) if finite.any() else (0.0, 1.0)
  top = {8: 254, 16: 32766, 32: 2**31 - 2}[bits]
  scale = (hi - lo) / top if hi > lo else 1.0
  zero = lo if bits == 8 else lo + scale * (top // 2 + 1)
  q = np.round((np.where(finite, data, lo) - zero) / scale)
  dtype = {8: ">u1", 16: ">i2", 32: ">i4"}[bits]
  blank = {8: 255, 16: -32768, 32: -2**31}[bits]
  q = np.where(finite, q, blank).astype(dtype)
  for key in ("BSCALE", "BZERO", "BLANK"):
    header.remove(key, ignore_missing=True, remove_all=True)
  header["BITPIX"] = bits
  header["BSCALE"], header["BZERO"] = float(scale), float(zero)
  if rng.random() < 0.7:
    header["BLANK"] = blank
  buf[:] = header.tostring().encode() + _padded(q.tobytes())
  return f"requantise-{bits}"


def _padded(data):
  return data + bytes(-len(data) % BLOCK)


def m_swap_hdus(buf, rng):
  hs = headers(buf)
  if len(hs) < 3 or any(h[3] is None for h in hs):
    return "swap-none"
  i, j = sorted(rng.choice(np.arange(1, len(hs)), size=2, replace=False))
  spans = [(h[0], h[2] + -(-h[3] // BLOCK) * BLOCK) for h in hs]
  parts = [bytes(buf[a:b]) for a, b in spans]
  tail = bytes(buf[spans[-1][1]:])
  parts[i], parts[j] = parts[j], parts[i]
  buf[:] = b"".join(parts) + tail
  return "swap-hdus"


def m_append(buf, rng):
  kind = rng.choice(["random", "zeros", "header", "xtension-huge", "simple"])
  if kind == "random":
    buf += rng.bytes(int(rng.integers(1, 3 * BLOCK)))
  elif kind == "zeros":
    buf += bytes(int(rng.integers(1, 3 * BLOCK)))
  elif kind == "header":
    hs = headers(buf)
    if hs:
      buf += buf[hs[0][0]:hs[0][2]]
  elif kind == "xtension-huge":
    h = b"".join(make_card(k, v) for k, v in (
        ("XTENSION", "'BINTABLE'"), ("BITPIX", "8"), ("NAXIS", "2"),
        ("NAXIS1", "1000000000"), ("NAXIS2", "1000000000"), ("PCOUNT", "0"), ("GCOUNT", "1"),
        ("TFIELDS", "1"))) + _END
    buf += _padded(h)
  else:
    buf += _padded(make_card("SIMPLE", "T") + _END)
  return f"append-{kind}"


def m_data_values(buf, rng):
  hs = headers(buf)
  if not hs or hs[-1][3] is None:
    return "data-none"
  h = hs[0] if hs[0][3] else hs[min(1, len(hs) - 1)]
  start, size = h[2], h[3] or 0
  if size < 8:
    return "data-none"
  values = [np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-42, 0.0, -0.0, 1e25]
  for p in rng.integers(0, size // 4, size=rng.integers(1, 40)):
    at = start + 4 * int(p)
    if at + 4 <= len(buf):
      buf[at:at + 4] = np.array(rng.choice(values), ">f4").tobytes()
  return "data-values"


MUTATIONS = [m_flip, m_truncate, m_card_edit, m_plausible_edit, m_duplicate, m_remove_end,
             m_naxis, m_scaling, m_requantise, m_swap_hdus, m_append, m_data_values]


# --- containers (gzip, bombs) ------------------------------------------------------------

def zeros_member(nbytes, level=9):
  """One gzip member inflating to `nbytes` zeros, built without holding them."""
  z = zlib.compressobj(level, zlib.DEFLATED, 31)
  chunk = bytes(1 << 24)
  parts = []
  for _ in range(nbytes // len(chunk)):
    parts.append(z.compress(chunk))
  parts.append(z.compress(bytes(nbytes % len(chunk))))
  parts.append(z.flush())
  return b"".join(parts)


class Bombs:
  """Pre-built gzip bombs (built once per run: they take seconds to compress)."""

  def __init__(self, big: int):
    self.member_1mb = zeros_member(1 << 20)
    self.big = big
    self._single = None

  def single(self, head: bytes) -> bytes:
    """One gzip member: a real FITS header (the first one given: pass an unmutated one)
    and then `big` zero bytes, like the QA's 3.1 MB file that inflated to 6.3 GB."""
    if self._single is None:
      z = zlib.compressobj(9, zlib.DEFLATED, 31)
      parts = [z.compress(head)]
      chunk = bytes(1 << 24)
      for _ in range(self.big // len(chunk)):
        parts.append(z.compress(chunk))
      parts.append(z.flush())
      self._single = b"".join(parts)
    return self._single


def container(buf, rng, bombs, pristine):
  """(file bytes, description): plain FITS, gzip, or a damaged / bombed gzip.
  `pristine` is the unmutated seed file (for the bomb's real header)."""
  r = rng.random()
  if r < 0.35:
    return bytes(buf), "plain"
  data = gzip.compress(bytes(buf), compresslevel=1)
  if r < 0.75:
    return data, "gzip"
  kind = rng.choice(["gz-flip", "gz-truncate", "bomb-tail", "bomb-single", "bomb-header",
                     "gz-garbage-tail", "gz-zero-pad"])
  if kind == "gz-flip":
    d = bytearray(data)
    for p in rng.integers(0, len(d), size=rng.integers(1, 4)):
      d[p] ^= 1 << int(rng.integers(8))
    return bytes(d), kind
  if kind == "gz-truncate":
    return data[:int(rng.integers(1, len(data)))], kind
  if kind == "bomb-tail":
    return data + bombs.member_1mb * int(rng.integers(70, 400)), kind
  if kind == "bomb-single":
    return bombs.single(pristine[:headers(pristine)[0][2]]), kind
  if kind == "bomb-header":
    head = b"".join(make_card(k, v) for k, v in (
        ("SIMPLE", "T"), ("BITPIX", "-32"), ("NAXIS", "2"), ("NAXIS1", "4096"),
        ("NAXIS2", "4096"), ("TELESCOP", "'LAMOST'"))) + _END
    return gzip.compress(_padded(head)) + bombs.member_1mb * 64, kind
  if kind == "gz-garbage-tail":
    return data + rng.bytes(int(rng.integers(1, 5000))), kind
  return data + bytes(int(rng.integers(1, 5000))), kind


# --- one case in the worker ----------------------------------------------------------------

def _arrays_equal(a, b):
  return all(np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True)
             and getattr(a, k).dtype == getattr(b, k).dtype
             for k in ("wavelength", "flux", "ivar", "mask"))


def _astropy_rows(path):
  """flux, ivar as astropy decodes the file itself: LAMOST image rows 0 and 1, or the
  FLUX/IVAR columns of the first table with FLUX (LAMOST DR9+, SDSS COADD)."""
  import warnings
  from astropy.io import fits
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with fits.open(path, memmap=False) as hdul:
      if hdul[0].data is not None:
        data = hdul[0].data
        return np.asarray(data[0], np.float32), np.asarray(data[1], np.float32)
      tables = [h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)]
      # The table named COADD first (SDSS files hold per-exposure tables with flux too).
      tables.sort(key=lambda h: h.name.upper() != "COADD")
      for h in tables:
        names = {n.upper(): n for n in h.columns.names}
        if "FLUX" not in names:
          continue
        flux, ivar = h.data[names["FLUX"]], h.data[names["IVAR"]]
        if names["FLUX"] == "flux":  # SDSS: one row per pixel
          return np.asarray(flux, np.float32), np.asarray(ivar, np.float32)
        return np.asarray(flux[0], np.float32), np.asarray(ivar[0], np.float32)
  raise ValueError("no flux")


def read_case(path):
  """Outcome of one file: decode, then direct vs astropy decoding, then astropy alone."""
  from astrotl import io as aio
  from astrotl.io import SpectrumError, batch, fitsraw, lamost, sdss
  out = {}
  c0, w0 = time.process_time(), time.perf_counter()
  try:
    batch.decode(path)
    out["decode"] = "ok"
  except SpectrumError as e:
    out["decode"] = "SpectrumError"
    out["reason"] = e.reason[:120]
  except BaseException as e:  # noqa: BLE001 -- the point is to catch everything
    out["decode"] = f"EXCEPTION {type(e).__name__}"
    out["traceback"] = traceback.format_exc()[-1500:]
  out["cpu_s"] = time.process_time() - c0  # the scan's reader alone
  out["wall_s"] = time.perf_counter() - w0
  try:
    reader = sdss if aio.survey_of(fitsraw.read(path)) == "SDSS" else lamost
  except SpectrumError:
    reader = None
  except BaseException as e:  # noqa: BLE001
    reader = None
    out.setdefault("other_exceptions", []).append(f"survey_of: {type(e).__name__}: {e}"[:300])
  results = {}
  for fast in (True, False):
    try:
      results[fast] = reader.read(path, fast=fast) if reader else None
    except SpectrumError:
      results[fast] = None
    except BaseException as e:  # noqa: BLE001
      results[fast] = None
      out.setdefault("other_exceptions", []).append(
          f"{reader.__name__}.read(fast={fast}): {type(e).__name__}: {e}"[:300])
  a, b = results[True], results[False]
  if a is not None and b is not None:
    out["compare"] = "same" if _arrays_equal(a, b) and a.meta == b.meta else "DIFFERENT"
    if out["compare"] == "DIFFERENT":
      out["diff"] = [k for k in ("wavelength", "flux", "ivar", "mask")
                     if not np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True)
                     or getattr(a, k).dtype != getattr(b, k).dtype] + (
                         ["meta"] if a.meta != b.meta else [])
  elif (a is None) != (b is None):
    out["compare"] = "fast-only" if b is None else "astropy-only"
  if a is not None:
    try:
      flux, ivar = _astropy_rows(path)
      good = ~a.mask  # SDSS zeroes bad pixels; everything else is as stored
      same = (flux.shape == a.flux.shape and np.array_equal(flux[good], a.flux[good])
              and np.array_equal(ivar[good], a.ivar[good]))
      out["astropy_file"] = "same" if same else "DIFFERENT"
    except Exception as e:  # noqa: BLE001 -- astropy refusing is an outcome, not a failure
      out["astropy_file"] = f"astropy refuses ({type(e).__name__})"
  out["total_s"] = time.perf_counter() - w0
  return out


def peak_rss() -> int:
  """This process's peak resident memory in bytes.  VmHWM belongs to the address space
  exec created; ru_maxrss would also carry the high-water mark of the parent that forked
  this process."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_batch(paths):
  out = [read_case(p) for p in paths]
  return out, peak_rss()


def _worker_init(root):
  sys.path.insert(0, root)
  import warnings
  warnings.simplefilter("ignore")
  from astropy import log as astropy_log
  astropy_log.setLevel("ERROR")


# --- driver -------------------------------------------------------------------------------

def seeds(data):
  found = {}
  for group, pattern in GROUPS.items():
    files = sorted((data / "spectra").glob(pattern))
    if files:
      found[group] = files
  return found


def fits_bytes(path):
  raw = path.read_bytes()
  return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def make_case(rng, seed_files, bombs, cache):
  group = str(rng.choice(sorted(seed_files)))
  files = seed_files[group]
  src = files[int(rng.integers(len(files)))]
  if src not in cache:
    cache[src] = fits_bytes(src)
  buf = bytearray(cache[src])
  done = []
  for _ in range(int(rng.integers(1, 4))):
    m = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    try:
      done.append(m(buf, rng))
    except Exception as e:  # a mutation that cannot apply to these bytes
      done.append(f"{m.__name__}-skipped({type(e).__name__})")
  data, how = container(buf, rng, bombs, cache[src])
  name = str(rng.choice(["spec-55862-B6212_sp06-005.fits", "spec-4455-55539-0692.fits",
                         "med-58408-TD230151N343645T01_sp01-015.fits", "x.dat"]))
  if how != "plain" and rng.random() < 0.8:
    name += ".gz"
  return {"source": f"{group}/{src.name}", "mutations": done, "container": how,
          "name": name}, data


def run(n, seed, data, big_bomb, workers=1, batch=25, out_dir=None, log=print):
  """Fuzzes `n` cases (read in `workers` processes; 0 = in this one); returns the summary."""
  import warnings
  warnings.simplefilter("ignore")  # astropy warns about every damaged file it opens
  from astropy import log as astropy_log
  astropy_log.setLevel("ERROR")
  rng = np.random.default_rng(seed)
  seed_files = seeds(data)
  bombs = Bombs(big_bomb)
  cache = {}
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="fuzz_readers_", dir=out_dir))
  root = str(HERE.parent)
  ctx = multiprocessing.get_context("spawn")
  pool = ctx.Pool(workers, initializer=_worker_init, initargs=(root,)) if workers else None
  cases, outcomes, peak_rss = [], [], 0
  t0 = time.time()
  try:
    for start in range(0, n, batch):
      paths = []
      for i in range(start, min(start + batch, n)):
        case, blob = make_case(rng, seed_files, bombs, cache)
        d = tmp / f"{i:06d}"
        d.mkdir()
        path = d / case["name"]
        path.write_bytes(blob)
        case["bytes"] = len(blob)
        cases.append(case)
        paths.append(str(path))
      results = _run_batch(pool, paths, ctx, root, log)
      if pool is None and results is None:
        raise RuntimeError("in-process batch failed")
      if results is None:  # the worker hung or died: find the case, one by one
        pool.terminate()
        pool = ctx.Pool(workers, initializer=_worker_init, initargs=(root,))
        results = []
        for p in paths:
          r = _run_batch(pool, [p], ctx, root, log, timeout=60)
          if r is None:
            pool.terminate()
            pool = ctx.Pool(workers, initializer=_worker_init, initargs=(root,))
            results.append(({"decode": "HUNG OR CRASHED", "total_s": 60.0}, 0))
          else:
            results.append((r[0][0], r[1]))
        res, rss = [r for r, _ in results], max(r for _, r in results)
      else:
        res, rss = results
      peak_rss = max(peak_rss, rss)
      outcomes += res
      for p in paths:
        shutil.rmtree(pathlib.Path(p).parent, ignore_errors=True)
      if (start // batch) % 40 == 0:
        log(f"{len(outcomes)}/{n} cases, {time.time() - t0:.0f} s, peak worker RSS "
            f"{peak_rss / 2**20:.0f} MB")
  finally:
    if pool is not None:
      pool.terminate()
    shutil.rmtree(tmp, ignore_errors=True)
  return summarise(cases, outcomes, peak_rss, time.time() - t0, seed)


def _run_batch(pool, paths, ctx, root, log, timeout=None):
  if pool is None:
    return read_batch(paths)
  job = pool.apply_async(read_batch, (paths,))
  try:
    return job.get(timeout or (MAX_SECONDS * 3 * len(paths) + 60))
  except multiprocessing.TimeoutError:
    log(f"batch timed out: {paths[0]} ...")
    return None
  except Exception as e:  # the worker died (e.g. killed for memory)
    log(f"worker failed: {type(e).__name__}: {e}")
    return None


def summarise(cases, outcomes, peak_rss, seconds, seed):
  decode = collections.Counter(o["decode"] for o in outcomes)
  compare = collections.Counter(o.get("compare", "n/a") for o in outcomes)
  astropy_file = collections.Counter(o.get("astropy_file", "n/a") for o in outcomes)
  reasons = collections.Counter(o.get("reason", "").split(":")[0][:60] for o in outcomes
                                if o["decode"] == "SpectrumError")
  bad = lambda o: (not o["decode"] in ("ok", "SpectrumError") or o.get("compare") == "DIFFERENT"
                   or o.get("astropy_file") == "DIFFERENT" or o.get("other_exceptions")
                   or o.get("wall_s", o["total_s"]) > MAX_SECONDS)
  failures = [dict(c, **o) for c, o in zip(cases, outcomes) if bad(o)]
  slow = sorted(outcomes, key=lambda o: -o["total_s"])[:1]
  by_mutation = collections.Counter(m.split("-")[0] for c in cases for m in c["mutations"])
  return {
      "what": "mutated real spectrum files through astrotl.io.batch.decode (the scan's "
              "reader), compared with astropy where both accept",
      "command": f"PYTHONPATH=. python benchmarks/fuzz_readers.py --n={len(cases)} --seed={seed}",
      "cases": len(cases),
      "seconds": round(seconds, 1),
      "exceptions_other_than_SpectrumError": sum(v for k, v in decode.items()
                                                 if k not in ("ok", "SpectrumError"))
      + sum(1 for o in outcomes if o.get("other_exceptions")),
      "decodes_over_5_s": sum(1 for o in outcomes if o.get("wall_s", o["total_s"]) > MAX_SECONDS),
      "max_decode_seconds": round(max((o.get("wall_s", o["total_s"]) for o in outcomes),
                                      default=0), 3),
      "max_decode_cpu_seconds": round(max((o["cpu_s"] for o in outcomes if "cpu_s" in o),
                                          default=0), 3),
      "cases_over_5_s": sum(1 for o in outcomes if o["total_s"] > MAX_SECONDS),
      "max_case_seconds": round(max((o["total_s"] for o in outcomes), default=0), 3),
      "peak_worker_rss_mb": round(peak_rss / 2**20, 1),
      "reads_over_1_gb": int(peak_rss > MAX_RSS_BYTES),
      "arrays_differing_fast_vs_astropy": compare.get("DIFFERENT", 0),
      "arrays_differing_vs_astropy_on_file": astropy_file.get("DIFFERENT", 0),
      "decode_outcomes": dict(decode),
      "fast_vs_astropy_decoding": dict(compare),
      "astropy_on_the_file": dict(astropy_file),
      "mutations_applied": dict(sorted(by_mutation.items())),
      "containers": dict(collections.Counter(c["container"] for c in cases)),
      "sources": dict(collections.Counter(c["source"].split("/")[0] for c in cases)),
      "top_rejection_reasons": dict(reasons.most_common(25)),
      "slowest_case": dict(cases[outcomes.index(slow[0])], **slow[0]) if slow else None,
      "accepted_by_one_path_only": [dict(c, **o) for c, o in zip(cases, outcomes)
                                    if o.get("compare") in ("fast-only", "astropy-only")][:20],
      "accepted_but_astropy_refuses": [
          dict(c, **o) for c, o in zip(cases, outcomes)
          if str(o.get("astropy_file", "")).startswith("astropy refuses")][:20],
      "failures": failures[:50],
      "python": sys.version.split()[0], "numpy": np.__version__,
      "machine": platform.machine(), "cpus": os.cpu_count(),
      "date": time.strftime("%Y-%m-%d"),
  }


def default_data():
  env = os.environ.get("ASTROTL_SHARED_DATA")
  candidates = [pathlib.Path(env)] if env else []
  candidates += [HERE.parent.parent / "shared" / "data", pathlib.Path("/work/shared/data")]
  return next((c for c in candidates if (c / "spectra" / "index.csv").exists()), candidates[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=10000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data", type=pathlib.Path, default=default_data())
  parser.add_argument("--bomb_gb", type=float, default=6.0,
                      help="zeros inflated by the single-member gzip bomb")
  parser.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "fuzz_readers.json")
  args = parser.parse_args()
  summary = run(args.n, args.seed, args.data, int(args.bomb_gb * 2**30))
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
  keys = ("cases", "exceptions_other_than_SpectrumError", "decodes_over_5_s",
          "max_decode_seconds", "max_decode_cpu_seconds", "max_case_seconds",
          "peak_worker_rss_mb", "arrays_differing_fast_vs_astropy",
          "arrays_differing_vs_astropy_on_file")
  print(json.dumps({k: summary[k] for k in keys}), "->", args.out)


if __name__ == "__main__":
  main()
