"""Readers: one module per file format, each returning plain numpy plus a header dict.

Every reader raises `SpectrumError` (one exception type) for bad input; its message
names the file and the reason, never a bare astropy/numpy traceback.
"""

import dataclasses
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


def read(path) -> Spectrum:
  """Reads a LAMOST LRS or SDSS/BOSS spectrum, choosing the reader from the file name
  (SDSS: spec-PLATE-MJD-FIBER) and falling back to LAMOST."""
  import os
  import re
  name = os.path.basename(os.fspath(path))
  if re.match(r"spec-\d{4,5}-\d{5}-\d{4}\.fits", name):
    from astrotl.io import sdss
    return sdss.read(path)
  from astrotl.io import lamost
  return lamost.read(path)
