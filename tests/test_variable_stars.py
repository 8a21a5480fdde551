"""variable_stars builder, UPSILoN-T transfer to a new head, and re-fitted preprocessing."""

import sys

import jax
import numpy as np
import pytest

from astrotl import surgery, train
from astrotl.datasets import as_numpy, variable_stars
from astrotl.io import lightcurve, weights
from astrotl.preprocess import features as F

NAME = "variable_stars/eros1_sample"


@pytest.fixture(scope="module")
def built(shared_data, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = variable_stars.build("eros1_sample", shared_data / "lightcurves", data_dir)
  splits = {s: as_numpy(NAME, s, data_dir=str(data_dir)) for s in builder.info.splits}
  return builder, splits


def test_builder_round_trips_the_sample(built, shared_data):
  builder, splits = built
  assert "tensorflow" not in sys.modules
  assert builder.info.file_format.value == "array_record"
  md = builder.info.metadata
  assert md["classes"] == list(variable_stars.EROS1_CLASSES) and md["unreadable"] == 0
  assert md["feature_order"] == list(F.FEATURES)
  # 12 per class from the RAMP train file (9 train + 3 validation), 4 from its test file.
  counts = {s: np.bincount(d["label"], minlength=4).tolist() for s, d in splits.items()}
  assert counts == {"train": [9] * 4, "validation": [3] * 4, "test": [4] * 4}
  assert md["counts"]["test"] == dict.fromkeys(variable_stars.EROS1_CLASSES, 4)

  stars = {}
  for part in ("train", "test"):
    stars.update({s.id: s for s in lightcurve.eros1_ramp(shared_data / "lightcurves" /
                                                         "eros1_ramp", part)[0]})
  checked = 0
  for split, d in splits.items():
    for i, star_id in enumerate(d["id"]):
      star = stars[star_id]
      assert d["class"][i] == star.label
      assert variable_stars.EROS1_CLASSES[d["label"][i]] == star.label
      for band in ("r", "b"):
        t, m, e = star.bands[band]
        n = len(t)
        mask = d[f"mask_{band}"][i]
        assert mask[:n].all() and not mask[n:].any()
        np.testing.assert_array_equal(d[f"time_{band}"][i][:n], t)
        np.testing.assert_array_equal(d[f"mag_{band}"][i][:n], m.astype(np.float32))
        np.testing.assert_array_equal(d[f"err_{band}"][i][:n], e.astype(np.float32))
        assert d[f"reason_{band}"][i] == 0
      if checked < 2:   # stored features against the float64 reference implementation
        ref = F.extract(*star.bands["r"])
        np.testing.assert_allclose(d["features_r"][i], [ref[k] for k in F.FEATURES],
                                   rtol=1e-4, atol=1e-5, err_msg=star_id)
        checked += 1


def test_stratified_split_is_deterministic_and_stratified():
  ids = [f"star{i}" for i in range(200)]
  labels = np.repeat([0, 1, 2, 3], [100, 50, 40, 10])
  cuts = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
  a = variable_stars.stratified_split(ids, labels, cuts)
  b = variable_stars.stratified_split(ids[::-1], labels[::-1], cuts)
  assert {k: sorted(ids[i] for i in v) for k, v in a.items()} == \
         {k: sorted(ids[::-1][i] for i in v) for k, v in b.items()}
  assert sorted(sum(a.values(), [])) == list(range(200))
  assert np.bincount(labels[a["train"]]).tolist() == [80, 40, 32, 8]
  assert np.bincount(labels[a["test"]]).tolist() == [10, 5, 4, 1]


def test_small_set_readers(shared_data):
  base = shared_data / "lightcurves"
  cat, skipped = lightcurve.catalina_csv(base / "catalina_lcml" / "periodic")
  assert skipped == [] and len(cat) == 30
  assert sorted({s.label for s in cat}) == ["DSCT", "RR Lyrae", "W UMa"]
  macho, skipped = lightcurve.macho_csv(base / "macho_rrc_lcml" / "c2_f1.csv.gz")
  assert skipped == [] and len(macho) == 51 and {s.label for s in macho} == {"RRL c"}
  for s in macho:   # flagged rows (-99 mags, huge errors) are gone
    t, m, e = s.bands["r"]
    assert (m > -90).all() and ((e > 0) & (e < 1)).all() and (np.diff(t) >= 0).all()
  with pytest.raises(lightcurve.LightCurveError, match="no such file"):
    lightcurve.eros1_ramp(base, "train")


def _features(split):
  return {k: split["features_r"][:, i].astype(np.float64) for i, k in enumerate(F.FEATURES)}


def test_fit_preprocess_with_upsilont_statistics_reproduces_upsilont_inputs(built):
  _, splits = built
  _, pre = weights.upsilont()
  feats = _features(splits["train"])
  x_up = F.upsilont_inputs(feats, pre)
  refit = F.fit_preprocess(feats, pre, mins=pre["log10_min_offsets"])
  same = dict(refit, norm_median=pre["norm_median"], norm_std=pre["norm_std"])
  np.testing.assert_array_equal(F.upsilont_inputs(feats, same), x_up)
  # Only the standardisation differs: both undo to the same log-step values.
  x_new = F.upsilont_inputs(feats, refit)
  np.testing.assert_allclose(x_new * refit["norm_std"] + refit["norm_median"],
                             x_up * pre["norm_std"] + pre["norm_median"], rtol=1e-12)
  np.testing.assert_allclose(np.median(x_new, 0), 0.0, atol=1e-12)
  np.testing.assert_allclose(np.std(x_new, 0), 1.0, rtol=1e-12)


def test_fit_preprocess_refits_offsets_on_the_target(built):
  _, splits = built
  _, pre = weights.upsilont()
  feats = _features(splits["train"])
  refit = F.fit_preprocess(feats, pre)
  assert refit["classes"] == pre["classes"] and refit["feature_order"] == pre["feature_order"]
  x = F.upsilont_inputs(feats, refit)
  for key, value in refit["log10_min_offsets"].items():
    name = key[len("min_"):]
    assert value == feats[name].min()
    j = pre["feature_order"].index(name)
    lowest = x[np.argmin(feats[name]), j]   # the minimum maps to log10(1e-10), as UPSILoN-T
    assert lowest == pytest.approx((-10.0 - refit["norm_median"][j]) / refit["norm_std"][j])
  flat = dict(feats, period=np.full(len(feats["period"]), 0.5))
  with pytest.raises(ValueError, match=r"\['period'\] are constant"):
    F.fit_preprocess(flat, pre)
  with pytest.raises(ValueError, match="mins must name"):
    F.fit_preprocess(feats, pre, mins={"min_period": 0.1})


def _fit(tmp_path, splits, transfer, pretrained, steps=4):
  _, pre = weights.upsilont()
  tr = splits["train"]
  x = F.upsilont_inputs(_features(tr), F.fit_preprocess(_features(tr), pre)).astype(np.float32)
  c = train.default_config()
  c.model = "mlp"
  c.model_config = {"num_classes": 4, "first_eps": weights.UPSILONT_FIRST_EPS}
  c.batch_size, c.num_steps, c.progress = 16, steps, False
  c.checkpoint_every, c.log_every = 1000, 1
  c.transfer.update(transfer)
  return train.fit(c, tmp_path, {"train": {"x": x, "y": tr["label"].astype(np.int32)}},
                   pretrained=pretrained)


def test_transfer_to_a_new_head_on_eight_devices(built, tmp_path):
  _, splits = built
  assert len(jax.devices()) == 8
  up, _ = weights.upsilont()
  up_p, up_s = surgery.flatten(up["params"]), surgery.flatten(up["batch_stats"])

  r = _fit(tmp_path / "head_only", splits, {"freeze": "block_.*"}, up)
  p = surgery.flatten(r.state.params)
  s = surgery.flatten(r.state.batch_stats)
  assert p["head/dense/kernel"].shape == (256, 4) and s["head/bn/mean"].shape == (4,)
  assert np.isfinite([h["loss"] for h in r.history]).all()
  for name, value in p.items():
    if name.startswith("head/"):
      continue
    np.testing.assert_array_equal(np.asarray(value), up_p[name], err_msg=name)
  for name, value in s.items():
    if not name.startswith("head/"):
      np.testing.assert_array_equal(np.asarray(value), up_s[name], err_msg=name)
  assert np.abs(np.asarray(p["head/dense/kernel"])).max() > 0   # the zero-started head learned

  r = _fit(tmp_path / "all", splits, {}, up)
  p = surgery.flatten(r.state.params)
  assert not np.array_equal(np.asarray(p["block_0/dense/kernel"]), up_p["block_0/dense/kernel"])
  assert not np.array_equal(np.asarray(surgery.flatten(r.state.batch_stats)["block_1/bn/mean"]),
                            up_s["block_1/bn/mean"])
