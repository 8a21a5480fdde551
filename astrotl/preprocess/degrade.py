"""Spectra made LAMOST-like: real high-S/N spectra, model spectra, and noisier real LAMOST ones.

One place for the degradation, so that simulated white dwarfs, real training stars and the
real validation spectra (HST CALSPEC, SDSS) go through exactly the same steps:

- `to_grid`: a native spectrum (vacuum wavelengths) onto the common grid
  (`spectra.loglam_grid`, 3700-9100 A), pixels outside the observed ranges masked.  A
  spectrum sharper than LAMOST (R > 1800, e.g. SDSS/BOSS, R ~ 2000) is convolved to
  R = 1800.  A coarser one cannot be sharpened and keeps its resolution: CALSPEC STIS
  (FWHM 5.5 A below 5450 A, 9.8 A above: R ~ 700-900) and Oke (7 / 13 A) lines are 2-4x
  broader than LAMOST's.  That barely changes a white dwarf's Balmer lines (tens of A
  wide) but smears the narrow lines of A stars, O/B stars and subdwarfs.
- `response_curves`: random smooth instrument responses (below).
- `lamost_like`: response x flux, then Gaussian noise with the shape of a real LAMOST ivar
  pattern at the requested S/N (`simulate.add_noise`: median flux / sigma over the good
  pixels of 4000-5500 A, like LAMOST's snr_g).  Noise the input already has is counted:
  only the missing variance is added.
- `degrade`: a real LAMOST spectrum at a lower S/N, with extra noise of its own ivar shape.
- `blur`: spectra on the grid at a lower resolving power.
- `cut_lines`, `tilt`: the white-dwarf model's physics checks (a DA without its Balmer
  lines; a DA under a bad flux calibration).

The response.  LAMOST LRS fluxes are only relatively calibrated, and its stars are
reddened; both multiply a spectrum by a smooth curve.  `response="empirical"` draws
exp(sum_k c_k P_k(x)), Legendre P_1..P_5 over the grid (x in [-1, 1]), c ~ N(mean, cov)
measured by `experiments/lamost_response.py`: for each real LAMOST star, the smooth
(degree-5, line-free) ratio of its spectrum to HST CALSPEC spectra of the same MK type
(same letter, within one subtype), averaged over those templates; cov is that ratio's
covariance minus the covariance of the same ratio between CALSPEC stars of matching
type (the part due to imperfectly matched types, not to LAMOST).  Between 4000 and 8500 A
these curves tilt a spectrum by exp(+-0.37) (1 sigma), about twice the simulator's default
Legendre response (sigma 0.1 on P_1..P_3: +-0.17); most of it is blueward of 5000 A.
The curves include the reddening of the LAMOST comparison stars (disc stars, many at low
latitude), more than nearby white dwarfs have.  `response=<float>` is the simulator's
model with that sigma; None, no response.

Not modelled: LAMOST's own line spread (coarser inputs keep theirs), sky-line residuals,
cosmic rays, the dichroic join at 5700-5900 A beyond what an ivar template masks, and the
correlation of the noise that convolution gives an already noisy input.
"""

import numpy as np
import scipy.special

from astrotl.preprocess import simulate, spectra

LAMOST_R = simulate.LAMOST_R

# Measured by experiments/lamost_response.py (results in experiments/results/lamost_response/):
# coefficients of P_1..P_5 of the log response.
EMPIRICAL_MEAN = np.array([0.0202, -0.0339, 0.0100, -0.0190, 0.0111])
EMPIRICAL_COV = np.array([
    [0.04808, -0.01254, 0.00389, -0.00146, 0.00140],
    [-0.01254, 0.00715, -0.00399, 0.00223, -0.00109],
    [0.00389, -0.00399, 0.00393, -0.00191, 0.00056],
    [-0.00146, 0.00223, -0.00191, 0.00190, -0.00061],
    [0.00140, -0.00109, 0.00056, -0.00061, 0.00100]])
_FWHM_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def to_grid(wave, flux, ivar=None, mask=None, observed=None, resolution=None,
            npix: int = spectra.NPIX):
  """One native spectrum -> (flux, ivar, mask) on the common grid, (npix,) each.

  wave: vacuum Angstrom, increasing.  ivar: None for a noise-free model (then the returned
  ivar is None).  observed: sequence of (low, high) A ranges that were observed; the rest
  is masked.  resolution: the input's resolving power; above LAMOST_R the spectrum is
  convolved to LAMOST_R, otherwise (or None) it is left as it is.
  """
  wave = np.asarray(wave, np.float64)
  flux = np.asarray(flux, np.float64)
  if wave.ndim != 1 or wave.shape != flux.shape:
    raise ValueError(f"wave {wave.shape} and flux {flux.shape} must be matching 1-D arrays")
  if np.any(~np.isfinite(wave)) or np.any(np.diff(wave) <= 0):
    raise ValueError("wave must be finite and strictly increasing")
  noisy = ivar is not None
  ivar = np.ones_like(flux) if ivar is None else np.asarray(ivar, np.float64)
  bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | ~(ivar > 0)
  if mask is not None:
    bad |= np.asarray(mask, bool)
  if observed is not None:
    inside = np.zeros(wave.shape, bool)
    for lo, hi in observed:
      inside |= (wave >= lo) & (wave <= hi)
    bad |= ~inside
  loglam = np.log10(wave)
  if resolution is not None and resolution > LAMOST_R:
    flux, ivar, bad = _convolve(loglam, flux, ivar, bad, resolution, LAMOST_R)
  f, v, m = spectra.resample(loglam, flux, ivar, bad, npix)
  return f, (v if noisy else None), m


def blur(flux, ivar, mask, resolution, source=LAMOST_R):
  """Spectra on the common grid (n, npix) at a lower resolving power `resolution` ((n,) or
  scalar, each <= source): as coarse as CALSPEC (R ~ 700-900) where asked, so that a
  training set cannot tell its sources apart by resolution.  Returns (flux, ivar, mask)."""
  flux, ivar, mask = (np.atleast_2d(np.asarray(a)) for a in (flux, ivar, mask))
  resolution = np.broadcast_to(np.asarray(resolution, np.float64), (len(flux),))
  loglam = spectra.loglam_grid(flux.shape[-1])
  out = [np.array(a, dtype) for a, dtype in ((flux, np.float32), (ivar, np.float32), (mask, bool))]
  for i, r in enumerate(resolution):
    if r < source:
      f, v, b = _convolve(loglam, flux[i].astype(np.float64), ivar[i].astype(np.float64),
                          mask[i] | ~(ivar[i] > 0), source, r)
      out[0][i], out[1][i], out[2][i] = f, v, b
  return tuple(out)


def _convolve(loglam, flux, ivar, bad, resolution, target):
  """Gaussian convolution in log wavelength from `resolution` to `target`, over good pixels
  only (normalised), with the variance propagated; a pixel with less than half of its
  kernel weight on good pixels becomes bad.

  The kernel is the discrete Gaussian exp(-t) I_k(t) (Lindeberg 1990), t = (sigma / local
  pixel width)^2: its variance is exactly t even when sigma is below a pixel (R 2000 -> 1800
  is 0.45 SDSS pixels), where a sampled Gaussian would smooth too little.
  """
  sigma = np.sqrt(1.0 / target ** 2 - 1.0 / resolution ** 2) / _FWHM_SIGMA / np.log(10.0)
  step = np.gradient(loglam)
  t = (sigma / step) ** 2
  reach = int(np.ceil(5 * np.sqrt(t.max()) + 2))
  n = loglam.size
  good = (~bad).astype(np.float64)
  f = np.where(bad, 0.0, flux)
  var = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, ivar))
  num, wsum, vsum, wall = (np.zeros(n) for _ in range(4))
  for k in range(-reach, reach + 1):
    lo, hi = max(0, -k), min(n, n - k)  # pixel i takes neighbour i + k
    w = scipy.special.ive(abs(k), t[lo:hi])
    g = good[lo + k:hi + k]
    num[lo:hi] += w * g * f[lo + k:hi + k]
    wsum[lo:hi] += w * g
    vsum[lo:hi] += (w * g) ** 2 * var[lo + k:hi + k]
    wall[lo:hi] += w
  bad = bad | (wsum < 0.5 * wall)
  safe = np.where(bad, 1.0, wsum)
  out = np.where(bad, 0.0, num / safe)
  ivar = np.where(bad, 0.0, safe ** 2 / np.where(bad, 1.0, vsum))
  return out, ivar, bad


def response_curves(rng, n: int, kind="empirical", npix: int = spectra.NPIX) -> np.ndarray:
  """n random response curves (n, npix): kind "empirical", a float (the simulator's
  Legendre sigma), None (all ones), or fixed curves (npix,) / (n, npix) to use as they are."""
  if kind is None:
    return np.ones((n, npix))
  if isinstance(kind, str):
    if kind != "empirical":
      raise ValueError(f"unknown response {kind!r}: 'empirical', a float sigma, None or curves")
    coeffs = rng.multivariate_normal(EMPIRICAL_MEAN, EMPIRICAL_COV, n)
    return np.exp(coeffs @ simulate.legendre_basis(npix, EMPIRICAL_MEAN.size).T)
  if np.ndim(kind) == 0:
    return simulate.legendre_response(rng, n, float(kind), npix)
  return np.broadcast_to(np.asarray(kind, np.float64), (n, npix))


def lamost_like(wave, flux, rng, snr, ivar_template, mask=None, ivar=None,
                response="empirical", observed=None, resolution=None):
  """LAMOST-like spectra at S/N `snr` (scalar or (n,): one noisy draw per value).

  wave None: `flux` (npix,) or (n, npix) is already on the common grid (e.g. a model from
  `simulate.Simulator.model`, or `to_grid`'s output).  Otherwise (wave, flux, ivar, mask)
  is one native spectrum, put on the grid by `to_grid(..., observed, resolution)` first.
  ivar: the noise the input already has (None = noise-free); a requested S/N above the
  input's own (`spectra.snr`) raises ValueError.  ivar_template: LAMOST ivar
  pattern(s) on the grid, (npix,) or (n, npix).  response: see `response_curves`.
  Returns (flux, ivar, mask), each (n, npix): float32, float32, bool (True = bad).
  """
  rng = np.random.default_rng(rng)
  if wave is not None:
    flux, ivar, mask = to_grid(wave, flux, ivar, mask, observed, resolution)
  flux = np.atleast_2d(np.asarray(flux, np.float64))
  snr = np.atleast_1d(np.asarray(snr, np.float64))
  n = max(flux.shape[0], snr.size)
  npix = flux.shape[-1]
  if flux.shape[0] not in (1, n) or snr.size not in (1, n):
    raise ValueError(f"flux {flux.shape} and snr {snr.shape} do not broadcast")
  if np.any(~np.isfinite(snr) | (snr <= 0)):
    raise ValueError("snr must be finite and > 0")
  flux, snr = np.broadcast_to(flux, (n, npix)), np.broadcast_to(snr, (n,))
  mask = None if mask is None else np.broadcast_to(np.asarray(mask, bool), (n, npix))
  present = None
  if ivar is not None:
    ivar = np.broadcast_to(np.asarray(ivar, np.float64), (n, npix))
    native = spectra.snr(flux, ivar, mask)
    if np.any(~(native >= snr)):
      raise ValueError(f"requested S/N {snr.max():g} exceeds the input's own "
                       f"({np.nanmin(native):.1f}); such draws cannot be made")
  curves = response_curves(rng, n, response, npix)
  if ivar is not None:
    present = ivar / curves ** 2
  return simulate.add_noise(flux * curves, snr, rng, ivar_template, mask, ivar_present=present)


def degrade(flux, ivar, mask, snr, rng, wavelength=None):
  """Real spectra (n, m) at a lower S/N: noise with each one's own ivar shape is added so
  that the total noise gives S/N `snr` ((n,) or scalar; as `simulate.add_noise` defines it,
  measured on the spectrum itself).  Works on any pixels: `wavelength` (m,) or (n, m) in
  A, default the common grid (e.g. raw scan arrays: 10 ** (LOGLAM0 + DLOGLAM * u)).

  Returns (flux, ivar, mask, degraded): rows whose own S/N is not above `snr` are returned
  as they are, with degraded False.
  """
  rng = np.random.default_rng(rng)
  flux = np.atleast_2d(np.asarray(flux, np.float64))
  n, m = flux.shape
  ivar = np.broadcast_to(np.asarray(ivar, np.float64), (n, m))
  mask = np.zeros((n, m), bool) if mask is None else np.broadcast_to(np.asarray(mask, bool),
                                                                       (n, m))
  snr = np.broadcast_to(np.asarray(snr, np.float64), (n,))
  wavelength = spectra.wavelength_grid(m) if wavelength is None else wavelength
  native = spectra.snr(flux, ivar, mask, wavelength)
  degraded = native > snr
  out_m = mask | ~np.isfinite(flux) | ~(ivar > 0)
  out_f = np.where(out_m, 0.0, flux).astype(np.float32)
  out_v = np.where(out_m, 0.0, ivar).astype(np.float32)
  if degraded.any():
    rows = np.flatnonzero(degraded)
    wave_rows = wavelength if np.ndim(wavelength) == 1 else np.asarray(wavelength)[rows]
    f, v, b = simulate.add_noise(flux[rows], snr[rows], rng, ivar[rows], mask[rows],
                                 wave_rows, ivar_present=ivar[rows])
    out_f[rows], out_v[rows], out_m[rows] = f, v, b
  return out_f, out_v, out_m, degraded


# --- physics checks: what a white-dwarf classifier must and must not rely on ---------------

# Balmer lines (vacuum A) and half-widths wide enough for a white dwarf's wings.
BALMER_WINDOWS = ((6564.6, 150.0), (4862.7, 150.0), (4341.7, 120.0), (4102.9, 90.0),
                  (3971.2, 60.0), (3890.2, 35.0))


def cut_lines(wavelength, flux, windows=BALMER_WINDOWS, ivar=None):
  """Spectra with every window (centre, half-width) replaced by the straight line between
  its edges: a white dwarf without its lines.  Overlapping windows merge.  wavelength
  (npix,) in A; flux (npix,) or (n, npix).  Returns float64 flux (and ivar unchanged)."""
  wave = np.asarray(wavelength, np.float64)
  out = np.array(flux, np.float64, ndmin=2)
  spans = sorted((c - h, c + h) for c, h in windows)
  merged = []
  for lo, hi in spans:
    if merged and lo <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], hi)
    else:
      merged.append([lo, hi])
  for lo, hi in merged:
    inside = np.flatnonzero((wave >= lo) & (wave <= hi))
    if not inside.size:
      continue
    a, b = max(inside[0] - 1, 0), min(inside[-1] + 1, wave.size - 1)
    t = (wave[inside] - wave[a]) / max(wave[b] - wave[a], 1e-9)
    out[:, inside] = out[:, a, None] + (out[:, b, None] - out[:, a, None]) * t
  out = out.reshape(np.shape(flux))
  return out if ivar is None else (out, ivar)


def tilt(wavelength, alpha, pivot=5500.0):
  """Multiplicative curves (lambda / pivot)^alpha: (npix,) or (n, npix) for (n,) alpha.
  A power-law tilt stands for a bad flux calibration or reddening."""
  wave = np.asarray(wavelength, np.float64)
  return (wave / pivot) ** np.asarray(alpha, np.float64)[..., None]
