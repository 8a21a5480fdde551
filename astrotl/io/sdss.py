"""SDSS / BOSS `spec-PLATE-MJD-FIBER.fits[.gz]` files.

Layout (idlspec2d, SDSS-III/IV): HDU1 `COADD` is a table with one row per pixel
(flux, loglam, ivar, and_mask, or_mask, wdisp, sky, model); HDU2 `SPALL` (BOSS) or
`SPECOBJ` (SDSS-I/II), when present, holds the pipeline's classification.  Wavelengths
are vacuum, flux is in 1e-17 erg/s/cm^2/A.  A pixel is bad where ivar <= 0, flux is not finite, or any
AND_MASK bit is set (the condition held in every exposure).

The file is opened, inflated and its structure checked by astrotl.io.fitsraw (regular
files only, bounded reads, every HDU present: astropy alone would silently drop the
HDUs after a truncation point, and the COADD sits near the start).  The default path
then takes the columns straight from the bytes (astropy spends ~0.5 s parsing the
headers and the 200-column SPALL table of a BOSS file); anything it does not handle,
and `fast=False`, decode with astropy.  Both give identical arrays and meta, and the
spectrum must pass astrotl.io.check_spectrum.
"""

import io
import os
import warnings

import numpy as np

from astrotl import io as aio
from astrotl.io import Spectrum, SpectrumError, fitsraw

SURVEY = "SDSS"
_SNR_BANDS = ("u", "g", "r", "i", "z")
_SPALL_COLUMNS = ("PLATE", "MJD", "FIBERID", "PLUG_RA", "PLUG_DEC", "CLASS", "SUBCLASS", "Z",
                  "SN_MEDIAN")


def read(path, fast: bool = True) -> Spectrum:
  """Reads one SDSS/BOSS spec file; raises SpectrumError naming the file for bad input."""
  return from_hdus(fitsraw.read(path), path, fast)


def from_hdus(hdus, path, fast: bool = True) -> Spectrum:
  """`read` for a file already opened with fitsraw.read (used by astrotl.io.read)."""
  for h in hdus[1:]:
    if h.kind == "BINTABLE":
      try:
        h.columns()  # column widths add up, no two columns share a name
      except fitsraw.Unsupported:
        pass  # a table the direct path cannot read (ZIMAGE): astropy decides below
  if fast:
    try:
      return _read_direct(path, hdus)
    except SpectrumError:
      raise
    except (fitsraw.Unsupported, ValueError, TypeError, KeyError, IndexError, OverflowError):
      pass  # astropy decides
  from astropy.io import fits  # imported here: the fast path never needs it
  try:
    with warnings.catch_warnings():  # a damaged file's story is the SpectrumError
      warnings.simplefilter("ignore")
      with fits.open(io.BytesIO(hdus[0].buf), memmap=False) as hdul:
        return _read_astropy(path, hdul)
  except SpectrumError:
    raise
  except (OSError, EOFError) as e:
    raise SpectrumError(path, f"not a readable FITS file ({type(e).__name__}: {e})") from e
  except Exception as e:  # astropy raises many exception types for damaged files
    raise SpectrumError(path, f"malformed SDSS spec file ({type(e).__name__}: {e})") from e


def _read_direct(path, hdus):
  names = [h.name.upper() for h in hdus]
  coadd = _find_coadd(path, hdus, names, lambda h: h.kind == "BINTABLE")
  cols = {c.lower(): c for c in coadd.columns()}
  arrays = {k: coadd.column(cols[k]) for k in ("flux", "loglam", "ivar", "and_mask")
            if k in cols}
  spall = None
  name = _classification_hdu(names)
  if name:
    table = hdus[names.index(name)]
    if table.kind == "BINTABLE" and table.header["NAXIS2"] > 0:
      have = table.columns()
      spall = {c: _cell(table.column(c)[0]) for c in _SPALL_COLUMNS if c in have}
  return _spectrum(path, cols, arrays, hdus[0].header, spall)


def _cell(value):
  # Fixed-width strings come as bytes; astropy decodes them as ASCII (and fails likewise).
  return value.decode("ascii").rstrip() if isinstance(value, bytes) else value


def _read_astropy(path, hdul):
  from astropy.io import fits
  names = [h.name.upper() for h in hdul]
  coadd = _find_coadd(path, hdul, names, lambda h: isinstance(h, fits.BinTableHDU))
  if not isinstance(coadd, fits.BinTableHDU) or coadd.data is None:
    raise SpectrumError(path, "COADD HDU is not a table with data")
  cols = {c.lower(): c for c in coadd.columns.names}
  data = coadd.data
  arrays = {k: np.asarray(data[cols[k]]) for k in ("flux", "loglam", "ivar", "and_mask")
            if k in cols}
  spall = None
  name = _classification_hdu(names)
  if name:
    table = hdul[names.index(name)].data
    if table is not None and len(table) > 0:
      row = table[0]
      spall = {c: row[c] for c in _SPALL_COLUMNS if c in row.array.names}
  return _spectrum(path, cols, arrays, hdul[0].header, spall)


def _classification_hdu(names):
  # BOSS/eBOSS files call the classification HDU SPALL; SDSS-I/II (plates < 3000) SPECOBJ.
  return next((n for n in ("SPALL", "SPECOBJ") if n in names), None)


def _find_coadd(path, hdus, names, is_table):
  if "COADD" in names:
    coadd = hdus[names.index("COADD")]
  elif len(hdus) > 1 and is_table(hdus[1]):
    coadd = hdus[1]
  else:
    raise SpectrumError(path, "no COADD table (HDU1) -- not an SDSS/BOSS spec file")
  if not is_table(coadd):
    raise SpectrumError(path, "COADD HDU is not a table with data")
  return coadd


def _spectrum(path, cols, arrays, header, spall):
  """The checked Spectrum from the COADD columns (one row per pixel) and SPALL values."""
  for need in ("flux", "loglam", "ivar"):
    if need not in cols:
      raise SpectrumError(path, f"COADD table has no '{need}' column")
  if len(arrays["flux"]) == 0:
    raise SpectrumError(path, "COADD table has no rows")
  if any(a.ndim != 1 for a in arrays.values()):
    raise SpectrumError(path, "COADD columns hold more than one value per pixel")
  loglam = np.asarray(arrays["loglam"], np.float64)
  flux = np.asarray(arrays["flux"], np.float32)
  ivar = np.asarray(arrays["ivar"], np.float32)
  if not np.all(np.isfinite(loglam)) or np.any(np.diff(loglam) <= 0):
    raise SpectrumError(path, "loglam is not finite and strictly increasing")
  mask = ~np.isfinite(flux) | ~np.isfinite(ivar) | ~(ivar > 0)
  if "and_mask" in arrays:
    mask |= arrays["and_mask"] != 0
  if mask.all():
    raise SpectrumError(path, "all pixels are bad (ivar = 0, non-finite or AND_MASK set)")
  flux = np.where(mask, 0.0, flux).astype(np.float32)
  ivar = np.where(mask, 0.0, ivar).astype(np.float32)
  wavelength = 10.0 ** loglam
  aio.check_spectrum(path, SURVEY, wavelength, flux, ivar, mask)
  meta = _meta(path, header, spall)
  return Spectrum(wavelength=wavelength, flux=flux, ivar=ivar, mask=mask, meta=meta)


def _meta(path, header, spall):
  """Header values under the LAMOST reader's keys; None where the file lacks them."""

  def get(col, key=None):
    # The primary header keeps float64 where SPALL has float32 (e.g. PLUG_RA), so it wins.
    if key is not None and key in header:
      return header[key]
    if spall is not None and col in spall:
      return spall[col]
    return None

  plate, mjd, fiber = get("PLATE", "PLATEID"), get("MJD", "MJD"), get("FIBERID", "FIBERID")
  obsid = None
  if plate is not None and mjd is not None and fiber is not None:
    obsid = f"{int(plate):04d}-{int(mjd):05d}-{int(fiber):04d}"
  meta = {
      "survey": "SDSS",
      "obsid": obsid,
      "designation": None,
      "ra": _num(get("PLUG_RA", "PLUG_RA")),
      "dec": _num(get("PLUG_DEC", "PLUG_DEC")),
      "class": _text(get("CLASS")),
      "subclass": _text(get("SUBCLASS")),
      "z": _num(get("Z")),
      "plate": _int(plate),
      "mjd": _int(mjd),
      "fiberid": _int(fiber),
      "lmjd": None,
      "planid": None,
      "spid": None,
      "data_release": None,
      "pipeline": _text(get("RUN2D", "RUN2D")),
      "file": os.path.basename(path),
  }
  sn = get("SN_MEDIAN")
  sn = np.ravel(sn) if sn is not None else ()
  for i, band in enumerate(_SNR_BANDS):
    meta[f"snr_{band}"] = _num(sn[i]) if i < len(sn) else None
  return meta


def _num(v):
  if v is None:
    return None
  v = float(v)
  return v if np.isfinite(v) else None


def _int(v):
  return None if v is None else int(v)


def _text(v):
  if v is None:
    return None
  v = str(v).strip()
  return v or None
