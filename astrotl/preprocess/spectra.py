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
