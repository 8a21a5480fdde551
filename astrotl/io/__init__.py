"""Readers: one module per file format, each returning plain numpy plus a header dict.

Every reader raises `SpectrumError` (one exception type) for bad input; its message
names the file and the reason, never a bare astropy/numpy traceback.  Every spectrum a
reader returns has passed `check_spectrum`, so nothing a survey could not have
produced reaches a network.
"""

import dataclasses
import math
from typing import Any

import numpy as np


class SpectrumError(ValueError):
  """A spectrum file could not be read.  `path` and `reason` are kept for error tables."""

  def __init__(self, path, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass
class Spectrum:
  """One spectrum on its native pixels.

  wavelength: vacuum/air wavelength in Angstrom as stored by the survey (float32... see reader)
  flux, ivar: float32; ivar = 0 marks unusable pixels
  mask: bool, True where the pixel is bad (ivar == 0, non-finite, or flagged by the pipeline)
  meta: header values (obsid, designation, ra, dec, class, subclass, z, snr_*, lmjd, planid,
        spid, fiberid, data_release, pipeline, file), None where the header lacks them
  """

  wavelength: np.ndarray
  flux: np.ndarray
  ivar: np.ndarray
  mask: np.ndarray
  meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Limits:
  """What a survey's low-resolution spectrographs can record."""

  wavelength: tuple[float, float]  # Angstrom, first and last pixel inside this
  pixels: tuple[int, int]


# Real files: LAMOST LRS 3700-9100 A in 3751-3909 pixels (every release); SDSS 3800-9200 A
# (3800-3850 px), BOSS 3590-10400 A (up to 4650 px).  The bounds add ~2 % of slack, not
# more: a file outside them was damaged (a BSCALE edit moving DR2-8 wavelengths to
# 1850-4550 A, an NAXIS1 edit shifting a DR1 grid to 9365 A).  The low pixel bound only
# keeps a dispersion measurable.
LIMITS = {
    "LAMOST-LRS": Limits((3600.0, 9300.0), (16, 4000)),
    "SDSS": Limits((3500.0, 10600.0), (16, 4800)),
}
DLOGLAM = (5e-5, 2e-4)   # both surveys sample at 1e-4 in log10(lambda) (69 km/s)
MAX_OFF_GRID = 0.05      # pixels a wavelength may stray from the log-linear grid
MAX_VALUE = 1e20         # |flux| and ivar of a good pixel (real: flux < 1e6, ivar < 1e3)


def check_spectrum(path, survey, wavelength, flux, ivar, mask,
                   loglam=None) -> tuple[float, float]:
  """Refuses a spectrum its survey cannot have produced; returns (loglam0, dloglam).

  The one check every reader applies (so `read`, `lamost.read_raw` and the scan's
  `batch.decode` all see the same rules): arrays of one length, a pixel count and a
  wavelength range inside LIMITS[survey], wavelengths finite and increasing on a
  log-linear grid (within MAX_OFF_GRID pixel) with a plausible step (DLOGLAM), and
  finite flux and positive finite ivar, below MAX_VALUE, wherever `mask` is False.
  Raises SpectrumError naming the field that fails.

  loglam: (loglam0, dloglam) when `wavelength` was computed as 10 ** (loglam0 + dloglam
  * i) (LAMOST pilot/DR1 files): log-linear by construction, so only its ends and step
  are checked.
  """
  limits = LIMITS[survey]
  n = len(flux)
  if not wavelength.shape == flux.shape == ivar.shape == mask.shape == (n,):
    raise SpectrumError(path, f"arrays differ in shape: wavelength {wavelength.shape}, flux "
                        f"{flux.shape}, ivar {ivar.shape}, mask {mask.shape}")
  lo, hi = limits.pixels
  if not lo <= n <= hi:
    raise SpectrumError(path, f"pixels: {n}, but a {survey} spectrum has {lo}-{hi}")
  # Distance from the log-linear grid through the end points, in pixels.  Natural log in
  # float32 (numpy vectorises it; log10 is 4x slower) is good to ~0.005 pixel, and NaN,
  # zero or negative wavelengths make it NaN or infinite, so one test covers them all.
  first, last = float(wavelength[0]), float(wavelength[-1])
  if loglam is not None:
    ln0, step, off = loglam[0] * _LN10, loglam[1] * _LN10, 0.0
  else:
    ln0 = math.log(first) if first > 0 else math.nan
    step = (math.log(last) - ln0) / (n - 1) if last > 0 else math.nan
    with np.errstate(all="ignore"):
      off = np.log(wavelength, dtype=np.float32)
      off -= np.float32(step) * _ARANGE[:n]  # ~ ln0 everywhere on a log-linear grid
      off = max(float(off.max()) - ln0, ln0 - float(off.min())) / step if step else math.inf
  dloglam = step / _LN10
  if not (DLOGLAM[0] <= dloglam <= DLOGLAM[1] and off <= MAX_OFF_GRID):
    if not (np.isfinite(wavelength).all() and wavelength[0] > 0
            and (wavelength[1:] > wavelength[:-1]).all()):
      raise SpectrumError(path, "wavelength is not positive, finite and increasing")
    if not DLOGLAM[0] <= dloglam <= DLOGLAM[1]:
      raise SpectrumError(path, f"wavelength step: {dloglam:.3g} in log10(A) per pixel, "
                          f"outside the plausible {DLOGLAM[0]:g}-{DLOGLAM[1]:g}")
    raise SpectrumError(path, f"wavelength is not log-linear (off by {off:.2f} pixel)")
  lo, hi = limits.wavelength
  if first < lo or last > hi:
    raise SpectrumError(path, f"wavelength: {first:.0f}-{last:.0f} A, outside the "
                        f"{lo:.0f}-{hi:.0f} A a {survey} spectrograph records")
  # abs(NaN) <= x is False, so one comparison finds non-finite and huge values alike; the
  # unmasked test runs only when some pixel (perhaps a masked one) fails.
  with np.errstate(invalid="ignore"):
    if not (np.abs(flux).max() <= MAX_VALUE or (mask | (np.abs(flux) <= MAX_VALUE)).all()):
      raise SpectrumError(path, f"flux: unmasked values that are not finite or exceed "
                          f"{MAX_VALUE:g}")
    if not ((ivar.max() <= MAX_VALUE or (mask | (ivar <= MAX_VALUE)).all())
            and (mask | (ivar > 0)).all()):
      raise SpectrumError(path, f"ivar: unmasked values that are not positive and finite or "
                          f"exceed {MAX_VALUE:g}")
  return (loglam[0], loglam[1]) if loglam is not None else (ln0 / _LN10, dloglam)


_ARANGE = np.arange(max(lim.pixels[1] for lim in LIMITS.values()), dtype=np.float32)
_LN10 = float(np.log(10.0))


def survey_of(hdus) -> str:
  """'SDSS' or 'LAMOST-LRS', from a file's content (fitsraw HDUs), never its name.

  TELESCOP names the telescope in both surveys' files; without it, an SDSS spec file
  is told by its COADD table holding `loglam` (LAMOST tables hold WAVELENGTH).
  """
  telescope = hdus[0].header.value("TELESCOP")
  if isinstance(telescope, str) and telescope.strip():
    return "SDSS" if "SDSS" in telescope.upper() else "LAMOST-LRS"
  from astrotl.io import fitsraw
  for h in hdus[1:]:
    if h.kind == "BINTABLE" and h.name.upper() == "COADD":
      try:
        names = h.columns()
      except fitsraw.Unsupported:  # e.g. a compressed image: no survey's spectrum table
        continue
      if "LOGLAM" in names and "WAVELENGTH" not in names:
        return "SDSS"
  return "LAMOST-LRS"


def read(path) -> Spectrum:
  """Reads a LAMOST LRS or SDSS/BOSS spectrum, choosing the reader from the file's
  content (see survey_of); anything else raises SpectrumError."""
  from astrotl.io import fitsraw, lamost, sdss
  hdus = fitsraw.read(path)
  if survey_of(hdus) == "SDSS":
    return sdss.from_hdus(hdus, path)
  return lamost.from_hdus(hdus, path)
