"""Tan and continuum normalisations: numpy vs jit-compiled jax, edge cases, real spectra."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from astropy.io import fits

from astrotl.preprocess import spectra

RNG = np.random.default_rng(7)


def _noisy_batch(n=5, npix=spectra.NPIX, bad_frac=0.05):
  wave = spectra.wavelength_grid(npix)
  flux = (wave / 5000.0) ** -2 * RNG.uniform(50, 500, (n, 1))
  flux = flux + RNG.normal(0, 1, flux.shape) * flux / 20
  mask = RNG.random(flux.shape) < bad_frac
  mask[0, :50] = True       # bad run at the start
  mask[1, -80:] = True      # and at the end
  flux[2, 100] = np.nan     # non-finite but not flagged
  return flux.astype(np.float32), mask


def test_fill_masked_interpolates_between_good_neighbours():
  f = np.array([[9.0, 1.0, 9.0, 9.0, 4.0, 9.0, 9.0]])
  m = np.array([[True, False, True, True, False, True, True]])
  out = spectra.fill_masked(f, m)
  np.testing.assert_allclose(out, [[1.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0]])
  assert np.all(spectra.fill_masked(f, np.ones_like(m)) == 0)


def test_median_filter_matches_scipy_reflect():
  x = RNG.normal(size=(3, 500)).astype(np.float32)
  want = scipy.ndimage.median_filter(x, size=(1, 9), mode="reflect")
  np.testing.assert_array_equal(spectra.median_filter(x, 9), want)
  np.testing.assert_array_equal(np.asarray(spectra.median_filter(jnp.asarray(x), 9, jnp)), want)


def test_tan_on_unmasked_input_is_minmax_then_scipy_median():
  flux, _ = _noisy_batch(bad_frac=0.0)
  flux[2, 100] = 7.0
  x = flux[:, :3700]
  lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
  want = scipy.ndimage.median_filter((x - lo) / (hi - lo), size=(1, 9), mode="reflect")
  np.testing.assert_allclose(spectra.tan_normalise(flux), want, atol=1e-6)


def test_tan_numpy_equals_jitted_jax():
  flux, mask = _noisy_batch()
  want = spectra.tan_normalise(flux, mask)
  got = jax.jit(functools.partial(spectra.tan_normalise, xp=jnp))(flux, mask)
  assert want.shape == (5, 3700) and want.dtype == np.float32
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_tan_edge_cases_finite_and_in_unit_range():
  flux, mask = _noisy_batch()
  flux[3] = 42.0                    # constant
  mask[4] = True                    # fully masked
  flux[0, 200:210] = -50.0          # negative dip
  flux[1, 300] = np.inf
  out = spectra.tan_normalise(flux, mask)
  assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
  assert np.all(out[3] == 0) and np.all(out[4] == 0)
  # A masked spike must not set the maximum: the good pixels still span the range.
  spiky, m = flux[:1].copy(), np.zeros((1, spectra.NPIX), bool)
  spiky[0, 1000], m[0, 1000] = 1e6, True
  assert spectra.tan_normalise(spiky, m).max() > 0.5
  with pytest.raises(ValueError, match="3700"):
    spectra.tan_normalise(flux[:, :100])


def test_tan_robust_ignores_an_unmasked_spike():
  """Median filter first: a spike up to 4 pixels wide cannot set the min-max scale (in
  Tan's order it squeezes the spectrum flat); otherwise the same input as Tan's."""
  flux, mask = _noisy_batch(bad_frac=0.0)
  clean = spectra.network_input(flux, None, mask, {"normalise": "tan_robust"})
  spiky = flux.copy()
  level = np.median(np.abs(flux[:, :3700]), axis=-1)
  for row, (at, width) in enumerate(((60, 1), (900, 2), (2000, 3), (3690, 4), (1500, 1))):
    spiky[row, at:at + width] += 20 * level[row]
  robust = spectra.network_input(spiky, None, mask, {"normalise": "tan_robust"})
  np.testing.assert_allclose(robust, clean, atol=0.05)
  tan = spectra.tan_normalise(spiky, mask)
  assert np.median(np.ptp(tan[:, 100:3600], axis=-1)) < 0.2  # Tan's order squeezes it flat
  # jitted jax gives the same, and a spike-free spectrum spans [0, 1] like Tan's
  got = jax.jit(functools.partial(spectra.tan_normalise, xp=jnp, robust=True))(spiky, mask)
  np.testing.assert_allclose(np.asarray(got), robust, atol=1e-6)
  assert np.allclose(clean.min(-1), 0) and np.allclose(clean.max(-1), 1)


def test_continuum_flat_for_smooth_spectrum_and_jax_equal():
  flux, mask = _noisy_batch()
  ivar = np.full_like(flux, 4.0)
  ivar[0, 500:520] = 0
  norm, nivar = spectra.continuum_normalise(flux, ivar, mask)
  assert norm.shape == flux.shape and np.all(np.isfinite(norm))
  # Power law plus 5% noise: the normalised flux scatters about 1.
  assert abs(np.median(norm) - 1) < 0.01 and 0.04 < np.std(norm[:, 200:-200]) < 0.06
  assert np.all(nivar[mask] == 0) and np.all(nivar[0, 500:520] == 0)
  jn, jv = jax.jit(functools.partial(spectra.continuum_normalise, xp=jnp))(flux, ivar, mask)
  np.testing.assert_allclose(np.asarray(jn), norm, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jv), nivar, rtol=1e-5)
  one, _ = spectra.continuum_normalise(flux[1], ivar[1], mask[1])
  np.testing.assert_allclose(one, norm[1], rtol=1e-6)


def test_continuum_degenerate_rows_give_zeros_not_nan():
  flux, mask = _noisy_batch(n=3)
  ivar = np.ones_like(flux)
  ivar[0] = 0                      # nothing good
  flux[1] = -1.0                   # non-positive median
  flux[2, :1500] = -0.1            # dead blue half: continuum taken from the red
  norm, nivar = spectra.continuum_normalise(flux, ivar, mask)
  assert np.all(np.isfinite(norm)) and np.all(np.isfinite(nivar))
  assert np.all(norm[0] == 0) and np.all(norm[1] == 0)
  assert abs(np.median(norm[2, 2000:]) - 1) < 0.02


def test_on_real_lamost_star(shared_data):
  path = shared_data / "spectra/lamost_dr13q1_bintable_format/spec-60591-LN042429N340750BM01_sp01-001.fits.gz"
  with fits.open(path) as h:
    row = h[1].data[0]
    wave, flux, ivar = (np.asarray(row[k], np.float64) for k in ("WAVELENGTH", "FLUX", "IVAR"))
    andmask = np.asarray(row["ANDMASK"]) != 0
  f, v, m = spectra.resample(np.log10(wave), flux, ivar, andmask)
  tan = spectra.tan_normalise(f, m)
  assert np.all(np.isfinite(tan)) and tan.min() >= 0 and tan.max() <= 1 and tan.max() > 0.9
  norm, _ = spectra.continuum_normalise(f, v, m)
  good = ~m
  assert 0.9 < np.median(norm[good]) < 1.1
  # A G5 star: the Mg b / Na D / H-alpha region has lines below the continuum.
  wave_grid = spectra.wavelength_grid()
  halpha = norm[np.abs(wave_grid - 6564.6) < 3].mean()
  assert halpha < 0.95


def test_snr_of_one_spectrum_equals_the_batched_value():
  # The scan measures one file at a time through a faster path; it must give the
  # batched value exactly, also for masked, empty-band, infinite-ivar and dead spectra.
  wave = spectra.wavelength_grid()
  band = spectra.snr_band(wave)
  rng = np.random.default_rng(3)
  cases = []
  for k in range(40):
    flux = rng.normal(10, 3, wave.size)
    ivar = np.abs(rng.normal(1, 0.1, wave.size))
    mask = rng.random(wave.size) < 0.05
    if k % 4 == 1:
      ivar[rng.random(wave.size) < 0.3] = rng.choice([0.0, np.inf, np.nan])
    if k % 5 == 2:
      mask |= band  # nothing good in the band: all good pixels count
    if k % 7 == 3:
      flux[band], ivar[band] = 0.0, np.inf  # in-band ratios all NaN
    if k % 9 == 4:
      mask[:] = True
    cases.append((flux, ivar, None if k % 6 == 5 else mask))
  cases.append((np.full(wave.size, np.nan), np.ones(wave.size), None))
  for flux, ivar, mask in cases:
    with np.errstate(invalid="ignore"):  # the batched path warns on 0 * inf; that is its way
      batched = spectra.snr(flux[None], ivar[None], None if mask is None else mask[None], wave)
    one = spectra.snr(flux, ivar, mask, wave)
    assert isinstance(one, float) and one == batched[0]
  assert spectra.snr(cases[0][0], 1.0, None, wave) == spectra.snr(cases[0][0][None], 1.0)[0]
