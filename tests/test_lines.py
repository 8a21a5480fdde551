"""Line-profile features (preprocess.lines) and the gradient-boosting baseline on them."""

import pathlib
import sys
import warnings

import numpy as np
import pytest
import threadpoolctl

from astrotl.preprocess import lines, spectra

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import line_baseline  # noqa: E402  pylint: disable=g-import-not-at-top

WAVE = spectra.wavelength_grid()
NAMES = lines.FEATURE_NAMES
SQRT2PI = np.sqrt(2 * np.pi)
HB = 4862.7


def _f(x, name):
  return x[..., NAMES.index(name)]


def _gauss(centre, amplitude, sigma):
  return amplitude * np.exp(-0.5 * ((WAVE - centre) / sigma) ** 2)


def _lorentz(centre, amplitude, gamma):
  return amplitude / (1 + ((WAVE - centre) / gamma) ** 2)


def _planck(temperature):
  lam = WAVE * 1e-8  # cm
  f = 1 / lam ** 5 / np.expm1(1.4388 / (lam * temperature))
  return f / np.median(f)


def _features(flux, ivar=None, mask=None):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    return lines.line_features(flux, np.ones_like(flux) if ivar is None else ivar, mask)


def test_names_shape_dtype_and_single_spectrum():
  assert len(NAMES) == len(set(NAMES))
  flux = 1 - np.stack([_gauss(HB, d, 8) for d in (0.2, 0.4, 0.6)])
  x = _features(flux)
  assert x.shape == (3, len(NAMES)) and x.dtype == np.float32
  one = _features(flux[1])
  assert one.shape == (len(NAMES),)
  np.testing.assert_array_equal(one, x[1])


def test_chunked_batch_equals_rows(monkeypatch):
  rng = np.random.default_rng(3)
  flux = 1 - _gauss(HB, 0.4, 10) + rng.normal(0, 0.03, (7, WAVE.size))
  mask = rng.random(flux.shape) < 0.05
  want = np.stack([_features(f, mask=m) for f, m in zip(flux, mask)])
  monkeypatch.setattr(lines, "CHUNK", 3)
  np.testing.assert_array_equal(_features(flux, mask=mask), want)


# The core depth is a 5-pixel median: for a line a few pixels wide it reads the pixels
# beside the minimum (1.1 A at Hβ: 4% shallower at sigma = 4 A).
@pytest.mark.parametrize("depth,sigma,depth_rtol", [(0.5, 10.0, 0.02), (0.3, 25.0, 0.02),
                                                    (0.7, 4.0, 0.07)])
def test_gaussian_absorption_at_hbeta(depth, sigma, depth_rtol):
  x = _features(1 - _gauss(HB, depth, sigma))
  np.testing.assert_allclose(_f(x, "hb_ew"), depth * sigma * SQRT2PI, rtol=0.02)
  np.testing.assert_allclose(_f(x, "hb_depth"), depth, rtol=depth_rtol)
  np.testing.assert_allclose(_f(x, "hb_fwhm") / (2 * np.sqrt(2 * np.log(2))), sigma, rtol=0.15)
  # lines whose windows stay clear of the Gaussian (He I 4923 sits in a broad line's wing)
  others = [f"{n}_ew" for n, c, half, *_ in lines.LINES
            if n != "hb" and abs(c - HB) > 5 * sigma + half]
  assert len(others) >= 12
  ews = {n: float(_f(x, n)) for n in others}
  assert max(abs(v) for v in ews.values()) < 0.15, ews


def test_emission_line_has_negative_ew():
  x = _features(1 + _gauss(6564.6, 1.0, 5.0))
  np.testing.assert_allclose(_f(x, "ha_ew"), -5.0 * SQRT2PI, rtol=0.03)
  assert _f(x, "ha_depth") < -0.9
  np.testing.assert_allclose(_f(x, "ha_fwhm") / 2.3548, 5.0, rtol=0.15)


def test_balmer_wings_tell_broad_from_narrow():
  broad = 1 - _lorentz(HB, 0.6, 30.0)    # white-dwarf-like: wings to +-150 A
  narrow = 1 - _gauss(HB, 0.6, 4.0)      # A-star / subdwarf-like
  xb, xn = _features(np.stack([broad, narrow]))
  assert _f(xb, "hb_wing40") > 0.25 and _f(xn, "hb_wing40") < 0.02
  assert _f(xb, "hb_wing10") > 0.8 and _f(xn, "hb_wing10") < 0.1
  assert _f(xb, "hb_fwhm") > 5 * _f(xn, "hb_fwhm")


def test_blackbody_has_no_lines_and_hotter_is_bluer():
  hot, cool = _features(np.stack([_planck(20000.0), _planck(6000.0)]))
  ews = {n: _f(hot, n) for n in NAMES if n.endswith("_ew")}
  assert max(abs(v) for v in ews.values()) < 0.5, ews
  assert _f(hot, "slope_4600_5500") < -2.5 < _f(cool, "slope_4600_5500")
  for n in ("logf_6100_5500", "logf_7450_5500", "logf_8040_5500"):
    assert _f(hot, n) < _f(cool, n) < 0


@pytest.mark.parametrize("at", [HB, HB + 3.0, HB + 60.0, HB - 120.0, 4640.0, 5070.0])
def test_single_pixel_spike_barely_moves_the_line(at):
  rng = np.random.default_rng(0)
  flux = 1 - _gauss(HB, 0.5, 10.0) + rng.normal(0, 0.02, WAVE.size)
  spiked = flux.copy()
  spiked[np.argmin(np.abs(WAVE - at))] = 10.0   # 10x the continuum
  x0, x1 = _features(np.stack([flux, spiked]))
  assert abs(_f(x1, "hb_ew") - _f(x0, "hb_ew")) < 1.0
  # at most one rank of the 5-pixel core median
  assert abs(_f(x1, "hb_depth") - _f(x0, "hb_depth")) < 0.03
  assert abs(_f(x1, "hb_fwhm") - _f(x0, "hb_fwhm")) < 2.0


def test_hostile_input_gives_nan_without_warnings():
  n = WAVE.size
  ones = np.ones(n)
  rows = {
      "all masked": (ones, ones, np.ones(n, bool)),
      "nan flux": (np.full(n, np.nan), ones, None),
      "inf flux": (np.full(n, np.inf), ones, None),
      "zero ivar": (ones, np.zeros(n), None),
      "nan ivar": (ones, np.full(n, np.nan), None),
      "negative flux": (-ones, ones, None),
      "zero flux": (np.zeros(n), ones, None),
  }
  for what, (f, v, m) in rows.items():
    x = _features(f, v, m)
    assert np.all(np.isnan(x)), what
  # bad pixels carry flux 0 and ivar 0: only the lines they cover are lost
  flux = 1 - _gauss(HB, 0.5, 10.0) - _gauss(6564.6, 0.5, 10.0)
  window = np.abs(WAVE - HB) < 160
  x = _features(np.where(window, 0.0, flux), np.where(window, 0.0, 1.0), window)
  assert np.all(np.isnan([_f(x, n) for n in ("hb_ew", "hb_depth", "hb_fwhm", "hb_wing40")]))
  np.testing.assert_allclose(_f(x, "ha_ew"), 0.5 * 10 * SQRT2PI, rtol=0.02)
  # a masked run (flux 0) in the line core: interpolated over, not read as absorption
  core = np.abs(WAVE - HB) < 4
  x = _features(np.where(core, 0.0, flux), np.where(core, 0.0, 1.0), core)
  assert 0.7 * 12.53 < _f(x, "hb_ew") < 12.53 and np.isnan(_f(x, "hb_depth"))
  # empty batch and a grid without the lines
  assert _features(np.zeros((0, n))).shape == (0, len(NAMES))
  assert np.all(np.isnan(lines.line_features(ones[:50], ones[:50], None)))


def _synthetic(n, rng):
  """White-dwarf-like (broad deep Balmer on a hot continuum), star-like (narrow Balmer and
  metal lines) and featureless spectra, noisy, with binary labels (1 = white dwarf)."""
  balmer = (6564.6, 4862.7, 4341.7, 4102.9, 3971.2)
  metals = (3934.8, 5177.0, 5894.6)
  flux, y = [], []
  for kind in rng.integers(0, 3, n):
    if kind == 0:
      f = _planck(rng.uniform(10000, 30000))
      f = f * (1 - sum(_lorentz(c, rng.uniform(0.3, 0.7), rng.uniform(15, 40)) for c in balmer))
    elif kind == 1:
      f = _planck(rng.uniform(4500, 10000))
      f = f * (1 - sum(_gauss(c, rng.uniform(0.2, 0.6), rng.uniform(2, 8)) for c in balmer))
      f = f * (1 - sum(_gauss(c, rng.uniform(0.1, 0.5), rng.uniform(1.5, 4)) for c in metals))
    else:
      f = _planck(rng.uniform(4000, 40000))
    snr = rng.uniform(10, 50)
    flux.append(f + rng.normal(0, np.median(f) / snr, f.shape))
    y.append(int(kind == 0))
  return np.array(flux, np.float32), np.array(y)


def test_gradient_boosting_separates_white_dwarfs():
  rng = np.random.default_rng(11)
  flux, y = _synthetic(360, rng)
  mask = rng.random(flux.shape) < 0.01
  x = _features(flux, mask=mask)
  train, test = slice(0, 240), slice(240, None)
  # One OpenMP thread: the suite shares the cores between pytest workers.
  with threadpoolctl.threadpool_limits(1):
    model = line_baseline.fit(x[train], y[train], seed=0, max_iter=60)
    p = line_baseline.predict_proba(model, x[test])
    table = line_baseline.importances(model, x[test], y[test], seed=0, n_repeats=2)
  assert p.shape == (120,) and np.all((p >= 0) & (p <= 1))
  assert np.mean((p > 0.5) == y[test]) > 0.9
  assert tuple(table) == NAMES
  assert all(np.isfinite(m) and s >= 0 for m, s in table.values())
  with pytest.raises(ValueError):
    line_baseline.fit(x[:10], np.zeros(10), seed=0)
