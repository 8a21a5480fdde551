"""HST CALSPEC flux standards: FITS tables WAVELENGTH, FLUX, STATERROR, SYSERROR, FWHM, ...

CALSPEC files (Bohlin et al. 2014, 2020) hold one spectrum as a binary table in HDU 1:
WAVELENGTH in Angstrom (heliocentric vacuum), FLUX in erg/s/cm^2/A, STATERROR and SYSERROR
in flux units, FWHM in Angstrom, and in the STIS-era files DATAQUAL (1 = good) and TOTEXP
(seconds; 0 where the file continues an observation with a model).

ivar comes from STATERROR alone.  SYSERROR is the absolute flux-scale uncertainty (about
1% of the flux, correlated over wavelength, Bohlin et al. 2014): it is not pixel noise, and
adding it would cap every pixel's S/N near 100 and hide the real photon noise.
A pixel is bad where FLUX or STATERROR is not finite, STATERROR <= 0, DATAQUAL == 0, or
TOTEXP == 0 (no exposure: a model).  Files without STATERROR (models, derived variants)
raise SpectrumError: they are not observations.  Which wavelength ranges of a file are
observed rather than model is listed in its primary header's "Sources" history; callers
that know it (e.g. from an index) should mask the rest.
"""

import os

import numpy as np
from astropy.io import fits

from astrotl.io import Spectrum, SpectrumError


def read(path) -> Spectrum:
  """Reads one CALSPEC FITS table; raises SpectrumError naming the file for bad input."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise SpectrumError(path, "no such file")
  try:
    with fits.open(path, memmap=False) as hdus:
      if len(hdus) < 2 or not isinstance(hdus[1], fits.BinTableHDU) or hdus[1].data is None:
        raise SpectrumError(path, "no binary table in HDU 1 -- not a CALSPEC file")
      header = hdus[0].header
      data = hdus[1].data
      cols = {c.upper(): c for c in hdus[1].columns.names}
      for need in ("WAVELENGTH", "FLUX", "STATERROR"):
        if need not in cols:
          raise SpectrumError(path, f"table has no {need} column (a model or derived file?)")
      col = lambda k: np.asarray(data[cols[k]], np.float64)
      wave, flux, err = col("WAVELENGTH"), col("FLUX"), col("STATERROR")
      bad = ~np.isfinite(flux) | ~np.isfinite(err) | ~(err > 0)
      if "DATAQUAL" in cols:
        bad |= np.asarray(data[cols["DATAQUAL"]]) == 0
      if "TOTEXP" in cols:
        bad |= ~(col("TOTEXP") > 0)
      target = header.get("TARGETID")
  except SpectrumError:
    raise
  except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError) as e:
    raise SpectrumError(path, f"not a readable CALSPEC table ({type(e).__name__}: {e})") from e
  if wave.size == 0 or not np.all(np.isfinite(wave)) or np.any(np.diff(wave) <= 0):
    raise SpectrumError(path, "WAVELENGTH is empty, not finite or not strictly increasing")
  if bad.all():
    raise SpectrumError(path, "no good pixel (STATERROR, DATAQUAL, TOTEXP)")
  ivar = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, err) ** 2)
  # Fluxes near 1e-14 give ivar near 1e30, beyond float32's range: scale to 1e-17 units.
  scale = 1e-17
  meta = {"survey": "CALSPEC", "obsid": None, "designation": target, "ra": None,
          "dec": None, "class": None, "subclass": None, "z": None, "snr_g": None,
          "data_release": None, "file": os.path.basename(path), "flux_unit": "1e-17 erg/s/cm2/A"}
  return Spectrum(wavelength=wave, flux=np.where(bad, 0.0, flux / scale).astype(np.float32),
                  ivar=(ivar * scale ** 2).astype(np.float32), mask=bad, meta=meta)
