"""UPSILoN features: golden values from upsilon 1.2.10, numpy vs batched JAX, bad curves.

Tolerances against upsilon 1.2.10 (expected_features_upsilon_1.2.10.json):
- period: same grid point, so equal to 1e-12 relative (the grid is UPSILoN's; we evaluate
  the Lomb periodogram exactly where UPSILoN approximates it, and the peak is the same).
- amplitude, r21, r31 (relative 1e-5) and phi21, phi31 (absolute 1e-5 rad): UPSILoN fits
  the Fourier series with Levenberg-Marquardt, which stops at a relative change of
  1.5e-8 in the residual sum of squares; we solve the same linear least-squares problem
  exactly.  The differences seen are 1e-9..4e-6.
- everything else: relative 1e-9 (same formulas; differences seen are < 1e-15), except
  shapiro_w in the batched path: absolute 1e-8 (our Royston coefficients vs scipy's
  swilk, differences seen < 1e-9).
"""

import csv
import gzip
import json

import numpy as np
import pytest

from astrotl.preprocess import features as F
from astrotl.preprocess import features_batch as FB

FOURIER_REL = ("amplitude", "r21", "r31")
FOURIER_ABS = ("phi21", "phi31")


def read_eros2(path, clip):
  """UPSILoN's test preprocessing: R band, drop mag >= 99.999, optionally sigma-clip."""
  a = np.loadtxt(path, comments="#")
  t, m, e = a[:, 0], a[:, 1], a[:, 2]
  keep = m < 99.999
  t, m, e = t[keep], m[keep], e[keep]
  return F.sigma_clip(t, m, e) if clip else (t, m, e)


@pytest.fixture(scope="module")
def golden(shared_data):
  base = shared_data / "lightcurves" / "upsilon_samples"
  expected = json.loads((base / "expected_features_upsilon_1.2.10.json").read_text())
  out = {}
  for name in ("lm0010n22323.time", "lm0134l19756.time"):
    entry = expected[name]
    curve = read_eros2(base / name, entry["sigma_clipped"])
    assert len(curve[0]) == entry["n_points"]
    out[name] = (curve, entry["features"])
  return out


def check_against(got, want, name, shapiro_atol=None):
  for k in F.FEATURES:
    if k == "period":
      np.testing.assert_allclose(got[k], want[k], rtol=1e-12, err_msg=f"{name} {k}")
    elif k in FOURIER_REL:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=f"{name} {k}")
    elif k in FOURIER_ABS:
      np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=0, err_msg=f"{name} {k}")
    elif k == "shapiro_w" and shapiro_atol:
      np.testing.assert_allclose(got[k], want[k], atol=shapiro_atol, rtol=0, err_msg=name)
    else:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12,
                                 err_msg=f"{name} {k}")


def test_extract_matches_upsilon(golden):
  for name, (curve, want) in golden.items():
    got = F.extract(*curve)
    assert sorted(got) == sorted(F.FEATURES)
    check_against(got, want, name)


def test_extract_batch_matches_upsilon(golden):
  names = list(golden)
  out = FB.extract_batch(*FB.pad_curves([golden[n][0] for n in names]))
  assert list(out["reason"]) == [FB.OK, FB.OK]
  for i, name in enumerate(names):
    check_against({k: out[k][i] for k in F.FEATURES}, golden[name][1], name,
                  shapiro_atol=1e-8)


def read_eros1(shared_data, limit):
  csv.field_size_limit(1 << 30)
  path = shared_data / "lightcurves" / "eros1_ramp" / "test_varlength_features.csv.gz"
  curves = []
  with gzip.open(path, "rt") as f:
    for row in csv.DictReader(f):
      curves.append(tuple(np.array(json.loads(row[c + "_points_r"]), np.float64)
                          for c in ("time", "light", "error")))
      if len(curves) == limit:
        break
  return curves


def test_batch_agrees_with_numpy_on_eros1(shared_data):
  curves = read_eros1(shared_data, 40)
  out = FB.extract_batch(*FB.pad_curves(curves, 128))
  assert np.all(out["reason"] == FB.OK)
  same_period = 0
  for i, c in enumerate(curves):
    ref = F.extract(*c)
    if out["period"][i] != ref["period"]:
      continue   # a float32 near-tie between two grid peaks; counted below
    same_period += 1
    for k in F.FEATURES:
      atol = 1e-8 if k == "shapiro_w" else 1e-9
      np.testing.assert_allclose(out[k][i], ref[k], rtol=1e-7, atol=atol, err_msg=f"{i} {k}")
  assert same_period >= len(curves) - 1


def test_batch_ignores_padding_and_chunking(golden):
  curve = golden["lm0134l19756.time"][0]
  t, m, e, k = FB.pad_curves([curve], 320)
  t[0, ~k[0]], m[0, ~k[0]], e[0, ~k[0]] = 1e6, -50.0, 7.0   # garbage in the padding
  a = FB.extract_batch(t, m, e, k)
  b = FB.extract_batch(*FB.pad_curves([curve, curve, curve]), chunk=2)
  for name in F.FEATURES:
    np.testing.assert_allclose(b[name], a[name][0], rtol=1e-12, err_msg=name)


def test_missing_errors_mean_std(golden):
  t, m, _ = golden["lm0134l19756.time"][0]
  a = F.extract(t, m)
  b = F.extract(t, m, np.full_like(m, np.std(m)))
  c = F.extract(t, m, np.zeros_like(m))       # all-zero errors -> std(mag), as UPSILoN
  assert a == b == c
  out = FB.extract_batch(t[None], m[None])
  np.testing.assert_allclose(out["stetson_k"][0], a["stetson_k"], rtol=1e-12)
  np.testing.assert_allclose(out["phase_eta"][0], a["phase_eta"], rtol=1e-12)


def _bad_curves():
  rng = np.random.default_rng(0)
  t = np.sort(rng.uniform(0, 100, 50))
  m = 15 + 0.3 * np.sin(2 * np.pi * t / 3.3) + 0.01 * rng.standard_normal(50)
  e = np.full(50, 0.01)
  nan_mag = m.copy()
  nan_mag[7] = np.nan
  return {
      "too_few": ((t[:5], m[:5], e[:5]), FB.TOO_FEW_POINTS, "only 5 points"),
      "nan": ((t, nan_mag, e), FB.NON_FINITE, "mag has 1 non-finite"),
      "zero_span": ((np.full(50, 3.0), m, e), FB.ZERO_SPAN, "time span is zero"),
      "constant": ((t, np.full(50, 15.0), e), FB.CONSTANT_MAG, "mag is constant"),
      "negative_err": ((t, m, -e), FB.NEGATIVE_ERR, "negative"),
  }, (t, m, e)


def test_bad_curves_raise_named_errors():
  bad, _ = _bad_curves()
  for name, (curve, _, message) in bad.items():
    with pytest.raises(F.FeatureError, match=message):
      F.extract(*curve)
  with pytest.raises(F.FeatureError, match="differ in length"):
    F.extract(np.arange(20.0), np.arange(19.0))


def test_bad_curves_in_a_batch_get_nan_and_reasons():
  bad, good = _bad_curves()
  curves = [c for c, _, _ in bad.values()] + [good]
  out = FB.extract_batch(*FB.pad_curves(curves))
  assert list(out["reason"]) == [code for _, code, _ in bad.values()] + [FB.OK]
  assert [FB.REASONS[r] for r in out["reason"]][:2] == ["too_few_points", "non_finite"]
  for k in F.FEATURES:
    assert np.all(np.isnan(out[k][:-1])), k
  ref = F.extract(*good)
  for k in F.FEATURES:
    np.testing.assert_allclose(out[k][-1], ref[k], rtol=1e-7, atol=1e-8, err_msg=k)
  # the injected period is found
  np.testing.assert_allclose(out["period"][-1], 3.3, rtol=0.01)


def test_all_bad_batch():
  bad, _ = _bad_curves()
  out = FB.extract_batch(*FB.pad_curves([bad["too_few"][0]]))
  assert out["reason"][0] == FB.TOO_FEW_POINTS and np.isnan(out["period"][0])


def test_upsilont_inputs_reproduce_reference(shared_data):
  base = shared_data / "lightcurves"
  pre = json.loads((base / "upsilont_model" / "upsilont_preprocess.json").read_text())
  feats = json.loads((base / "upsilon_samples" /
                      "expected_features_upsilon_1.2.10.json").read_text())
  expected = json.loads((base / "upsilont_model" / "expected_outputs.json").read_text())
  for name, entry in expected.items():
    got = F.upsilont_inputs(feats[name]["features"], pre)
    np.testing.assert_allclose(got, entry["normalized_input"], rtol=1e-12, atol=1e-12)
  batch = {k: np.array([feats[n]["features"][k] for n in expected]) for k in F.FEATURES}
  assert F.upsilont_inputs(batch, pre).shape == (2, 16)
  below = dict(feats[name]["features"], period=0.01)          # below min_period
  assert np.isfinite(F.upsilont_inputs(below, pre)).all()
  with pytest.raises(KeyError, match="period"):
    F.upsilont_inputs({k: 1.0 for k in F.FEATURES if k != "period"}, pre)
