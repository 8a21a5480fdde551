"""Spectra on the common log-linear wavelength grid.

The grid is LAMOST's: log10(lambda / Angstrom) = LOGLAM0 + DLOGLAM * i, i = 0 .. NPIX-1,
which spans 3699.98 - 9099.6 Angstrom.
"""

import numpy as np

LOGLAM0 = 3.5682
DLOGLAM = 1e-4
NPIX = 3909


def loglam_grid(npix: int = NPIX) -> np.ndarray:
  """log10 wavelength of the common grid (float64)."""
  return LOGLAM0 + DLOGLAM * np.arange(npix, dtype=np.float64)


def wavelength_grid(npix: int = NPIX) -> np.ndarray:
  """Wavelength in Angstrom of the common grid (float64)."""
  return 10.0 ** loglam_grid(npix)


# --- resampling ------------------------------------------------------------------------

def resample(loglam, flux, ivar, mask=None, npix: int = NPIX):
  """Resamples one or a batch of spectra onto the common grid.

  Linear interpolation in log10(lambda) -- not flux-conserving.  LAMOST pixels are
  already 1e-4 dex wide, so this is a sub-pixel shift and keeps flux density units;
  for coarser or finer input, integrate first.  ivar is interpolated the same way
  (zero where either neighbour is bad), and a grid pixel is masked when either
  neighbouring input pixel is masked or it falls outside the input's range.

  Args:
    loglam, flux, ivar: (n,) or (batch, n) arrays; loglam increasing along the last axis.
    mask: optional bool array, True = bad pixel.
  Returns:
    (flux, ivar, mask) on the grid, float32/float32/bool, shape (..., npix).
  """
  loglam = np.asarray(loglam, np.float64)
  flux = np.asarray(flux, np.float64)
  ivar = np.asarray(ivar, np.float64)
  bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar <= 0)
  if mask is not None:
    bad |= np.asarray(mask, bool)
  if flux.ndim == 1:
    return _resample_one(loglam, flux, ivar, bad, npix)
  out = [_resample_one(l, f, i, b, npix) for l, f, i, b in zip(loglam, flux, ivar, bad)]
  return tuple(np.stack(x) for x in zip(*out))


def _resample_one(loglam, flux, ivar, bad, npix):
  grid = loglam_grid(npix)
  n = loglam.shape[0]
  pos = np.interp(grid, loglam, np.arange(n, dtype=np.float64), left=-1.0, right=-1.0)
  outside = (grid < loglam[0]) | (grid > loglam[-1]) | (pos < 0)
  lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
  hi = np.clip(lo + 1, 0, n - 1)
  w = np.clip(pos - lo, 0.0, 1.0)
  f = np.where(bad, 0.0, flux)
  v = np.where(bad, 0.0, ivar)
  out_flux = (1 - w) * f[lo] + w * f[hi]
  out_ivar = (1 - w) * v[lo] + w * v[hi]
  out_bad = outside | (bad[lo] & (w < 1.0)) | (bad[hi] & (w > 0.0))
  out_flux = np.where(out_bad, 0.0, out_flux)
  out_ivar = np.where(out_bad, 0.0, out_ivar)
  return out_flux.astype(np.float32), out_ivar.astype(np.float32), out_bad


# --- labels ----------------------------------------------------------------------------

# Default 7-class set of the white-dwarf search (Tan et al. 2023).  Keys are class names,
# values the spectral-type letters (first letter of a LAMOST SUBCLASS, dwarf/giant prefix
# removed) that map to them; 'WD' collects LAMOST's WD* subclasses and D[ABOQZC] types.
DEFAULT_CLASSES = {"OB": ("O", "B"), "A": ("A",), "F": ("F",), "G": ("G",), "K": ("K",),
                   "M": ("M",), "WD": ("WD",)}

# MK subtype as a number: ten per letter, O0 = 0, B0 = 10, A0 = 20, F0 = 30, G0 = 40,
# K0 = 50, M0 = 60 ... M9 = 69.  Decimal subtypes (K7.5) are kept.
SUBTYPE_BASE = {"O": 0, "B": 10, "A": 20, "F": 30, "G": 40, "K": 50, "M": 60}

_WD_TYPES = ("DA", "DB", "DO", "DQ", "DZ", "DC")
_PREFIXES = ("sd", "d", "g")


def spectral_letter(subclass: str):
  """'A1IV' -> 'A', 'dM5' -> 'M', 'WDMagnetic' / 'DA' -> 'WD'; None if not a MK/WD type."""
  s = (subclass or "").strip()
  if s.startswith("WD") or s[:2] in _WD_TYPES:
    return "WD"
  for p in _PREFIXES:
    if s.startswith(p) and len(s) > len(p) and s[len(p)] in SUBTYPE_BASE:
      s = s[len(p):]
      break
  if s and s[0] in SUBTYPE_BASE:
    return s[0]
  return None


def class_index(cls: str, subclass: str, classes=None):
  """Index of a LAMOST CLASS/SUBCLASS in `classes` (default DEFAULT_CLASSES), else None.

  Only CLASS == 'STAR' (or a white-dwarf subclass) is mapped; galaxies, QSOs, 'Unknown',
  and stellar subclasses outside the mapping (Carbon, DoubleStar, CV, ...) give None so
  the caller can report them instead of guessing.
  """
  classes = DEFAULT_CLASSES if classes is None else classes
  letter = spectral_letter(subclass)
  if letter is None or ((cls or "").strip().upper() != "STAR" and letter != "WD"):
    return None
  for i, letters in enumerate(classes.values()):
    if letter in letters:
      return i
  return None


def subtype_number(subclass: str):
  """MK subtype as a number (see SUBTYPE_BASE), e.g. 'G7' -> 47.0, 'dM5' -> 65.0; else None."""
  letter = spectral_letter(subclass)
  if letter is None or letter == "WD":
    return None
  s = subclass.strip()
  s = s[s.index(letter) + 1:]
  digits = ""
  for ch in s:
    if ch.isdigit() or (ch == "." and "." not in digits):
      digits += ch
    else:
      break
  digits = digits.rstrip(".")
  if not digits:
    return None
  return float(SUBTYPE_BASE[letter] + float(digits))
