"""DA white-dwarf simulator: shapes, determinism, noise level, lines, interpolation, DA+M."""

import numpy as np
import pytest
import scipy.ndimage
from astropy.io import fits

from astrotl.preprocess import simulate, spectra

# Vacuum wavelengths (A).
BALMER = {"Halpha": 6564.61, "Hbeta": 4862.68, "Hgamma": 4341.69, "Hdelta": 4102.89}
M_DWARF = "spectra/lamost_dr13q1_bintable_format/spec-60591-LN042429N340750BM01_sp01-004.fits.gz"
STAR = "spectra/lamost_dr13q1_bintable_format/spec-60591-LN042429N340750BM01_sp01-001.fits.gz"


@pytest.fixture(scope="module")
def sim():
  return simulate.Simulator()


def _lamost_on_grid(path):
  with fits.open(path) as h:
    row = h[1].data[0]
    wave, flux, ivar = (np.asarray(row[k], np.float64) for k in ("WAVELENGTH", "FLUX", "IVAR"))
    bad = np.asarray(row["ANDMASK"]) != 0
  return spectra.resample(np.log10(wave), flux, ivar, bad)


def _band(wave):
  return (wave >= spectra.SNR_BAND[0]) & (wave <= spectra.SNR_BAND[1])


def test_shapes_finite_and_deterministic(sim):
  a = sim.sample(16, 3)
  b = sim.sample(16, np.random.default_rng(3))
  c = sim.sample(16, 4)
  n = spectra.NPIX
  assert a["flux"].shape == a["ivar"].shape == a["mask"].shape == (16, n)
  assert a["flux"].dtype == np.float32 and a["mask"].dtype == bool
  assert np.all(np.isfinite(a["flux"])) and np.all(a["ivar"][~a["mask"]] > 0)
  for key in ("flux", "ivar", "teff", "logg", "snr", "rv"):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["flux"], c["flux"])
  assert 6000 <= a["teff"].min() and a["teff"].max() <= 40000
  flux, ivar, mask = sim.spectrum(12000.0, 8.0, 20.0, 5)
  assert flux.shape == ivar.shape == mask.shape == (n,)
  np.testing.assert_array_equal(flux, sim.spectrum(12000.0, 8.0, 20.0, 5)[0])


def test_noise_matches_requested_snr_without_template(sim):
  snr = np.array([5.0, 15.0, 50.0])
  out = sim.batch(np.full((3, 40), [[20000.0], [9000.0], [30000.0]]).ravel(), 8.0,
                  np.repeat(snr, 40), 11)
  band = _band(sim.wavelength)
  # Independent estimate from the noisy flux alone (second differences, DER_SNR style).
  f = out["flux"][:, band].astype(np.float64)
  noise = 1.482602 / np.sqrt(6.0) * np.median(np.abs(2 * f[:, 2:-2] - f[:, :-4] - f[:, 4:]),
                                              axis=-1)
  measured = np.median(f, axis=-1) / noise
  for i, s in enumerate(snr):
    got = np.median(measured[i * 40:(i + 1) * 40])
    assert got == pytest.approx(s, rel=0.1), (s, got)
  resid = (out["flux"] - out["model"]) * np.sqrt(out["ivar"])
  assert np.std(resid) == pytest.approx(1.0, abs=0.02)


def test_noise_follows_a_real_ivar_template(sim, shared_data):
  _, ivar_t, mask_t = _lamost_on_grid(shared_data / STAR)
  out = sim.batch(np.full(30, 15000.0), 7.8, 25.0, 2, ivar_template=ivar_t)
  band = _band(sim.wavelength)
  assert np.array_equal(out["mask"][0], mask_t | ~(ivar_t > 0))
  assert np.all(out["flux"][out["mask"]] == 0) and np.all(out["ivar"][out["mask"]] == 0)
  good = ~out["mask"]
  snr_pix = np.where(good, out["model"] * np.sqrt(out["ivar"]), np.nan)[:, band]
  assert np.nanmedian(snr_pix, axis=-1) == pytest.approx(np.full(30, 25.0), rel=0.1)
  resid = ((out["flux"] - out["model"]) * np.sqrt(out["ivar"]))[good]
  assert np.std(resid) == pytest.approx(1.0, abs=0.03)
  # The template's shape carries over: sigma ratios follow 1/sqrt(ivar ratios).
  g = good[0]
  ratio = np.sqrt(out["ivar"][0][g] / ivar_t[g])
  assert np.std(ratio) / np.mean(ratio) < 1e-4


def test_balmer_minima_at_vacuum_wavelengths(sim):
  wave = sim.wavelength
  for teff in (9000.0, 14000.0, 25000.0):
    model = sim.model(teff, 8.0)
    for name, centre in BALMER.items():
      near = np.abs(wave - centre) < 25
      w_min = wave[near][np.argmin(model[near])]
      # One grid pixel is 1.0-1.5 A here.
      assert abs(w_min - centre) < 1.6, (teff, name, w_min)
      side = model[np.abs(wave - centre - 60) < 3].mean()
      assert model[near].min() < 0.8 * side, (teff, name)
  shifted = sim.model(14000.0, 8.0, rv=300.0)
  near = np.abs(wave - BALMER["Hbeta"]) < 25
  shift = wave[near][np.argmin(shifted[near])] - BALMER["Hbeta"]
  assert shift == pytest.approx(BALMER["Hbeta"] * 300 / simulate.C_KMS, abs=1.6)


def test_node_is_reproduced(sim):
  grid = simulate.load_grid()
  ig, it = 2, int(np.flatnonzero(grid["teff"] == 20000.0)[0])
  assert grid["logg"][ig] == 8.0
  # Independent path: 10x oversampling and scipy's Gaussian on the raw node.
  loglam_v = np.log10(simulate.air_to_vacuum(grid["wavelength"]))
  flam = grid["flux"][ig, it] / (10.0 ** loglam_v) ** 2
  step = spectra.DLOGLAM / 10
  fine = np.arange(spectra.loglam_grid()[0] - 0.003, spectra.loglam_grid()[-1] + 0.003, step)
  sigma = 1 / (simulate.LAMOST_R * 2 * np.sqrt(2 * np.log(2)) * np.log(10)) / step
  smooth = scipy.ndimage.gaussian_filter1d(np.interp(fine, loglam_v, flam), sigma)
  want = np.interp(spectra.loglam_grid(), fine, smooth)
  got = sim.model(20000.0, 8.0)
  np.testing.assert_allclose(got / np.median(got), want / np.median(want), rtol=5e-3)
  # Between nodes the (log-)interpolated model lies between the neighbours.
  lo, hi = sim.model(20000.0, 8.0), sim.model(25000.0, 8.0)
  mid = sim.model(np.sqrt(20000.0 * 25000.0), 8.0)
  assert np.all(mid >= np.minimum(lo, hi) * (1 - 1e-6))
  assert np.all(mid <= np.maximum(lo, hi) * (1 + 1e-6))
  np.testing.assert_allclose(mid, np.sqrt(lo * hi), rtol=1e-5)


def test_bundle_matches_the_original_text_grid(sim, shared_data):
  text = simulate.Simulator(shared_data / "spectra/wd_models/warwick_da")
  t, g = [7000.0, 12345.0, 33000.0], [7.2, 8.0, 8.9]
  np.testing.assert_allclose(text.model(t, g), sim.model(t, g), rtol=1e-5)


def test_companion_is_added(sim, shared_data):
  m_flux, _, m_mask = _lamost_on_grid(shared_data / M_DWARF)
  kw = dict(teff=np.full(2, 12000.0), logg=8.0, snr=30.0, rv=0.0, flux_level=100.0)
  alone = sim.batch(rng=9, **kw)
  both = sim.batch(rng=9, companion=m_flux, companion_mask=m_mask,
                   companion_ratio=[0.5, 2.0], **kw)
  good = ~both["mask"][0]
  wd = alone["model"].astype(np.float64)
  added = both["model"] - wd
  # Same seed, same response: the difference is the scaled M dwarf, pixel by pixel.
  for k, ratio in enumerate((0.5, 2.0)):
    scale = ratio * np.median(wd[k]) / np.median(m_flux[~m_mask])
    np.testing.assert_allclose(added[k][good], scale * m_flux[good], rtol=1e-4, atol=1e-3)
  red = sim.wavelength > 7000
  blue = (sim.wavelength > 4000) & (sim.wavelength < 4500)
  gain = added[1] / wd[1]
  assert np.median(gain[red & good]) > 4 * np.median(gain[blue & good])
  assert np.all(both["mask"][:, m_mask])
  out = sim.sample(40, 1, companions=m_flux[None], companion_masks=m_mask[None],
                   companion_fraction=0.5)
  has = out["companion_index"] >= 0
  assert 5 < has.sum() < 35
  assert np.all(out["companion_ratio"][~has] == 0) and np.all(out["companion_ratio"][has] > 0)


def test_bad_arguments(sim):
  with pytest.raises(ValueError, match="teff"):
    sim.model(200000.0, 8.0)
  with pytest.raises(ValueError, match="logg"):
    sim.model(20000.0, 6.0)
  with pytest.raises(ValueError, match="snr"):
    sim.batch(20000.0, 8.0, 0.0, 1)
  with pytest.raises(ValueError, match="companion"):
    sim.batch(20000.0, 8.0, 10.0, 1, companion_ratio=1.0)
  with pytest.raises(ValueError, match="ivar_template"):
    sim.batch(20000.0, 8.0, 10.0, 1, ivar_template=np.ones(100))
  with pytest.raises(ValueError, match="no pixel"):
    sim.batch(20000.0, 8.0, 10.0, 1, ivar_template=np.zeros(spectra.NPIX))
  with pytest.raises(ValueError, match="scalar"):
    sim.spectrum([20000.0, 21000.0], 8.0, 10.0, 1)


def test_air_to_vacuum():
  # H-alpha and H-beta, air -> vacuum (NIST).
  np.testing.assert_allclose(simulate.air_to_vacuum([6562.79, 4861.35]), [6564.61, 4862.71],
                             atol=0.02)


def test_blackbody_cut_lines_and_tilt():
  from astrotl.preprocess import degrade
  wave = spectra.wavelength_grid()
  bb = simulate.blackbody(np.array([5000.0, 30000.0]), wave)
  assert bb.shape == (2, wave.size) and np.allclose(np.median(bb, -1), 1.0)
  assert bb[0, 0] < bb[0, -1] and bb[1, 0] > bb[1, -1]  # cool is red, hot is blue
  # Wien peak of 5000 K at 5796 A
  assert wave[np.argmax(bb[0])] == pytest.approx(2.8978e7 / 5000.0, rel=0.01)
  line = 1 - 0.6 * np.exp(-0.5 * ((wave - 4862.7) / 30.0) ** 2)
  cut = degrade.cut_lines(wave, line * bb[1])
  np.testing.assert_allclose(cut, bb[1], rtol=0.02)  # the continuum is back
  tilted = bb[1] * degrade.tilt(wave, 1.5)
  assert tilted[-1] / tilted[0] == pytest.approx(bb[1, -1] / bb[1, 0] * (wave[-1] / wave[0]) ** 1.5)
