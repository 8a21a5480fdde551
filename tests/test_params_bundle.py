"""A stellar-parameter bundle (3-target regression, like experiments/spectral_subtype.py's
lamost_params): training on several targets, units in the description, in predict's table
and in the scan's parquet, FITS and VOTable outputs."""

import warnings

from astropy.io import fits
from astropy.table import Table
import numpy as np
import pytest

from astrotl import bundle, checkpoint, data, models, scan, train, validate

TARGETS = ["teff", "logg", "feh"]
UNITS = ["K", "dex", "dex"]
SCALE = [[6000.0, 800.0], [4.0, 0.5], [-0.3, 0.3]]
TINY = {"widths": [4, 4, 4, 4], "blocks_per_stage": 1, "kernel_size": 3, "num_classes": 3}
SPEC = {"type": "spectrum", "normalise": "continuum", "clip": [-0.5, 3.0], "bin": 2}


def _files(n):
  return [str(r["path"]) for r in data.sample_index("spectra")][:n]


def _meta(**net):
  main = {"model": "resnet1d", "config": dict(TINY), "output": "regression",
          "targets": TARGETS, "units": UNITS, "scale": SCALE, **net}
  return {"format": bundle.FORMAT, "name": "tiny_params", "input": SPEC,
          "networks": {"main": main}, "rule": None}


@pytest.fixture(scope="module")
def params_bundle(tmp_path_factory):
  x = np.zeros((1, 3909 // 2), np.float32)
  variables = train.init_variables(models.get("resnet1d", **TINY), x, 0)
  path = tmp_path_factory.mktemp("params") / "tiny_params.npz"
  return bundle.Model({"main": variables}, _meta()).save(path)


def test_predictions_come_out_in_physical_units_with_their_units(params_bundle):
  m = bundle.load_model(params_bundle)
  assert m.kind == "regressor"
  cols = m.columns()
  assert list(cols) == TARGETS
  assert [cols[t][1] for t in TARGETS] == UNITS
  assert "(dex)" in cols["logg"][0]  # the description names the unit too
  files = _files(4)
  t = m.predict(files)
  assert [t[k].unit for k in TARGETS] == ["K", "dex", "dex"]
  _, x = m.network_inputs(files)
  raw = np.asarray(m.primary.model.apply(m.primary.variables, x, train=False))
  want = raw * np.array(SCALE)[:, 1] + np.array(SCALE)[:, 0]
  got = np.stack([np.asarray(t[k]) for k in TARGETS], 1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
  assert np.all(np.abs(got[:, 0] - 6000.0) < 10 * 800.0)  # Teff in K, not standardised


def test_scan_outputs_carry_the_units(tmp_path, params_bundle):
  out = tmp_path / "scan"
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # writing 'dex' to FITS and VOTable warns of nothing
    scan.scan(spectra=_files(4), out=out, model=str(params_bundle), select="0<=teff<=100000",
              workers=0, progress=False, log=lambda *a: None)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    parquet = Table.read(out / "predictions.parquet")
    vot = Table.read(out / "candidates.vot")
  for t in (parquet, vot):
    assert [str(t[k].unit) for k in TARGETS] == UNITS
  assert len(vot) == 4
  header = fits.getheader(out / "candidates.fits", 1)
  names = [header[f"TTYPE{i}"] for i in range(1, header["TFIELDS"] + 1)]
  k = {n: names.index(n) + 1 for n in TARGETS}
  assert header[f"TUNIT{k['teff']}"] == "K"
  # 'dex' is no FITS standard unit, which astropy would drop: written as given all the
  # same, and the column's comment names it too.
  assert header[f"TUNIT{k['logg']}"] == header[f"TUNIT{k['feh']}"] == "dex"
  assert "(dex)" in header[f"TCOMM{k['logg']}"] and "(dex)" in header[f"TCOMM{k['feh']}"]


@pytest.mark.parametrize("units", [["K", "dex"], ["K", "dex", 3], "K", ["K", "dex", "x" * 40]])
def test_units_must_be_one_string_per_target(units):
  with pytest.raises(validate.BundleError) as e:
    validate.check_meta(_meta(units=units), "p.npz")
  assert str(e.value).startswith("p.npz: networks.main.units: expected a list of 3 unit")


def test_bad_units_in_a_file_are_refused_when_loading(tmp_path, params_bundle):
  trees, meta = checkpoint.load_bundle(params_bundle)
  meta["networks"]["main"]["units"] = ["K"]
  path = tmp_path / "bad.npz"
  checkpoint.save_bundle(path, trees, meta)
  with pytest.raises(bundle.BundleError, match=r"bad\.npz: networks\.main\.units"):
    bundle.load_model(path)


def test_fit_trains_several_regression_targets_at_once(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(24, 64)).astype(np.float32)
  y = np.stack([x[:, :8].mean(1), x[:, 8:16].mean(1), -x[:, :4].mean(1)], 1).astype(np.float32)
  c = train.merged_config(dict(model="resnet1d", model_config=dict(TINY), loss="logcosh",
                               batch_size=8, num_steps=4, eval_every=2, log_every=2,
                               early_stopping_metric="val_mae", progress=False))
  r = train.fit(c, tmp_path, {"train": {"x": x[:16], "y": y[:16]},
                              "validation": {"x": x[16:], "y": y[16:]}})
  evals = [h for h in r.history if "val_mae" in h]
  assert len(evals) == 2 and all(np.isfinite(h["val_mae"]) for h in evals)
  pred = train.predict(train.build_model(c), r.best_variables, x[16:])
  assert pred.shape == (8, 3)
  mae = np.mean(np.abs(pred - y[16:]))
  assert abs(mae - r.best["val_mae"]) < 1e-5  # val_mae is over all three targets


def test_the_shipped_lamost_params_orders_the_sample_stars_by_their_letter():
  """The bundled model on the package's real LAMOST A, F and G stars (none of them in its
  training set, which is DR10 only): Teff falls from A to F to G, as their MK types say."""
  rows = [r for r in data.sample_index("spectra") if str(r.get("subclass") or "")[:1] in "AFG"
          and r.get("subclass")]
  t = bundle.load_model("lamost_params").predict([str(r["path"]) for r in rows])
  letter = {str(r["path"]): r["subclass"][0] for r in rows}
  teff = {k: np.median([v for n, v in zip(t["name"], t["teff"]) if letter[n] == k]) for k in "AFG"}
  assert all(np.isfinite(t[k]).all() for k in TARGETS)
  # medians here: A 7.5 kK, F 6.3 kK, G 5.6 kK (F and G overlap: F9 and G0 differ little)
  assert 6500 < teff["A"] < 9500 and teff["A"] > teff["F"] + 500 and teff["F"] > teff["G"] + 100
  assert 3.0 < np.median(t["logg"]) < 4.8 and -1.0 < np.median(t["feh"]) < 0.5
