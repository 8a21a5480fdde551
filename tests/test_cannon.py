"""The Cannon (experiments/cannon.py) on synthetic spectra with known labels.

Two generators: one that is exactly the Cannon's quadratic model with a known per-pixel
scatter (so theta, the scatter and the labels can be checked against the truth), and one
of saturated absorption lines whose strengths depend exponentially on the labels (not
quadratic), closer to real spectra.  Each recovery claim is also checked against a fit on
shuffled labels, so that it cannot pass by accident.
"""

import dataclasses
import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import cannon  # noqa: E402  pylint: disable=g-import-not-at-top

NAMES = ("teff", "logg", "feh")
LOW = np.array([4000.0, 1.0, -2.0])
HIGH = np.array([7000.0, 5.0, 0.5])
# The generator's own label scaling, deliberately unlike the fit's (median, percentiles).
CENTRE = np.array([5500.0, 3.0, -0.75])
WIDTH = np.array([1000.0, 1.3, 0.8])
WAVE = np.arange(4000.0, 4400.0, 1.0)


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
  # The suite shares the cores between pytest workers; BLAS threads would only spin.
  try:
    import threadpoolctl  # pylint: disable=g-import-not-at-top (comes with scikit-learn)
  except ImportError:
    yield
    return
  with threadpoolctl.threadpool_limits(1):
    yield


def _labels(rng, n):
  return rng.uniform(LOW, HIGH, size=(n, 3))


def _rms(a, b):
  return np.sqrt(np.mean((a - b) ** 2, axis=0))


def _quadratic_truth(rng, n_pixels):
  d = cannon.n_terms(3)
  theta = np.concatenate([rng.uniform(0.7, 1.0, (n_pixels, 1)),
                          rng.normal(0, 0.03, (n_pixels, 3)),
                          rng.normal(0, 0.01, (n_pixels, d - 4))], axis=1)
  return theta, rng.uniform(0.005, 0.03, n_pixels)


def _quadratic_spectra(rng, labels, theta, scatter):
  clean = cannon.vectorize((labels - CENTRE) / WIDTH) @ theta.T
  sigma = np.ones_like(clean) / rng.uniform(70, 150, (labels.shape[0], 1))  # S/N ~ 100
  flux = clean + rng.normal(size=clean.shape) * np.sqrt(sigma**2 + scatter**2)
  return flux, 1 / sigma**2


def _line_list(rng, n_lines):
  return {"centre": rng.uniform(WAVE[5], WAVE[-5], n_lines),
          "width": rng.uniform(0.8, 1.6, n_lines),
          "strength": rng.uniform(0.1, 0.8, n_lines),
          "t": rng.uniform(-0.9, 0.2, n_lines), "z": rng.uniform(0.4, 0.8, n_lines),
          "g": rng.uniform(-0.25, 0.25, n_lines), "tz": rng.uniform(-0.2, 0.2, n_lines)}


def _line_spectra(rng, labels, lines, snr=100.0):
  """Gaussian lines with optical depth exp(linear in labels) and a logg-dependent width."""
  t = (labels[:, :1] - 5500) / 1000
  g = labels[:, 1:2] - 3
  z = labels[:, 2:3] + 0.75
  tau = lines["strength"] * np.exp(lines["t"] * t + lines["z"] * z + lines["g"] * g
                                   + lines["tz"] * t * z)
  width = lines["width"] * (1 + 0.05 * g)
  profile = np.exp(-0.5 * ((WAVE - lines["centre"][:, None]) / width[:, :, None]) ** 2)
  clean = np.exp(-(tau[:, :, None] * profile).sum(axis=1))
  flux = clean + rng.normal(size=clean.shape) / snr
  return flux, np.full(clean.shape, snr**2)


def _theta_in_model_scaling(model, theta_true):
  """The true quadratic rewritten in the model's pivot and scale (exact: same function space)."""
  points = _labels(np.random.default_rng(99), 2000)
  target = cannon.vectorize((points - CENTRE) / WIDTH) @ theta_true.T
  design = cannon.vectorize((points - model.pivot) / model.scale)
  return np.linalg.lstsq(design, target, rcond=None)[0].T


@pytest.fixture(scope="module")
def quadratic():
  rng = np.random.default_rng(1)
  theta, scatter = _quadratic_truth(rng, 300)
  train, test = _labels(rng, 500), _labels(rng, 200)
  flux, ivar = _quadratic_spectra(rng, train, theta, scatter)
  test_flux, test_ivar = _quadratic_spectra(rng, test, theta, scatter)
  return dict(theta=theta, scatter=scatter, train=train, test=test, flux=flux, ivar=ivar,
              test_flux=test_flux, test_ivar=test_ivar,
              model=cannon.fit(flux, ivar, train, label_names=NAMES),
              shuffled=cannon.fit(flux, ivar, rng.permutation(train)))


def test_quadratic_model_recovers_theta_and_scatter(quadratic):
  q = quadratic
  model = q["model"]
  assert model.label_names == NAMES and model.theta.shape == (300, 10)
  truth = _theta_in_model_scaling(model, q["theta"])
  # The constant term alone would make any fit look good: compare the label terms.
  corr = np.corrcoef(truth[:, 1:].ravel(), model.theta[:, 1:].ravel())[0, 1]
  assert corr > 0.99
  per_term = [np.corrcoef(truth[:, d], model.theta[:, d])[0, 1] for d in range(1, 10)]
  assert min(per_term) > 0.97, per_term  # measured: linear 0.999, quadratic >= 0.989
  rel = np.abs(model.scatter / q["scatter"] - 1)
  assert np.median(rel) < 0.08 and np.percentile(rel, 95) < 0.2  # measured 0.04, 0.12

  shuffled = q["shuffled"]
  wrong = _theta_in_model_scaling(shuffled, q["theta"])
  assert np.corrcoef(wrong[:, 1:].ravel(), shuffled.theta[:, 1:].ravel())[0, 1] < 0.8
  assert np.median(shuffled.scatter / q["scatter"]) > 2  # the labels' signal becomes scatter


def test_quadratic_model_recovers_held_out_labels(quadratic):
  q = quadratic
  labels, errors, chi2 = cannon.infer(q["model"], q["test_flux"], q["test_ivar"])
  assert labels.shape == errors.shape == (200, 3) and chi2.shape == (200,)
  rms = _rms(labels, q["test"])
  # measured 27 K, 0.037 dex, 0.023 dex
  assert rms[0] < 45 and rms[1] < 0.07 and rms[2] < 0.04, rms
  # The formal errors and the fitted scatter describe the real noise.
  pull = np.sqrt(np.mean(((labels - q["test"]) / errors) ** 2, axis=0))
  assert np.all((pull > 0.8) & (pull < 1.25)), pull
  assert 0.9 < np.median(chi2) < 1.1

  wrong, _, _ = cannon.infer(q["shuffled"], q["test_flux"], q["test_ivar"])
  assert np.all(_rms(wrong, q["test"]) > 10 * rms)


def test_predict_is_the_generating_model(quadratic):
  q = quadratic
  expected = cannon.vectorize((q["test"] - CENTRE) / WIDTH) @ q["theta"].T
  model_flux = cannon.predict(q["model"], q["test"])
  assert model_flux.shape == (200, 300)
  assert np.sqrt(np.mean((model_flux - expected) ** 2)) < 0.003  # noise per pixel ~0.02


@pytest.fixture(scope="module")
def lines():
  rng = np.random.default_rng(2)
  line_list = _line_list(rng, 40)
  train, test = _labels(rng, 600), _labels(rng, 150)
  flux, ivar = _line_spectra(rng, train, line_list)
  test_flux, test_ivar = _line_spectra(rng, test, line_list)
  return dict(rng=rng, train=train, test=test, flux=flux, ivar=ivar, test_flux=test_flux,
              test_ivar=test_ivar, model=cannon.fit(flux, ivar, train, label_names=NAMES))


def test_line_spectra_labels(lines):
  labels, _, chi2 = cannon.infer(lines["model"], lines["test_flux"], lines["test_ivar"])
  rms = _rms(labels, lines["test"])
  assert rms[0] < 100 and rms[1] < 0.1 and rms[2] < 0.05, rms  # measured ~48 K, 0.04, 0.016
  assert np.all(np.isfinite(chi2)) and np.median(chi2) < 1.5  # the scatter absorbs the misfit
  spread = lines["test"].std(axis=0)  # what knowing nothing would give
  assert np.all(rms < spread / 10)


def test_masked_pixels_are_ignored(lines):
  rng = np.random.default_rng(3)
  model, flux, ivar = lines["model"], lines["test_flux"], lines["test_ivar"].copy()
  masked = rng.random(ivar.shape) < 0.05
  masked[:, 150:210] = True  # a block, e.g. a bad CCD column or a gap between arms
  ivar[masked] = 0
  garbage = flux.copy()
  garbage[masked] = rng.choice([np.nan, np.inf, 1e6, -50.0], size=masked.sum())

  clean_labels, clean_errors, clean_chi2 = cannon.infer(model, flux, ivar)
  labels, errors, chi2 = cannon.infer(model, garbage, ivar)
  np.testing.assert_array_equal(labels, clean_labels)
  np.testing.assert_array_equal(errors, clean_errors)
  np.testing.assert_array_equal(chi2, clean_chi2)
  rms = _rms(labels, lines["test"])
  assert rms[0] < 120 and rms[1] < 0.12 and rms[2] < 0.06, rms
  # The same finite garbage left unmasked would wreck the answer.
  finite = np.where(np.isfinite(garbage), garbage, 1e6)[:40]
  ruined, _, _ = cannon.infer(model, finite, lines["test_ivar"][:40])
  assert np.all(_rms(ruined, lines["test"][:40]) > 5 * rms)

  # Masked training pixels too: garbage there changes nothing.
  train_ivar = lines["ivar"].copy()
  train_masked = rng.random(train_ivar.shape) < 0.05
  train_masked[:200, 100:180] = True
  train_masked[:, 390:] = True  # never observed: cannot be fitted
  train_ivar[train_masked] = 0
  train_garbage = lines["flux"].copy()
  train_garbage[train_masked] = np.nan
  fitted = cannon.fit(train_garbage, train_ivar, lines["train"], NAMES)
  reference = cannon.fit(lines["flux"], train_ivar, lines["train"], NAMES)
  np.testing.assert_array_equal(fitted.theta, reference.theta)
  np.testing.assert_array_equal(fitted.scatter, reference.scatter)
  assert np.all(np.isinf(fitted.scatter[390:])) and np.all(fitted.theta[390:] == 0)
  assert np.all(np.isfinite(fitted.scatter[:390]))
  labels, _, _ = cannon.infer(fitted, flux[:50], ivar[:50])
  rms = _rms(labels, lines["test"][:50])
  assert rms[0] < 120 and rms[1] < 0.12 and rms[2] < 0.06, rms


def test_model_round_trips_through_json_and_npz(lines, tmp_path):
  scatter = lines["model"].scatter.copy()
  scatter[0] = np.inf  # an unfitted pixel must survive both formats
  model = dataclasses.replace(lines["model"], scatter=scatter)
  from_json = cannon.CannonModel.from_dict(json.loads(json.dumps(model.to_dict())))
  np.savez(tmp_path / "cannon.npz", **model.to_dict())
  with np.load(tmp_path / "cannon.npz") as saved:
    from_npz = cannon.CannonModel.from_dict(saved)
  flux, ivar = lines["test_flux"][:5], lines["test_ivar"][:5]
  expected = cannon.infer(model, flux, ivar)
  for loaded in (from_json, from_npz):
    assert loaded.label_names == NAMES
    np.testing.assert_array_equal(loaded.theta, model.theta)
    np.testing.assert_array_equal(loaded.scatter, model.scatter)
    for a, b in zip(cannon.infer(loaded, flux, ivar), expected):
      np.testing.assert_array_equal(a, b)
  assert cannon.terms(NAMES)[:5] == ["1", "teff", "logg", "feh", "teff*teff"]


def test_unusable_spectra_give_nan_rows(quadratic):
  q = quadratic
  flux, ivar = q["test_flux"][:4].copy(), q["test_ivar"][:4].copy()
  flux[1], ivar[1] = np.nan, 0  # all masked
  ivar[2, 3:] = 0  # 3 pixels for 3 labels: underdetermined
  labels, errors, chi2 = cannon.infer(q["model"], flux, ivar)
  for row in (1, 2):
    assert np.all(np.isnan(labels[row])) and np.all(np.isnan(errors[row]))
    assert np.isnan(chi2[row])
  alone = cannon.infer(q["model"], flux[[0, 3]], ivar[[0, 3]])
  for got, want in zip((labels, errors, chi2), alone):
    np.testing.assert_array_equal(got[[0, 3]], want)


def test_vectorizer_and_its_jacobian():
  rng = np.random.default_rng(4)
  for k in (1, 2, 4):
    l = rng.normal(size=k)
    v = cannon.vectorize(l[None])[0]
    assert v.shape == (cannon.n_terms(k),) == (len(cannon.terms(range(k))),)
    h = 1e-6
    numeric = np.stack([(cannon.vectorize((l + h * e)[None])[0]
                         - cannon.vectorize((l - h * e)[None])[0]) / (2 * h)
                        for e in np.eye(k)], axis=1)
    np.testing.assert_allclose(cannon._vectorize_jac(l, cannon._pairs(k)), numeric, atol=1e-8)


def test_bad_inputs_are_rejected(quadratic):
  q = quadratic
  flux, ivar, labels = q["flux"][:40], q["ivar"][:40], q["train"][:40]
  model = q["model"]

  def rejects(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
      fn(*args, **kwargs)

  rejects("flux must be 2-D", cannon.fit, flux[0], ivar[0], labels)
  rejects("ivar must have flux's shape", cannon.fit, flux, ivar[:, :-1], labels)
  rejects(r"labels must be \(N=40, K\)", cannon.fit, flux, ivar, labels[:-1])
  rejects(r"labels must be \(N=40, K\)", cannon.fit, flux, ivar, labels[:, 0])
  bad = labels.copy()
  bad[7, 1] = np.nan
  rejects(r"labels must be finite; 1 rows are not \(first: \[7\]\)", cannon.fit, flux, ivar,
          bad)
  bad = ivar.copy()
  bad[0, 0] = -1
  rejects("ivar must be finite and >= 0", cannon.fit, flux, bad, labels)
  bad[0, 0] = np.nan
  rejects("ivar must be finite and >= 0", cannon.fit, flux, bad, labels)
  bad = flux.copy()
  bad[3, 3] = np.inf
  rejects("flux must be finite wherever ivar > 0", cannon.fit, bad, ivar, labels)
  rejects("label_names has 2 names for 3", cannon.fit, flux, ivar, labels, ("teff", "logg"))
  const = labels.copy()
  const[:, 2] = -0.5
  rejects(r"labels \['feh'\] are constant", cannon.fit, flux, ivar, const, NAMES)
  rejects("10 spectra cannot fit 10 coefficients", cannon.fit, flux[:10], ivar[:10],
          labels[:10])

  rejects("flux has 299 pixels but the model has 300", cannon.infer, model, flux[:, 1:],
          ivar[:, 1:])
  rejects("infer: ivar must have flux's shape", cannon.infer, model, flux, ivar[:3])
  rejects("infer: flux must be 2-D", cannon.infer, model, flux[0], ivar[0])
  rejects(r"predict: labels must be \(N, 3\)", cannon.predict, model, labels[:, :2])
  rejects(r"theta must be \(P, 10\)", cannon.CannonModel, model.theta[:, :9], model.scatter,
          model.pivot, model.scale, NAMES)
  rejects("scale finite and > 0", cannon.CannonModel, model.theta, model.scatter, model.pivot,
          np.zeros(3), NAMES)
