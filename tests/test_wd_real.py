"""Real spectra made LAMOST-like (io.calspec, preprocess.degrade) and scored as the scan does.

The last three tests state what the shipped white-dwarf model must do on real spectra
(experiments/wd_real_check.py measures it in full); they are real assertions.
"""

import pathlib
import sys

import numpy as np
import pytest
from astropy.io import fits

from astrotl import io as aio
from astrotl.io import SpectrumError, calspec, sdss
from astrotl.preprocess import degrade, simulate, spectra

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import real_spectra  # noqa: E402  pylint: disable=g-import-not-at-top
import wd_real_check  # noqa: E402  pylint: disable=g-import-not-at-top

CAL = real_spectra.CALSPEC + "/calspec/"
DA = "grw_70d5824"      # CALSPEC DA2.4 (STIS), a textbook hydrogen white dwarf
SDB = "hz44"            # CALSPEC sdB (STIS)
assert DA in real_spectra.RESERVED and SDB in real_spectra.RESERVED  # never trained on
GALAXY = "spectra/real_wd_validation/sdss_qso_galaxies/spec-0266-51602-0107.fits"
FAINT_QSO = "spectra/real_wd_validation/sdss_qso_galaxies/spec-1325-52762-0133.fits"
TEMPLATE = "spectra/lamost_dr8v1_image_format/spec-55859-F5902_sp03-232.fits.gz"
DRAWS = 8


@pytest.fixture(scope="module")
def calspec_rows(shared_data):
  return {r["object"]: r for r in real_spectra.calspec_files(shared_data)}


@pytest.fixture(scope="module")
def template(shared_data):
  s = aio.read(shared_data / TEMPLATE)
  _, ivar, mask = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
  return np.where(mask, 0.0, ivar)


def _band(wave):
  return (wave >= spectra.SNR_BAND[0]) & (wave <= spectra.SNR_BAND[1])


def test_calspec_reader(shared_data, tmp_path):
  path = shared_data / CAL / "gd153_stiswfcnic_004.fits.gz"
  s = calspec.read(path)
  with fits.open(path) as h:
    d = h[1].data
    err = np.asarray(d["STATERROR"], np.float64)
  assert np.all(np.diff(s.wavelength) > 0) and s.wavelength.dtype == np.float64
  good = ~s.mask
  # ivar from STATERROR alone, in 1e-17 erg/s/cm2/A units
  np.testing.assert_allclose(s.ivar[good], (1e-17 / err[good]) ** 2, rtol=1e-5)
  np.testing.assert_allclose(s.flux[good], np.asarray(d["FLUX"])[good] / 1e-17, rtol=1e-6)
  # wd0308_565 continues its STIS data with a model (TOTEXP 0) above 8000 A: masked
  w = calspec.read(shared_data / CAL / "wd0308_565_stis_009.fits.gz")
  assert w.mask[w.wavelength > 8010].all()
  assert w.mask[(w.wavelength > 4000) & (w.wavelength < 7900)].mean() < 0.05
  with pytest.raises(SpectrumError, match="STATERROR"):
    calspec.read(shared_data / CAL / "hz44_stis_plus_50000k_ext.fits.gz")
  junk = tmp_path / "junk.fits"
  junk.write_bytes(b"not fits")
  with pytest.raises(SpectrumError):
    calspec.read(junk)


def test_conversion_keeps_the_flux_shape(shared_data, calspec_rows, template):
  row = calspec_rows[DA]
  s = calspec.read(row["path"])
  flux, _, mask = degrade.lamost_like(s.wavelength, s.flux, 0, 1e5, template, s.mask,
                                      response=None, observed=row["observed"])
  wave = spectra.wavelength_grid()
  want = np.interp(wave, s.wavelength, np.asarray(s.flux, np.float64))
  for w in (4000.0, 4341.7, 4862.7, 5500.0, 6564.6, 8000.0):
    i = np.argmin(np.abs(wave - w))
    assert not mask[0, i]
    assert flux[0, i] == pytest.approx(want[i], rel=2e-3), w


def test_empirical_response_is_smooth_and_as_measured():
  curves = degrade.response_curves(np.random.default_rng(0), 1500)
  assert curves.shape == (1500, spectra.NPIX) and np.all(curves > 0)
  log = np.log(curves)
  assert np.abs(np.diff(log, axis=1)).max() < 5e-3  # no line-scale structure
  basis = simulate.legendre_basis(spectra.NPIX, 5)
  coef = np.linalg.lstsq(basis, log.T, rcond=None)[0].T
  np.testing.assert_allclose(coef.mean(0), degrade.EMPIRICAL_MEAN, atol=0.01)
  np.testing.assert_allclose(np.cov(coef.T), degrade.EMPIRICAL_COV, atol=0.006)
  sim = degrade.response_curves(np.random.default_rng(0), 10, 0.1)
  ref = simulate.legendre_response(np.random.default_rng(0), 10, 0.1)
  np.testing.assert_array_equal(sim, ref)
  assert np.all(degrade.response_curves(None, 3, None) == 1.0)


@pytest.mark.parametrize("snr", [5.0, 10.0, 20.0, 40.0])
def test_noise_measures_the_requested_snr(shared_data, calspec_rows, template, snr):
  row = calspec_rows[DA]
  s = calspec.read(row["path"])
  model, _, mask0 = degrade.lamost_like(s.wavelength, s.flux, 3, 1e5, template, s.mask,
                                        response=None, observed=row["observed"])
  flux, ivar, mask = degrade.lamost_like(s.wavelength, s.flux, 3, np.full(40, snr), template,
                                         s.mask, s.ivar, response=None,
                                         observed=row["observed"])
  band = _band(spectra.wavelength_grid())
  good = ~mask
  # the definition (median flux/sigma over good g-band pixels) on the noisy spectra
  measured = spectra.snr(flux, ivar, mask)
  assert np.median(measured) == pytest.approx(snr, rel=0.05)
  # and independently: the noise really has sigma = 1/sqrt(ivar)
  pull = ((flux - model[0]) * np.sqrt(ivar))[good & band]
  assert np.std(pull) == pytest.approx(1.0, abs=0.03)
  # the template's pattern: its bad pixels are masked too
  assert np.all(mask[:, ~(template > 0)]) and np.all(mask0[:, ~(template > 0)])


def test_masks_outside_the_observed_range(calspec_rows, template):
  row = calspec_rows["wd0308_565"]
  assert row["observed"] == [(1161.0, 8000.0)]
  s = calspec.read(row["path"])
  f, ivar, mask = degrade.to_grid(s.wavelength, s.flux, s.ivar, s.mask, observed=[(4500, 6000)])
  wave = spectra.wavelength_grid()
  assert mask[(wave < 4495) | (wave > 6005)].all()
  assert not mask[(wave > 4510) & (wave < 5990)].any()
  assert np.all(f[mask] == 0) and np.all(ivar[mask] == 0)
  flux, _, m = degrade.lamost_like(s.wavelength, s.flux, 0, [10.0, 20.0], template, s.mask,
                                   s.ivar, observed=row["observed"])
  assert m[:, wave > 8005].all() and np.all(flux[:, wave > 8005] == 0)


def test_sdss_conversion(shared_data, template):
  # convolution to R = 1800 widens a narrow line by exactly the missing width
  loglam = 3.58 + 1e-4 * np.arange(5000)
  wave = 10 ** loglam
  sig0 = 1.0 / (2000 * 2.3548 * np.log(10))  # an R = 2000 line, in dex
  line = 1.0 - 0.5 * np.exp(-0.5 * ((loglam - np.log10(5000.0)) / sig0) ** 2)
  f, ivar, mask = degrade.to_grid(wave, line, np.full(5000, 1e4), resolution=2000)
  grid = spectra.loglam_grid()
  depth = np.where(mask, 0.0, 1 - f)  # the line lies well inside the input's range
  var = np.sum(depth * (grid - np.log10(5000.0)) ** 2) / np.sum(depth)
  want = 1.0 / (1800 * 2.3548 * np.log(10))
  assert np.sqrt(var) == pytest.approx(want, rel=0.03)
  assert np.all(ivar[~mask] > 1e4)  # averaging neighbours lowers the noise
  # a real SDSS-I galaxy: class from its SPECOBJ HDU, converted at S/N 10
  s = sdss.read(shared_data / GALAXY)
  assert s.meta["class"] == "GALAXY"
  flux, ivar, mask = degrade.lamost_like(s.wavelength, s.flux, 0, np.full(5, 10.0), template,
                                         s.mask, s.ivar, resolution=real_spectra.SDSS_R)
  assert np.all(np.isfinite(flux)) and flux.shape == (5, spectra.NPIX)
  assert np.median(spectra.snr(flux, ivar, mask)) == pytest.approx(10.0, rel=0.05)
  # an S/N above the spectrum's own cannot be made
  q = sdss.read(shared_data / FAINT_QSO)
  with pytest.raises(ValueError, match="exceeds"):
    degrade.lamost_like(q.wavelength, q.flux, 0, 20.0, template, q.mask, q.ivar,
                        resolution=real_spectra.SDSS_R)


def test_degrade_a_real_lamost_star(shared_data):
  s = aio.read(shared_data / TEMPLATE)
  f, v, m = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
  own = spectra.snr(f, v, m)
  flux, ivar, mask, done = degrade.degrade(np.repeat(f[None], 30, 0), v, m,
                                           np.r_[np.full(29, 10.0), 2 * own], 5)
  assert done[:29].all() and not done[29]
  np.testing.assert_array_equal(flux[29], np.where(m, 0, f))
  assert np.median(spectra.snr(flux[:29], ivar[:29], mask[:29])) == pytest.approx(
      10.0, rel=0.05)
  good = ~mask[0]
  ratio = ivar[0][good] / v[good]  # the star's own noise shape, scaled
  assert np.std(ratio) / np.mean(ratio) < 1e-4
  assert np.mean(ratio) == pytest.approx((10.0 / own) ** 2, rel=1e-3)


# --- what the shipped model must do (may fail on a model that has not learnt it yet) ---

def _candidate_fraction(flux, ivar, mask, u=None):
  out = wd_real_check.score(None, flux, ivar, mask, u, batch_size=DRAWS)
  return float(np.mean(out["candidate"]))


def _calspec_at(row, snr, templates):
  s = calspec.read(row["path"])
  _, draws = wd_real_check.converted(s, [snr], DRAWS, 0, templates, "empirical",
                                     row["observed"])
  return draws[0][1:]


@pytest.fixture(scope="module")
def templates(shared_data):
  rows = real_spectra.lamost_files(shared_data, "test")[:8]
  out = []
  for r in rows:
    s = aio.read(r["path"])
    _, v, m = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    out.append(np.where(m, 0.0, v))
  return np.stack(out)


def test_shipped_model_finds_a_real_da_at_snr_20(calspec_rows, templates):
  assert _candidate_fraction(*_calspec_at(calspec_rows[DA], 20.0, templates)) >= 0.75


# A known regression, kept visible: the line-physics model (2026-12-07) flags the reserved
# sdB HZ 44 in 2 of these 8 draws at S/N 20 (5 of 40 draws: 12.5%; 25% at S/N 10), where
# the 9-class model flagged none. Its stage 2 alone calls HZ 44 a white dwarf in 70-90% of
# draws; only stage 1's class (mostly OB) keeps most out. experiments/README.md, "The
# line-physics model", says by how much the hot-subdwarf target is missed and why.
# strict: when a model passes again, this marker must go.
@pytest.mark.xfail(strict=True, reason="line-physics model: HZ 44 flagged 12.5% at S/N 20")
def test_shipped_model_rejects_a_real_sdb_at_snr_20(calspec_rows, templates):
  assert _candidate_fraction(*_calspec_at(calspec_rows[SDB], 20.0, templates)) <= 1 / DRAWS


def test_shipped_model_rejects_a_held_out_lamost_g_star_at_snr_8(shared_data):
  star = real_spectra.RESERVED[2]  # never trained on (wd_search.py leaves it out)
  row = next(r for r in real_spectra.lamost_files(shared_data, "all") if r["object"] == star)
  assert (row["subclass"] or "").startswith("G")
  own, _, draws = wd_real_check.lamost_draws(row["path"], [8.0], DRAWS, 0)
  assert own > 8.0 and draws[1][0] == 8.0
  _, u, flux, ivar, mask = draws[1]
  assert _candidate_fraction(flux, ivar, mask, u) <= 1 / DRAWS
