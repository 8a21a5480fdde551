"""Decoding many spectra into fixed-size arrays for the device (used by the scan).

Runs in worker processes, so it imports no jax.  Each spectrum becomes its S/N
(`spectra.snr`, on its native pixels) and its native pixels that overlap the common grid, as grid-pixel positions `u` (float32, see
`preprocess.spectra.grid_pixels`), flux, ivar and a bad-pixel mask, padded to
`raw_len` with masked pixels whose `u` keeps increasing.  Spectra sampled more finely
than the grid (more than `raw_len` overlapping pixels) are resampled on the host.
"""

import numpy as np

from astrotl import io as aio
from astrotl.preprocess import spectra

RAW_LEN = 3968  # >= NPIX + margin, a multiple of 128
META_KEYS = ("obsid", "designation", "ra", "dec", "class", "subclass", "z", "snr_g",
             "data_release", "survey")


def decode(path, raw_len: int = RAW_LEN):
  """(arrays dict, meta dict) for one file; raises astrotl.io.SpectrumError.

  The file is read with astrotl.io.read, so it has passed the same checks as every
  other read (astrotl.io.check_spectrum: pixel count, wavelength range and log-linear
  grid, plausible step, finite values where unmasked) before it reaches the network.
  """
  return raw_arrays(aio.read(path), raw_len, path)


def raw_arrays(s: aio.Spectrum, raw_len: int = RAW_LEN, path="spectrum"):
  """(arrays dict, meta dict) of a Spectrum already in memory, exactly as `decode` gives
  them for a file (in-memory spectra need not be on a survey's grid)."""
  u = spectra.grid_pixels(np.log10(np.asarray(s.wavelength, np.float64)))
  keep = np.flatnonzero((u >= -2) & (u <= spectra.NPIX + 1))
  if keep.size == 0:
    raise aio.SpectrumError(path, f"wavelength range {s.wavelength[0]:.0f}-{s.wavelength[-1]:.0f} A "
                            "does not overlap the common grid (3700-9100 A)")
  lo, hi = keep[0], keep[-1] + 1
  snr = spectra.snr(s.flux, s.ivar, s.mask, s.wavelength)
  u, flux, ivar, mask = u[lo:hi], s.flux[lo:hi], s.ivar[lo:hi], s.mask[lo:hi]
  if len(u) > raw_len:
    flux, ivar, mask = spectra.resample_pixels(u, flux, ivar, mask)
    u = np.arange(spectra.NPIX, dtype=np.float32)
  n = len(u)
  out = {"u": np.empty(raw_len, np.float32), "flux": np.zeros(raw_len, np.float32),
         "ivar": np.zeros(raw_len, np.float32), "mask": np.ones(raw_len, bool),
         "snr": np.float32(snr)}
  out["u"][:n] = u
  # Padding continues the row's straight line, so a log-linear spectrum stays one line
  # (the device's fast path, see spectra.resample_pixels).
  step = (float(u[-1]) - float(u[0])) / (n - 1) if n > 1 else 1.0
  out["u"][n:] = (float(u[0]) + step * np.arange(n, raw_len, dtype=np.float64)).astype(np.float32)
  out["flux"][:n] = np.nan_to_num(flux)
  out["ivar"][:n] = np.nan_to_num(ivar)
  out["mask"][:n] = mask
  meta = {k: s.meta.get(k) for k in META_KEYS}
  return out, meta


def decode_many(paths, raw_len: int = RAW_LEN, on_file=None):
  """Decodes `paths` in order.  Returns (index of each good file, stacked arrays, metas,
  [(index, path, reason) for each bad file]).  `on_file(i)` is called before file i."""
  good, arrays, metas, errors = [], [], [], []
  for i, path in enumerate(paths):
    if on_file is not None:
      on_file(i)
    try:
      a, m = decode(path, raw_len)
    except aio.SpectrumError as e:
      errors.append((i, str(path), e.reason))
      continue
    except Exception as e:  # a reader bug must cost one file, not the scan
      errors.append((i, str(path), f"unexpected {type(e).__name__}: {e}"))
      continue
    good.append(i)
    arrays.append(a)
    metas.append(m)
  stacked = ({k: np.stack([a[k] for a in arrays]) for k in arrays[0]} if arrays
             else empty(raw_len))
  return good, stacked, metas, errors


def empty(raw_len: int = RAW_LEN) -> dict:
  """Raw arrays of no spectra."""
  out = {k: np.zeros((0, raw_len), bool if k == "mask" else np.float32)
         for k in ("u", "flux", "ivar", "mask")}
  out["snr"] = np.zeros(0, np.float32)
  return out
