"""Simulated LAMOST-like DA white-dwarf spectra from a model-atmosphere grid.

The survey sample has no real LAMOST white dwarfs, so the white-dwarf class is built from
models.  Steps, for each spectrum:

1. interpolate the bundled Warwick 3D DA grid (Teff 1500-140000 K, log g 7-9) bilinearly
   in (log Teff, log g), on log flux;
2. convert the models' F_nu to F_lambda and their air wavelengths to vacuum (LAMOST and
   SDSS are vacuum), and shift by a radial velocity;
3. convolve with a Gaussian in log wavelength of FWHM 1/R (R = 1800 for LAMOST LRS) and
   sample the common grid (`spectra.loglam_grid`);
4. multiply by a smooth random instrument response exp(sum_k c_k P_k(x)), Legendre
   P_1..P_3 over the grid, c_k ~ N(0, response_sigma); with the default 0.1 the response
   typically tilts the spectrum by +-20% end to end, like a flux-calibration error or a
   little reddening;
5. scale to a flux level (median of the white dwarf alone);
6. optionally add a real companion spectrum (e.g. an M dwarf) scaled so that
   median(companion) / median(white dwarf) = companion_ratio;
7. add Gaussian noise.  `snr` is the median of flux / sigma over good pixels of the g band
   (4000-5500 A), like LAMOST's snr_g.  The noise shape across wavelength comes from a
   real ivar array when one is given (sigma proportional to 1 / sqrt(ivar); its zero
   pixels become masked), otherwise from photon noise (sigma proportional to sqrt(flux)).

Output pixels follow `spectra.resample`: flux and ivar float32, mask True = bad, and bad
pixels carry flux 0 and ivar 0.

Limits: the bundled grid is pure hydrogen (DA); a Koester DB grid read with
`wd_models.read_koester_grid` gives pure-helium DBs (and DO-like hot ones) the same way.
No DQ, DZ or magnetic white dwarfs; cool models of either grid are line-less (DC-like); no interstellar
reddening law (the response tilt stands in for it); the response is a crude
low-order smooth function, not a model of LAMOST's fibre-to-fibre calibration; noise
is Gaussian and independent per pixel, with no sky-line residuals, cosmic rays or
the 5700-5900 A dichroic join beyond what an ivar template masks; a template's ivar shape
belongs to the star it came from; the companion's own noise is scaled along with it.
"""

import functools
import importlib.resources
import pathlib

import numpy as np
import scipy.ndimage

from astrotl.io import wd_models
from astrotl.preprocess import spectra

C_KMS = 299792.458
LAMOST_R = 1800.0
BUNDLED = "warwick_da_3000_10000.npz"
# Fine grid for convolution and RV shifts: 4 samples per common-grid pixel.
_OVERSAMPLE = 4
_MARGIN = 0.005  # dex each side: 3400 km/s of shift plus the kernel's wings
_MAX_RV = 2000.0
_CHUNK = 512


def air_to_vacuum(wave_air):
  """Vacuum wavelength (A) for air wavelength(s) (A), by inverting the IAU air index.

  The refractive index (Morton 2000, after Ciddor 1996) is written in terms of the
  vacuum wavenumber, so a few fixed-point steps invert it to 1e-6 A.
  """
  wave_air = np.asarray(wave_air, np.float64)
  wave = wave_air.copy()
  for _ in range(4):
    s2 = (1e4 / wave) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    wave = wave_air * n
  return wave


def load_grid(source=None):
  """Model grid as dict(wavelength (air, A), teff, logg, flux (G, T, N)).

  source: None for the bundled npz; a path to an npz of that layout; a directory of
  Koester/Warwick text files (see `astrotl.io.wd_models`); or a grid dict as those give
  (`wd_models.read_koester_grid`: vacuum F_lambda, flagged `vacuum` and `flambda`).
  """
  if isinstance(source, dict):
    return source
  if source is None:
    ref = importlib.resources.files("astrotl") / "data" / "wd_models" / BUNDLED
    with importlib.resources.as_file(ref) as path:
      return _load_npz(path)
  source = pathlib.Path(source)
  if source.is_dir():
    return wd_models.read_grid(source)
  return _load_npz(source)


def _load_npz(path):
  with np.load(path) as d:
    missing = {"wavelength", "teff", "logg", "flux"} - set(d.files)
    if missing:
      raise ValueError(f"{path}: model grid lacks arrays {sorted(missing)}")
    grid = {k: d[k] for k in ("wavelength", "teff", "logg", "flux")}
  want = (grid["logg"].size, grid["teff"].size, grid["wavelength"].size)
  if grid["flux"].shape != want:
    raise ValueError(f"{path}: flux shape {grid['flux'].shape}, expected {want}")
  return grid


class Simulator:
  """DA white-dwarf spectra on the common grid (see the module docstring)."""

  def __init__(self, models_dir=None, resolution: float = LAMOST_R, npix: int = spectra.NPIX):
    grid = load_grid(models_dir)
    self.teff_nodes = np.asarray(grid["teff"], np.float64)
    self.logg_nodes = np.asarray(grid["logg"], np.float64)
    self.resolution = float(resolution)
    self.loglam = spectra.loglam_grid(npix)
    self.wavelength = 10.0 ** self.loglam
    self._step = spectra.DLOGLAM / _OVERSAMPLE
    self._fine0 = self.loglam[0] - _MARGIN
    nfine = int(round((self.loglam[-1] - self.loglam[0] + 2 * _MARGIN) / self._step)) + 1
    fine = self._fine0 + self._step * np.arange(nfine)
    wave = np.asarray(grid["wavelength"], np.float64)
    model_loglam = np.log10(wave if grid.get("vacuum") else air_to_vacuum(wave))
    if model_loglam[0] > fine[0] or model_loglam[-1] < fine[-1]:
      raise ValueError(f"model grid {grid['wavelength'][0]:.0f}-{grid['wavelength'][-1]:.0f} A "
                       "does not cover the common grid plus RV margin")
    flux = grid["flux"].reshape(-1, model_loglam.size).astype(np.float64)
    if not np.all(np.isfinite(flux)) or np.any(flux <= 0):
      raise ValueError("model fluxes must be finite and positive")
    if not grid.get("flambda"):
      # The Warwick files hold flux per unit frequency; surveys give F_lambda.
      flux = flux / (10.0 ** model_loglam) ** 2
    fine_flux = np.stack([np.interp(fine, model_loglam, f) for f in flux])
    sigma = 1.0 / (self.resolution * 2 * np.sqrt(2 * np.log(2)) * np.log(10)) / self._step
    fine_flux = scipy.ndimage.gaussian_filter1d(fine_flux, sigma, axis=-1, mode="nearest",
                                                truncate=5.0)
    # Each node scaled to median 1 on the common grid, so interpolation blends shapes and
    # not the T^4 brightness; the absolute level is set later by flux_level.
    inside = slice(int(round(_MARGIN / self._step)), nfine - int(round(_MARGIN / self._step)))
    fine_flux /= np.median(fine_flux[:, inside], axis=-1, keepdims=True)
    shape = (self.logg_nodes.size, self.teff_nodes.size, nfine)
    self._log_flux = np.log(fine_flux).reshape(shape).astype(np.float32)

  @property
  def teff_range(self):
    return float(self.teff_nodes[0]), float(self.teff_nodes[-1])

  @property
  def logg_range(self):
    return float(self.logg_nodes[0]), float(self.logg_nodes[-1])

  # --- noise-free models ------------------------------------------------------------------

  def model(self, teff, logg, rv=0.0):
    """Noise-free convolved model(s) on the grid, median about 1, no response.

    teff, logg, rv (km/s) broadcast to (n,); returns (n, npix) float64, or (npix,) when
    all three are scalars.
    """
    scalar = np.ndim(teff) == np.ndim(logg) == np.ndim(rv) == 0
    teff, logg, rv = (np.atleast_1d(np.asarray(a, np.float64)) for a in (teff, logg, rv))
    teff, logg, rv = np.broadcast_arrays(teff, logg, rv)
    self._check_params(teff, logg, rv)
    out = np.concatenate([self._model_chunk(teff[i:i + _CHUNK], logg[i:i + _CHUNK],
                                            rv[i:i + _CHUNK])
                          for i in range(0, teff.size, _CHUNK)])
    return out[0] if scalar else out

  def _check_params(self, teff, logg, rv):
    lo, hi = self.teff_range
    if np.any(~np.isfinite(teff) | (teff < lo) | (teff > hi)):
      raise ValueError(f"teff must lie in the model grid's [{lo:g}, {hi:g}] K")
    lo, hi = self.logg_range
    if np.any(~np.isfinite(logg) | (logg < lo) | (logg > hi)):
      raise ValueError(f"logg must lie in the model grid's [{lo:g}, {hi:g}]")
    if np.any(~np.isfinite(rv) | (np.abs(rv) > _MAX_RV)):
      raise ValueError(f"|rv| must be <= {_MAX_RV:g} km/s")

  def _model_chunk(self, teff, logg, rv):
    it, wt = _bracket(np.log10(self.teff_nodes), np.log10(teff))
    ig, wg = _bracket(self.logg_nodes, logg)
    shift = np.log10(1.0 + rv / C_KMS)
    pos = (self.loglam[None, :] - shift[:, None] - self._fine0) / self._step
    j = np.floor(pos).astype(np.int64)
    u = pos - j
    flat = self._log_flux.reshape(-1, self._log_flux.shape[-1])
    log_flux = np.zeros(pos.shape)
    for dg, dt in ((0, 0), (0, 1), (1, 0), (1, 1)):
      w = (wg if dg else 1 - wg) * (wt if dt else 1 - wt)
      row = ((ig + dg) * self.teff_nodes.size + it + dt)[:, None]
      log_flux += w[:, None] * ((1 - u) * flat[row, j] + u * flat[row, j + 1])
    return np.exp(log_flux)

  # --- noisy spectra ----------------------------------------------------------------------

  def batch(self, teff, logg, snr, rng, ivar_template=None, companion=None,
            companion_ratio=0.0, rv=0.0, companion_mask=None, flux_level=100.0,
            response_sigma=0.1):
    """Noisy spectra for given parameters, each broadcast to (n,).

    ivar_template, companion, companion_mask: (npix,) or (n, npix) arrays on the grid.
    rng: numpy Generator or seed.  Returns a dict of (n, npix) arrays flux, ivar, mask,
    model (noise-free total flux), response, and the (n,) parameters used.
    """
    rng = np.random.default_rng(rng)
    teff, logg, snr, rv, ratio, level = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, np.float64))
          for a in (teff, logg, snr, rv, companion_ratio, flux_level)))
    n, npix = teff.size, self.loglam.size
    if np.any(~np.isfinite(snr) | (snr <= 0)):
      raise ValueError("snr must be finite and > 0")
    if np.any(~np.isfinite(level) | (level <= 0)):
      raise ValueError("flux_level must be finite and > 0")
    if np.any(~np.isfinite(ratio) | (ratio < 0)):
      raise ValueError("companion_ratio must be finite and >= 0")
    if np.any(ratio > 0) and companion is None:
      raise ValueError("companion_ratio > 0 needs a companion spectrum")

    wd = self.model(teff, logg, rv).reshape(n, npix)
    response = legendre_response(rng, n, response_sigma, npix)
    wd = wd * response
    wd *= (level / np.median(wd, axis=-1))[:, None]
    mask = np.zeros((n, npix), bool)
    total = wd
    if companion is not None:
      comp, cmask = _companion(companion, companion_mask, n, npix)
      with_comp = ratio > 0
      mask |= cmask & with_comp[:, None]
      med = np.array([np.median(c[~m]) if np.any(~m) else np.nan for c, m in zip(comp, cmask)])
      if np.any(with_comp & ~(med > 0)):
        raise ValueError("companion spectra need a positive median flux over good pixels")
      scale = np.where(with_comp, ratio * np.median(wd, axis=-1) / np.where(med > 0, med, 1), 0)
      total = wd + scale[:, None] * comp

    flux, ivar, mask = add_noise(total, snr, rng, ivar_template, mask, self.wavelength)
    return {
        "flux": flux,
        "ivar": ivar,
        "mask": mask,
        "model": total.astype(np.float32),
        "response": response.astype(np.float32),
        "teff": teff, "logg": logg, "snr": snr, "rv": rv,
        "companion_ratio": ratio, "flux_level": level,
    }

  def spectrum(self, teff, logg, snr, rng, ivar_template=None, companion=None,
               companion_ratio=0.0, rv=0.0, companion_mask=None, flux_level=100.0,
               response_sigma=0.1):
    """One noisy spectrum -> (flux, ivar, mask), each (npix,)."""
    out = self.batch(teff, logg, snr, rng, rv=rv, ivar_template=ivar_template,
                     companion=companion, companion_mask=companion_mask,
                     companion_ratio=companion_ratio, flux_level=flux_level,
                     response_sigma=response_sigma)
    if out["flux"].shape[0] != 1:
      raise ValueError("spectrum() takes scalar parameters; use batch() for arrays")
    return out["flux"][0], out["ivar"][0], out["mask"][0]

  def sample(self, n, rng, teff_range=(6000.0, 40000.0), logg_range=(7.0, 9.0),
             snr_range=(5.0, 50.0), rv_range=(-100.0, 100.0), ivar_templates=None,
             companions=None, companion_masks=None, companion_fraction=0.0,
             companion_ratio_range=(0.1, 3.0), flux_level_range=(10.0, 1000.0),
             response_sigma=0.1):
    """n random spectra.

    Teff, S/N, flux level and companion ratio are drawn log-uniform, log g and rv uniform.
    Each spectrum takes a random row of `ivar_templates` (k, npix) when given, and with
    probability `companion_fraction` a random row of `companions` (m, npix).  Returns
    `batch`'s dict plus template_index and companion_index (-1 for none).
    """
    rng = np.random.default_rng(rng)
    if n < 1:
      raise ValueError("n must be >= 1")
    teff = _log_uniform(rng, teff_range, n)
    logg = rng.uniform(*logg_range, n)
    snr = _log_uniform(rng, snr_range, n)
    rv = rng.uniform(*rv_range, n)
    level = _log_uniform(rng, flux_level_range, n)
    tmpl_index = np.full(n, -1)
    if ivar_templates is not None:
      ivar_templates = np.atleast_2d(np.asarray(ivar_templates, np.float32))
      tmpl_index = rng.integers(0, ivar_templates.shape[0], n)
    comp_index = np.full(n, -1)
    ratio = np.zeros(n)
    if companion_fraction > 0:
      if companions is None:
        raise ValueError("companion_fraction > 0 needs companions")
      companions = np.atleast_2d(np.asarray(companions, np.float32))
      has = rng.random(n) < companion_fraction
      comp_index = np.where(has, rng.integers(0, companions.shape[0], n), -1)
      ratio = np.where(has, _log_uniform(rng, companion_ratio_range, n), 0.0)
      if companion_masks is not None:
        companion_masks = np.atleast_2d(np.asarray(companion_masks, bool))
    chunks = []
    for i in range(0, n, _CHUNK):
      s = slice(i, i + _CHUNK)
      tmpl = None if ivar_templates is None else ivar_templates[tmpl_index[s]]
      comp = cmask = None
      if companion_fraction > 0:
        idx = np.maximum(comp_index[s], 0)
        comp = companions[idx]
        cmask = None if companion_masks is None else companion_masks[idx]
      chunks.append(self.batch(teff[s], logg[s], snr[s], rng, rv=rv[s], ivar_template=tmpl,
                               companion=comp, companion_mask=cmask,
                               companion_ratio=ratio[s], flux_level=level[s],
                               response_sigma=response_sigma))
    out = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    out["template_index"] = tmpl_index
    out["companion_index"] = comp_index
    return out


# --- featureless continua ---------------------------------------------------------------

HC_OVER_K = 1.4387769e8  # h c / k in A K


def blackbody(teff, wavelength=None):
  """Planck F_lambda at temperature(s) `teff` (K, scalar or (n,)) on `wavelength` (A,
  default the common grid), each scaled to median 1: (npix,) or (n, npix) float64."""
  wave = spectra.wavelength_grid() if wavelength is None else np.asarray(wavelength, np.float64)
  t = np.asarray(teff, np.float64)
  x = np.minimum(HC_OVER_K / (wave * t[..., None]), 700.0)  # exp overflows past ~709
  f = (wave / 5500.0) ** -5 / np.expm1(x)
  return f / np.median(f, axis=-1, keepdims=True)


# --- response and noise (shared with astrotl.preprocess.degrade) ---------------------------

@functools.lru_cache(maxsize=8)
def legendre_basis(npix: int = spectra.NPIX, degree: int = 3) -> np.ndarray:
  """Legendre P_1..P_degree over x in [-1, 1] across the grid, (npix, degree); read-only."""
  basis = np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, npix), degree)[:, 1:]
  basis.flags.writeable = False
  return basis


def legendre_response(rng, n: int, sigma: float = 0.1, npix: int = spectra.NPIX) -> np.ndarray:
  """n random smooth responses exp(sum_k c_k P_k(x)), k = 1..3, c_k ~ N(0, sigma); (n, npix)."""
  coeffs = rng.normal(0.0, sigma, (n, 3))
  return np.exp(coeffs @ legendre_basis(npix, 3).T)


def add_noise(total, snr, rng, ivar_template=None, mask=None, wavelength=None,
              ivar_present=None):
  """Gaussian noise at S/N `snr` on spectra `total` (n, npix).

  sigma follows 1/sqrt(ivar_template) ((npix,) or (n, npix); its ivar <= 0 pixels become
  masked), else photon noise sqrt(total), scaled so that the median of total / sigma over
  the good pixels of spectra.SNR_BAND is `snr` (n,).  wavelength: (npix,) or (n, npix) in A,
  default the common grid.  ivar_present: the noise `total` already carries (a real
  spectrum); then only the missing variance sigma^2 - 1/ivar_present is added (none where
  the pixel is already noisier) and the returned ivar is min(1/sigma^2, ivar_present).
  Returns (flux, ivar, mask): float32, float32, bool, bad pixels with flux 0 and ivar 0.
  """
  total = np.asarray(total, np.float64)
  n, npix = total.shape
  snr = np.broadcast_to(np.asarray(snr, np.float64), (n,))
  wavelength = spectra.wavelength_grid(npix) if wavelength is None else wavelength
  mask = np.zeros((n, npix), bool) if mask is None else np.array(
      np.broadcast_to(mask, (n, npix)), bool)
  shape = _noise_shape(total, ivar_template, n, npix)
  mask |= ~np.isfinite(shape)
  shape = np.where(mask, np.nan, shape)
  band = spectra.snr_band(wavelength)
  sigma = shape * (spectra.band_median(total / shape, band, mask) / snr)[:, None]
  if ivar_present is None:
    noisy = total + sigma * rng.standard_normal((n, npix))
  else:
    present = np.broadcast_to(np.asarray(ivar_present, np.float64), (n, npix))
    mask |= ~(present > 0)
    var_present = 1.0 / np.where(mask, 1.0, present)
    noisy = total + np.sqrt(np.maximum(sigma ** 2 - var_present, 0.0)) * rng.standard_normal(
        (n, npix))
    sigma = np.sqrt(np.maximum(sigma ** 2, var_present))
  ivar = np.where(mask, 0.0, 1.0 / np.where(mask, 1.0, sigma) ** 2)
  return np.where(mask, 0.0, noisy).astype(np.float32), ivar.astype(np.float32), mask


def _noise_shape(total, ivar_template, n, npix):
  """Relative sigma per pixel; NaN where the pixel is unusable."""
  if ivar_template is None:
    floor = 1e-3 * np.median(total, axis=-1, keepdims=True)
    return np.sqrt(np.maximum(total, floor))
  tmpl = np.asarray(ivar_template, np.float64)
  if tmpl.shape[-1] != npix or tmpl.ndim > 2 or (tmpl.ndim == 2 and tmpl.shape[0] not in (1, n)):
    raise ValueError(f"ivar_template shape {tmpl.shape} does not fit ({n}, {npix})")
  tmpl = np.broadcast_to(tmpl, (n, npix))
  good = np.isfinite(tmpl) & (tmpl > 0)
  if np.any(~good.any(axis=-1)):
    raise ValueError("an ivar_template has no pixel with ivar > 0")
  return np.where(good, 1.0 / np.sqrt(np.where(good, tmpl, 1.0)), np.nan)


def _bracket(nodes, x):
  """Lower node index and weight of the upper node, for linear interpolation."""
  i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 2)
  w = (x - nodes[i]) / (nodes[i + 1] - nodes[i])
  return i, np.clip(w, 0.0, 1.0)


def _log_uniform(rng, bounds, n):
  lo, hi = bounds
  if not 0 < lo <= hi:
    raise ValueError(f"log-uniform range needs 0 < low <= high, got {bounds}")
  return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _companion(companion, companion_mask, n, npix):
  comp = np.asarray(companion, np.float64)
  if comp.shape[-1] != npix or comp.ndim > 2 or (comp.ndim == 2 and comp.shape[0] not in (1, n)):
    raise ValueError(f"companion shape {comp.shape} does not fit ({n}, {npix})")
  comp = np.broadcast_to(comp, (n, npix))
  bad = ~np.isfinite(comp)
  if companion_mask is not None:
    bad = bad | np.broadcast_to(np.asarray(companion_mask, bool), (n, npix))
  return np.where(bad, 0.0, comp), bad
