"""Model bundles, load_model and candidate rules; the scan with every kind of bundle."""

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from astrotl import bundle, checkpoint, data, rules, scan
from astrotl import io as aio


def _files(n=4):
  return [str(r["path"]) for r in data.sample_index("spectra")][:n]


def test_bundled_names_load_with_their_kinds():
  m = bundle.load_model("wd_two_stage")
  assert m.kind == "two_stage" and m.rule["type"] == "two_stage"
  assert "WD" in m.classes
  s1 = bundle.load_model("wd_stage1")
  assert s1.kind == "classifier" and s1.rule is None and s1.classes == m.classes
  u = bundle.load_model("upsilont")
  assert u.input["type"] == "lightcurve" and "RRL_ab" in u.classes
  with pytest.raises(FileNotFoundError, match="wd_two_stage"):
    bundle.load_model("no_such_model")


def test_predict_takes_files_spectra_and_arrays_alike(tiny_bundles):
  m = bundle.load_model(tiny_bundles["classifier"])
  files = _files(3)
  by_file = m.predict(files)
  spectrum = aio.read(files[0])
  one = m.predict(spectrum)
  tup = m.predict((spectrum.wavelength, spectrum.flux, spectrum.ivar, spectrum.mask))
  cols = [f"p_{bundle.column_name(c)}" for c in m.classes]
  for t in (one, tup):
    np.testing.assert_allclose([t[c][0] for c in cols], [by_file[c][0] for c in cols], atol=1e-6)
  assert list(by_file["pred_class"]) == [m.classes[i] for i in
                                        np.argmax([by_file[c] for c in cols], axis=0)]
  assert by_file["snr"][0] > 0 and by_file["snr"].description
  emb = m.embed(files)
  assert emb.shape == (3, 8)
  cams = m.explain(files[:2], target="A")
  assert cams.shape == (2, 3700) and np.all((cams >= 0) & (cams <= 1))


def test_survey_prior_column_is_bayes_rule_from_the_training_mix(tmp_path, tiny_bundles):
  """A two-stage bundle stating its training prior and a survey prior gives p_wd_survey:
  the same likelihood ratio under the survey's white-dwarf fraction."""
  trees, meta = checkpoint.load_bundle(tiny_bundles["shared"])
  meta["networks"]["stage2"].update(prior=0.2, survey_prior=0.0005)
  path = tmp_path / "priors.npz"
  checkpoint.save_bundle(path, trees, meta)
  m = bundle.load_model(path)
  assert "p_wd_survey" in m.columns() and "0.0005" in m.columns()["p_wd_survey"][0]
  t = m.predict(_files(3))
  odds = t["p_wd"] / (1 - t["p_wd"]) * (0.0005 / 0.9995) / (0.2 / 0.8)
  np.testing.assert_allclose(t["p_wd_survey"], odds / (1 + odds), rtol=1e-4)
  assert np.all(t["p_wd_survey"] < t["p_wd"])
  np.testing.assert_allclose(bundle.to_prior(np.array([0.5]), 0.3, 0.3), [0.5], rtol=1e-6)
  meta["networks"]["stage2"]["prior"] = 1.5
  checkpoint.save_bundle(path, trees, meta)
  with pytest.raises(bundle.BundleError, match=r"prior.*\(0, 1\)"):
    bundle.load_model(path)
  # a bundle without priors has no survey column
  assert "p_wd_survey" not in bundle.load_model(tiny_bundles["shared"]).columns()


def test_unreadable_inputs_are_listed_not_dropped(tmp_path, tiny_bundles):
  m = bundle.load_model(tiny_bundles["classifier"])
  bad = tmp_path / "bad.fits"
  bad.write_bytes(b"not a fits file")
  with pytest.warns(UserWarning, match="1 of 2"):
    t = m.predict([_files(1)[0], str(bad)])
  assert len(t) == 1 and t.meta["errors"][0][0] == str(bad)
  with pytest.raises(aio.SpectrumError):
    m.predict(str(bad))


def test_format_1_bundles_are_upgraded(tmp_path, tiny_bundles):
  """Bundles written by astrotl 0.1 (stage1/stage2 at the top) still load and scan."""
  trees, meta = checkpoint.load_bundle(tiny_bundles["separate"])
  old = {"stage1": dict(meta["networks"]["stage1"]), "stage2": dict(meta["networks"]["stage2"]),
         "input_pixels": 3700}
  old["stage2"]["positive_index"] = 1
  for s in ("stage1", "stage2"):
    old[s].pop("output", None)
  old["stage2"].pop("positive", None)
  path = tmp_path / "old.npz"
  checkpoint.save_bundle(path, trees, old)
  a, b = bundle.load_model(path), bundle.load_model(tiny_bundles["separate"])
  assert a.rule["classes"] == ["WD", "WD+M"] and a.kind == "two_stage"
  np.testing.assert_allclose(a.predict(_files(2))["p_wd"], b.predict(_files(2))["p_wd"], atol=1e-6)


def test_rules_parse_select_and_describe():
  cols = ["p_A", "p_WD", "pred_class", "subtype", "snr"]
  r = rules.parse("WD>=0.9", cols, ["A", "WD"])
  assert r == {"type": "class", "score": "p_WD", "threshold": 0.9}
  r2 = rules.parse("20<=subtype<=29.5", cols)
  assert (r2["min"], r2["max"]) == (20.0, 29.5)
  with pytest.raises(rules.RuleError, match="neither a class"):
    rules.parse("XX>=0.5", cols, ["A"])
  with pytest.raises(rules.RuleError, match=r"\[0, 1\]"):
    rules.parse("A>=2", cols, ["A"])
  two = {"type": "two_stage", "score": "p_wd", "threshold": 0.5, "agree": "class1",
         "classes": ["WD"], "min_snr": 5.0, "veto": ["QSO"]}
  got = rules.select(two, {"p_wd": np.array([0.9, 0.9, 0.9, 0.9, np.nan]),
                           "class1": np.array(["WD", "A", "WD", "WD", "WD"]),
                           "snr": np.array([10, 10, 3, 10, 10.0]),
                           "survey_class": np.array(["STAR", "STAR", "STAR", "QSO", "STAR"])})
  assert got.tolist() == [True, False, False, False, False]
  assert "snr >= 5" in rules.describe(two) and "QSO" in rules.describe(two)


@pytest.mark.parametrize("kind,select,columns", [
    ("shared", None, {"p1_A", "p1_WD_M", "class1", "p_wd", "candidate"}),
    ("classifier", "A>=0.1", {"p_A", "p_WD", "pred_class", "candidate"}),
    ("regressor", "0<=subtype<=100", {"subtype", "candidate"}),
])
def test_scan_runs_any_spectrum_bundle(tmp_path, tiny_bundles, kind, select, columns):
  s = scan.scan(spectra=_files(6), out=tmp_path / "o", model=str(tiny_bundles[kind]),
                select=select, workers=0, progress=False, log=lambda *a: None)
  t = pq.read_table(tmp_path / "o" / "predictions.parquet")
  assert columns <= set(t.column_names)
  assert s["n_scanned"] == 6 and s["rule"] == rules.describe(s["rule_spec"])
  assert json.loads((tmp_path / "o" / "summary.json").read_text())["n_candidates"] == \
      int(np.sum(t["candidate"]))
  if kind == "regressor":
    assert np.all(np.isfinite(t["subtype"].to_numpy()))


def test_unusable_bundles_are_refused_at_once_before_any_decoding(tmp_path, tiny_bundles):
  scan.prepare(_files(2), None, None, None, False, None, None, None, 3.0,
               str(tiny_bundles["shared"]), None, None, None, None)  # warm the imports
  trees, meta = checkpoint.load_bundle(tiny_bundles["classifier"])
  cases = {}
  cases["wrong rule"] = dict(meta, rule={"type": "class", "score": "p_nothing", "threshold": 0.5})
  cases["no networks"] = dict(meta, networks={})
  cases["light curves"] = dict(meta, input={"type": "lightcurve"})
  cases["bad model"] = dict(meta, networks={"main": dict(meta["networks"]["main"], model="nope")})
  for name, m in cases.items():
    path = tmp_path / f"{name.replace(' ', '_')}.npz"
    checkpoint.save_bundle(path, trees, m)
    t = time.time()
    with pytest.raises((bundle.BundleError, rules.RuleError)):
      scan.prepare(_files(2), None, None, None, False, None, None, None, 3.0, str(path), None,
                   None, None, None)
    assert time.time() - t < 1.0, name
  np.savez(tmp_path / "plain.npz", a=np.zeros(3))
  with pytest.raises(bundle.BundleError, match="not an astrotl model bundle"):
    bundle.load_model(tmp_path / "plain.npz")
  with pytest.raises(rules.RuleError, match="no candidate rule"):
    scan.candidate_rule(bundle.load_model(tiny_bundles["classifier"]), threshold=0.5)
