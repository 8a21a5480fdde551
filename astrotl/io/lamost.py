"""LAMOST low-resolution (LRS) spectra: spec-*.fits[.gz] from every data release.

Layouts handled (detected from the file, never from its name):
  pilot/DR1  primary image, rows flux, ivar, subcontinuum, andmask, ormask; no wavelength
             row: wavelength = 10 ** (COEFF0 + COEFF1 * i).
  DR2-DR8v1  primary image, rows flux, ivar, wavelength, andmask, ormask (float32 or float64).
  DR9+       empty primary + BINTABLE `COADD`, one row with vector columns FLUX, IVAR,
             WAVELENGTH, ANDMASK, ORMASK, NORMALIZATION.
Medium-resolution (`med-`) files, other telescopes and anything else raise SpectrumError.

Conventions of the returned Spectrum:
  flux, ivar  float32, values exactly as stored (a float64 DR2-era file is rounded to
              float32).  Bad pixels keep their stored values; use `mask`.
  wavelength  float64, Angstrom (vacuum).  Stored float32 rows widen exactly; computing
              the DR1 grid from COEFF0/COEFF1 in float32 would shift red pixels by ~1e-3 A.
  mask        True = bad: ivar <= 0, flux or ivar non-finite, or ANDMASK != 0.  In the
              real files every ANDMASK pixel already has ivar = 0; ORing it in anyway means a
              pipeline flag is never silently trusted.  ORMASK is not used: it flags pixels bad in
              any single exposure, which the coadd may still measure well.

The default path parses the FITS bytes directly (astrotl.io.fitsraw), ~3x faster than
astropy, and falls back to astropy for anything it does not recognise.  `fast=False`
decodes with astropy only; both give identical arrays.  Either way the file is opened,
inflated and its structure checked by fitsraw first (regular files only, bounded
reads, valid FITS structure), and the result must pass astrotl.io.check_spectrum.
A keyword that decides where pixels lie (LAYOUT_KEYWORDS) may occur only once.
"""

import io
import math
import warnings
from typing import Any, NamedTuple

import numpy as np

from astrotl import io as aio
from astrotl.io import Spectrum, SpectrumError, fitsraw
from astrotl.preprocess.spectra import NPIX

SURVEY = "LAMOST-LRS"
LAYOUT_KEYWORDS = frozenset({"EXTEN0", "COEFF0", "COEFF1", "CRVAL1", "CD1_1", "TELESCOP",
                             "FILENAME"})
_MAX_ROWS = 16  # image rows: real files have 5

META_KEYS = ("obsid", "designation", "ra", "dec", "class", "subclass", "z", "snr_u",
             "snr_g", "snr_r", "snr_i", "snr_z", "lmjd", "planid", "spid", "fiberid",
             "data_release", "pipeline", "file")

# meta key -> (type, header keywords in order of preference across releases)
_KEYWORDS = {
    "obsid": (int, ("OBSID",)),
    "designation": (str, ("DESIG", "DESIGNAT")),
    "ra": (float, ("RA", "OBS_RA", "RA_OBS")),
    "dec": (float, ("DEC", "OBS_DEC", "DEC_OBS")),
    "class": (str, ("CLASS",)),
    "subclass": (str, ("SUBCLASS",)),
    "z": (float, ("Z",)),
    "snr_u": (float, ("SNRU", "SN_U")),
    "snr_g": (float, ("SNRG", "SN_G")),
    "snr_r": (float, ("SNRR", "SN_R")),
    "snr_i": (float, ("SNRI", "SN_I")),
    "snr_z": (float, ("SNRZ", "SN_Z")),
    "lmjd": (int, ("LMJD",)),
    "planid": (str, ("PLANID",)),
    "spid": (int, ("SPID",)),
    "fiberid": (int, ("FIBERID",)),
    "data_release": (str, ("DATA_V",)),
    "pipeline": (str, ("VERSPIPE",)),
    "file": (str, ("FILENAME",)),
}


class Raw(NamedTuple):
  """A spectrum as the survey scan needs it: fixed-size arrays on a log-linear grid.

  Pixel i (i < npix) is at log10(lambda) = loglam0 + dloglam * i; pixels >= npix are
  padding (flux = ivar = 0, mask = True), so every file gives arrays of one size.
  """

  loglam0: float
  dloglam: float
  npix: int
  flux: np.ndarray  # (size,) float32
  ivar: np.ndarray  # (size,) float32
  mask: np.ndarray  # (size,) bool, True = bad or padding
  meta: dict[str, Any]


def read(path, fast: bool = True) -> Spectrum:
  """Reads one LAMOST LRS spec-*.fits[.gz] file; raises SpectrumError if it cannot."""
  return from_hdus(fitsraw.read(path), path, fast)


def from_hdus(hdus, path, fast: bool = True) -> Spectrum:
  """`read` for a file already opened with fitsraw.read (used by astrotl.io.read)."""
  flux, ivar, bad, wave, _, meta = _decode(hdus, path, fast)
  return Spectrum(wavelength=wave, flux=flux, ivar=ivar, mask=bad, meta=meta)


def read_raw(path, size: int = NPIX, fast: bool = True) -> Raw:
  """Reads one file into fixed-size arrays for batched, on-device resampling.

  loglam0/dloglam describe the file's wavelengths (stored, or from COEFF0/COEFF1),
  which check_spectrum has found log-linear within 0.05 pixel, so the two numbers
  are always trustworthy.
  """
  flux, ivar, bad, _, (loglam0, dloglam), meta = _decode(fitsraw.read(path), path, fast)
  n = flux.shape[0]
  if n > size:
    raise SpectrumError(path, f"{n} pixels, more than the {size} this batch layout holds")
  out_flux = np.zeros(size, np.float32)
  out_ivar = np.zeros(size, np.float32)
  out_mask = np.ones(size, bool)
  out_flux[:n] = flux
  out_ivar[:n] = ivar
  out_mask[:n] = bad
  return Raw(float(loglam0), float(dloglam), n, out_flux, out_ivar, out_mask, meta)


def header_meta(header) -> dict:
  """The META_KEYS values of a LAMOST primary header (None where it lacks them, or where
  its card cannot be parsed)."""
  get = header.value if isinstance(header, fitsraw.Header) else (
      lambda name: _astropy_value(header, name))
  meta = {}
  for key, (kind, names) in _KEYWORDS.items():
    value = None
    for name in names:
      value = _convert(get(name), kind)
      if value is not None:
        break
    meta[key] = value
  return meta


def _astropy_value(header, name):
  try:
    return header[name] if name in header else None
  except Exception:  # an unparsable card (astropy's VerifyError)
    return None


# --- decoding ----------------------------------------------------------------------------

def _decode(hdus, path, fast):
  """(flux, ivar, bad, wavelength, (loglam0, dloglam), meta) of a checked spectrum."""
  twice = sorted(hdus[0].header.duplicates & LAYOUT_KEYWORDS)
  if twice:
    raise SpectrumError(path, f"keyword {twice[0]} appears more than once (readers disagree "
                        "on which one counts)")
  parts = None
  if fast:
    try:
      parts = _parts(hdus, path)
    except SpectrumError:
      raise
    except (fitsraw.Unsupported, ValueError, TypeError, KeyError, IndexError, OverflowError):
      # Something the direct parser does not handle (or a header it cannot make sense
      # of): astropy decides, and its failures become SpectrumError too.
      pass
  if parts is None:
    parts = _with_astropy(io.BytesIO(hdus[0].buf), path)
  flux, ivar, bad, wave, coeffs, meta = parts
  if wave is None:
    wave = 10.0 ** (coeffs[0] + coeffs[1] * np.arange(flux.shape[0], dtype=np.float64))
  grid = aio.check_spectrum(path, SURVEY, wave, flux, ivar, bad, loglam=coeffs)
  return flux, ivar, bad, wave, grid, meta


def _parts(hdus, path):
  """(flux, ivar, bad, wavelength or None, (coeff0, coeff1) or None, meta) of a file."""
  header = hdus[0].header
  _check_lrs(hdus, path)
  _check_image_size(header, path)
  image = hdus[0].image()
  if image is not None:
    flux, ivar, wave, andmask = _image_layout(image, header, path)
  else:
    tables = [h for h in hdus[1:] if h.kind == "BINTABLE"]
    table = next((h for h in tables if "FLUX" in h.columns()), None)
    if table is None:
      raise SpectrumError(path, "no spectrum: the primary HDU is empty and no binary table "
                          "has a FLUX column")
    flux, ivar, wave, andmask = _table_layout(table, path)
  n = flux.shape[0]
  if n == 0:
    raise SpectrumError(path, "no flux: the spectrum has 0 pixels")
  if ivar.shape != flux.shape or (wave is not None and wave.shape != flux.shape):
    raise SpectrumError(path, f"arrays differ in length: flux {flux.shape}, ivar {ivar.shape}"
                        + ("" if wave is None else f", wavelength {wave.shape}"))
  coeffs = None
  if wave is None:
    coeffs = _coeffs(header, path)
  else:
    wave = wave.astype(np.float64)
  with np.errstate(over="ignore", invalid="ignore"):  # float64 values beyond float32
    flux = flux.astype(np.float32, copy=False)
    ivar = ivar.astype(np.float32, copy=False)
  bad = ~np.isfinite(flux) | ~(ivar > 0) | (ivar == np.inf)
  if andmask is not None:
    bad |= andmask != 0
  if bad.all():
    raise SpectrumError(path, f"all {n} pixels are bad (ivar <= 0, non-finite, or ANDMASK set)")
  return flux, ivar, bad, wave, coeffs, header_meta(header)


def _check_image_size(header, path):
  # Before decoding: a header may declare an image far larger than a spectrum.
  naxis = header.get("NAXIS", 0)
  shape = tuple(header.get(f"NAXIS{i}", 0) for i in range(naxis, 0, -1))
  if naxis and math.prod(shape) > _MAX_ROWS * aio.LIMITS[SURVEY].pixels[1]:
    raise SpectrumError(path, f"unknown layout: primary image of shape {shape} is larger than "
                        "any LAMOST LRS spectrum")


def _check_lrs(hdus, path):
  header = hdus[0].header
  names = {h.name.upper() for h in hdus}
  filename = str(header.get("FILENAME", "") or "")
  if "COADD_B" in names or "COADD_R" in names or filename.startswith("med-"):
    raise SpectrumError(path, "a LAMOST medium-resolution (MRS) file; this reader handles "
                        "low-resolution (LRS) spectra only")
  telescope = str(header.get("TELESCOP", "") or "").strip()
  if telescope and "LAMOST" not in telescope.upper():
    raise SpectrumError(path, f"not a LAMOST file (TELESCOP = {telescope!r})")


def _row_names(exten0):
  return [w.lower() for w in str(exten0 or "").replace(",", " ").split()]


def _image_layout(image, header, path):
  if image.ndim != 2 or image.shape[0] < 2:
    raise SpectrumError(path, f"unknown layout: primary image of shape {image.shape}, "
                        "expected rows flux, ivar, ...")
  rows = _row_names(header.get("EXTEN0"))
  if len(rows) >= 3 and rows[2].startswith("subcont"):
    wave = None
  elif len(rows) >= 3 and rows[2].startswith("wave"):
    wave = image[2]
  elif not rows and image.shape[0] >= 3 and _looks_like_wavelength(image[2]):
    wave = image[2]
  elif "COEFF0" in header and "COEFF1" in header:
    wave = None
  else:
    raise SpectrumError(path, f"unknown layout: image rows {rows or 'unnamed'} and no "
                        "wavelength row or COEFF0/COEFF1")
  andmask = None
  if image.shape[0] >= 4 and (not rows or (len(rows) >= 4 and rows[3].startswith("and"))):
    andmask = image[3]
  return image[0], image[1], wave, andmask


def _looks_like_wavelength(row):
  # Optical Angstrom values, increasing: a flux or mask row never passes this.
  return bool(np.isfinite(row).all() and 3000 < row[0] < row[-1] < 12000
              and (row[1:] > row[:-1]).all())


def _table_layout(table, path):
  cols = table.columns()
  need = [c for c in ("FLUX", "IVAR") if c not in cols]
  wave_col = next((c for c in ("WAVELENGTH", "LOGLAM") if c in cols), None)
  if need or wave_col is None:
    raise SpectrumError(path, f"unknown layout: table {table.name!r} lacks "
                        f"{', '.join(need + ([] if wave_col else ['WAVELENGTH']))}")
  flux = table.column("FLUX")
  if flux.ndim != 2 or flux.shape[0] != 1:
    raise SpectrumError(path, f"unknown layout: table {table.name!r} has {flux.shape[0]} rows "
                        "of scalars, expected one row of vectors")
  ivar = table.column("IVAR")[0]
  wave = table.column(wave_col)[0]
  if wave_col == "LOGLAM":
    wave = 10.0 ** wave.astype(np.float64)
  andmask = table.column("ANDMASK")[0] if "ANDMASK" in cols else None
  return flux[0], ivar, wave, andmask


def _coeffs(header, path):
  c0 = header.get("COEFF0", header.get("CRVAL1"))
  c1 = header.get("COEFF1", header.get("CD1_1"))
  if not isinstance(c0, (int, float)) or not isinstance(c1, (int, float)):
    raise SpectrumError(path, "no wavelength row and no usable COEFF0/COEFF1 keywords")
  # log10 of an optical/near-IR wavelength in Angstrom, and a sane dispersion.
  if not (2.5 < c0 < 5.0 and 0 < c1 < 0.01):
    raise SpectrumError(path, f"COEFF0/COEFF1 = {c0}/{c1} is not a log10-Angstrom grid")
  return float(c0), float(c1)


def _convert(value, kind):
  if (value is None or value is fitsraw.INVALID or isinstance(value, bool)
      or type(value).__name__ == "Undefined"):
    return None
  if kind is str:
    return str(value).strip() or None
  if not isinstance(value, (int, float)):
    try:  # old files store some numbers as strings, e.g. FIBERID = '27'
      value = float(str(value).strip())
    except ValueError:
      return None
  if not math.isfinite(value):
    return None
  if kind is int:
    return int(value) if value == int(value) else None
  return float(value)


# --- astropy path -------------------------------------------------------------------------

class _AstropyHdu:
  """The few fitsraw.Hdu methods the layout code uses, over an astropy HDU."""

  def __init__(self, hdu, index):
    self.hdu = hdu
    self.header = hdu.header
    self.index = index
    self.name = str(hdu.name or "").strip()
    kind = type(hdu).__name__
    self.kind = {"PrimaryHDU": "IMAGE", "ImageHDU": "IMAGE", "BinTableHDU": "BINTABLE"}.get(
        kind, kind)

  def image(self):
    data = self.hdu.data
    if data is None:
      return None
    return np.asarray(data).astype(data.dtype.newbyteorder("="))

  def columns(self):
    if self.kind != "BINTABLE":
      return {}
    return {n.upper(): None for n in self.hdu.columns.names}

  def column(self, name):
    data = np.asarray(self.hdu.data[name])
    return data.astype(data.dtype.newbyteorder("="))


def _with_astropy(source, path):
  from astropy.io import fits  # imported here: the fast path never needs it

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      with fits.open(source, memmap=False) as hdul:
        return _parts([_AstropyHdu(h, i) for i, h in enumerate(hdul)], path)
  except SpectrumError:
    raise
  except Exception as e:  # astropy raises many exception types for damaged files
    raise SpectrumError(path, f"unreadable FITS ({type(e).__name__}: {e})") from None
