"""Fine-tuning on a labelled catalog of real files: labelled splits, a training workdir
as a source (the other kinds: test_sources.py), the bundle it writes (frozen weights
untouched, loadable, scannable), the command line, configs by name and init_from a
bundle, and the front door."""

import csv
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from astrotl import bundle, data, finetune, labelled, models, scan, sources, surgery, train

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = data.sample_dir("spectra")
AFGKM = ["A", "F", "G", "K", "M"]
TAN = {"type": "spectrum", "normalise": "tan", "pixels": 3700}
SHIPPED = dict(TAN, normalise="tan_robust")  # the input of the bundled wd_stage1


def _env(devices=1):
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _sample_rows():
  with open(SAMPLE / "index.csv", newline="") as f:
    return list(csv.DictReader(f))


def _write_csv(path, rows, fields):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  return path


def _quiet(*_):
  pass


@pytest.fixture(scope="module")
def afgkm(tmp_path_factory):
  """wd_stage1 fine-tuned to A/F/G/K/M on the bundled sample with a frozen trunk."""
  out = tmp_path_factory.mktemp("afgkm") / "afgkm.npz"
  logs = []
  model = finetune(SAMPLE / "index.csv", source="wd_stage1", out=out,
                   label_column="subclass", label_transform="letter", classes="A,F,G,K,M",
                   freeze="block_.*", steps=4, batch_size=16, progress=False, log=logs.append)
  return model, out, "\n".join(logs)


def test_frozen_trunk_and_its_batchnorm_statistics_are_bit_identical(afgkm):
  model, out, logs = afgkm
  src = bundle.load_model("wd_stage1").primary.variables
  got = bundle.load_model(out).primary.variables
  for col in ("params", "batch_stats"):
    a, b = surgery.flatten(src[col]), surgery.flatten(got[col])
    blocks = [k for k in a if k.startswith("block_")]
    assert len(blocks) == (32 if col == "params" else 16)
    for k in blocks:
      assert np.asarray(a[k], np.float32).tobytes() == np.asarray(b[k], np.float32).tobytes(), k
  assert not np.array_equal(src["params"]["dense"]["kernel"], got["params"]["dense"]["kernel"])
  assert got["params"]["head"]["kernel"].shape == (256, 5)
  assert "validation: accuracy" in logs and "test: accuracy" in logs and "unreadable" in logs


def test_the_bundle_loads_predicts_and_says_where_it_came_from(afgkm):
  model, out, _ = afgkm
  assert model.classes == AFGKM and model.kind == "classifier"
  assert model.input == SHIPPED
  files = sorted(SAMPLE.rglob("*.fits.gz"))[:4]
  t = bundle.load_model(out).predict(files)
  assert len(t) == 4 and set(t["pred_class"]) <= set(AFGKM)
  np.testing.assert_allclose(sum(t[f"p_{c}"] for c in AFGKM), 1.0, atol=1e-5)
  about = model.meta["about"]
  assert about["source"]["spec"] == "wd_stage1"
  assert about["trained_by"].startswith("astrotl.finetune(")
  counts = about["training_data"]["counts"]
  assert sum(sum(c.values()) for c in counts.values()) == 58  # 59 rows, a QSO has no letter
  assert about["training_data"]["n_skipped"] == 1
  assert all(counts["validation"][c] >= 1 for c in AFGKM)
  ev = about["evaluation"]
  assert 0 <= ev["validation"]["accuracy"] <= 1 and ev["test"]["n"] == sum(counts["test"].values())
  assert set(ev["validation"]["per_class"]["A"]) == {"completeness", "purity", "support"}
  assert model.primary.temperature == ev["temperature"] > 0
  assert about["recipe"]["transfer"]["freeze"] == "block_.*"


def test_the_scan_takes_the_bundle_with_a_class_rule(afgkm, tmp_path):
  _, out, _ = afgkm
  files = sorted(SAMPLE.rglob("*.fits.gz"))[:6]
  s = scan.scan(spectra=",".join(map(str, files)), model=str(out), select="M>=0.5",
                out=tmp_path / "scan", workers=0, batch_size=8, progress=False, log=_quiet)
  assert s["n_scanned"] == 6 and s["n_errors"] == 0


def test_labelled_catalog_reports_bad_files_groups_objects_and_feeds_what_predict_feeds(tmp_path):
  rows = [dict(r, file=str(SAMPLE / r["file"])) for r in _sample_rows() if r["class"] == "STAR"]
  rows = rows[:24]
  # Two files of one star (a repeat visit): same designation, same split.
  rows[1]["designation"] = rows[0]["designation"]
  rows.append(dict(rows[2], file="missing/spec-0.fits.gz"))
  (tmp_path / "broken.fits.gz").write_bytes(b"not a fits file")
  rows.append(dict(rows[3], file="broken.fits.gz"))
  cat = _write_csv(tmp_path / "cat.csv", rows, list(rows[0]))
  logs = []
  d = labelled.load(cat, "spectrum", SHIPPED, label_column="subclass", label_transform="letter",
                    split=(0.5, 0.25, 0.25), progress=False, log=logs.append)
  assert sorted(p for p, _ in d.errors) == [str(tmp_path / "broken.fits.gz"),
                                            str(tmp_path / "missing/spec-0.fits.gz")]
  assert "2 unreadable files" in "\n".join(logs)
  where = {f: s for s, part in d.splits.items() for f in part["files"]}
  assert len(where) == 24
  assert where[rows[0]["file"]] == where[rows[1]["file"]]
  # every arrays row is what the model's own preprocessing gives for that file
  files = d.splits["train"]["files"][:3]
  _, x = bundle.load_model("wd_stage1").network_inputs(files)
  assert d.splits["train"]["x"][:3].tobytes() == x.tobytes()
  # deterministic for a seed
  again = labelled.load(cat, "spectrum", SHIPPED, label_column="subclass",
                        label_transform="letter",
                        split=(0.5, 0.25, 0.25), progress=False, log=None)
  assert again.splits["test"]["files"] == d.splits["test"]["files"]


def test_splits_keep_objects_whole_and_every_class_in_every_split():
  rng = np.random.default_rng(0)
  n = 90
  y = np.repeat([0, 1, 2], n // 3)
  name = np.array([f"J{i // 2:04d}" for i in range(n)])  # two rows per designation
  name[::7] = ""                                          # some rows have none ...
  ra = rng.uniform(0, 360, n)
  dec = rng.uniform(-60, 60, n)
  ra[1::7], dec[1::7] = ra[::7] + 0.3 / 3600, dec[::7]   # ... but sit on a designated star
  table = {"designation": name, "ra": ra, "dec": dec}
  groups, how = labelled.object_groups(table)
  assert how == "designation + sky position (2 arcsec)"
  assert groups[0] == groups[1]        # same place, one without a designation
  assert groups[2] == groups[3]        # same designation
  split = labelled.assign_splits(y, groups, np.array([0.6, 0.2, 0.2]), seed=1)
  for g in np.unique(groups):
    assert len(set(split[groups == g])) == 1
  for c in range(3):
    assert set(split[y == c]) == {0, 1, 2}
  assert np.array_equal(split, labelled.assign_splits(y, groups, np.array([0.6, 0.2, 0.2]), 1))
  assert not np.array_equal(split, labelled.assign_splits(y, groups, np.array([0.6, 0.2, 0.2]), 2))
  groups, how = labelled.object_groups({"file": np.array(["a", "b"])})
  assert how == "file" and list(groups) == [0, 1]


def _tiny(tiny_bundles, num_classes):
  """The conftest's tiny cnn1d config with `num_classes`."""
  meta = bundle.load_model(tiny_bundles["classifier"]).primary.meta
  return dict(meta["config"], num_classes=num_classes)


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory, tiny_bundles):
  """An orbax workdir of `train.fit`: the conftest's tiny cnn1d, 3 classes, 2 steps."""
  path = tmp_path_factory.mktemp("work")
  c = train.default_config()
  c.model = "cnn1d"
  c.model_config = _tiny(tiny_bundles, 3)
  c.num_steps, c.batch_size, c.progress = 2, 8, False
  rng = np.random.default_rng(0)
  split = {"x": rng.random((16, 3700), np.float32), "y": rng.integers(0, 3, 16)}
  train.fit(c, path, {"train": split})
  return path


def test_a_training_workdir_is_a_source(tiny_workdir):
  # the other kinds of source are in test_sources.py; this one reuses the workdir here
  m = sources.load_source(tiny_workdir)
  assert m.primary.meta["model"] == "cnn1d" and m.input == TAN and len(m.classes) == 3
  from astrotl import checkpoint
  want = checkpoint.load_variables(tiny_workdir)
  for k, v in surgery.flatten(want).items():
    np.testing.assert_array_equal(surgery.flatten(m.primary.variables)[k], v)


def test_command_line_from_a_training_workdir_then_errors_in_one_line(tmp_path, tiny_workdir):
  rows = [dict(r, file=str(SAMPLE / r["file"])) for r in _sample_rows() if r["class"] == "STAR"]
  for r in rows:
    r["label"] = "cool" if r["subclass"][:1] in "KMd" else "hot"
  rows = [r for r in rows if r["label"] == "cool"][:8] + [r for r in rows if r["label"] == "hot"][:8]
  cat = _write_csv(tmp_path / "cat.csv", rows, ["file", "label", "designation", "ra", "dec"])
  # The workdir was written on 8 devices; the command runs on 1.
  args = [sys.executable, "-m", "astrotl.finetune", f"--catalog={cat}",
          f"--source={tiny_workdir}", "--n_blocks=1", "--lr_decay=0.5", "--steps=2",
          "--batch_size=8", "--out=tiny.npz", "--progress=false"]
  r = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "validation: accuracy" in r.stdout and "0 unreadable files" in r.stdout
  m = bundle.load_model(tmp_path / "tiny.npz")
  assert m.classes == ["cool", "hot"] and m.input == TAN
  assert len(m.predict(rows[0]["file"])) == 1
  about = m.meta["about"]
  assert about["trained_by"].startswith("python -m astrotl.finetune --catalog=")
  assert about["recipe"]["transfer"]["n_blocks"] == 1
  r = subprocess.run(args[:4] + ["--source=wd_two_stage"], cwd=tmp_path, env=_env(),
                     capture_output=True, text=True, timeout=600)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1 and "wd_two_stage:stage1" in lines[0], r.stderr


def test_init_from_a_bundle(tmp_path, tiny_bundles):
  c = train.default_config()
  c.model = "cnn1d"
  c.model_config = _tiny(tiny_bundles, 3)
  c.num_steps, c.batch_size, c.progress = 2, 8, False
  c.transfer.init_from = f"{tiny_bundles['shared']}:stage2"
  c.transfer.freeze = "block_.*"
  rng = np.random.default_rng(0)
  split = {"x": rng.random((16, 3700), np.float32), "y": rng.integers(0, 3, 16)}
  r = train.fit(c, tmp_path / "w", {"train": split})
  src = surgery.flatten(bundle.load_model(tiny_bundles["shared"]).networks["stage2"].variables)
  got = surgery.flatten(r.best_variables)
  blocks = [k for k in src if "block_" in k]
  assert blocks and all(np.array_equal(got[k], src[k]) for k in blocks)
  assert not np.array_equal(got["params/dense/kernel"], src["params/dense/kernel"])


def test_configs_by_name_from_anywhere(tmp_path, monkeypatch):
  from astrotl import configs
  monkeypatch.chdir(tmp_path)
  assert configs.resolve("default:steps=3") == f"{REPO}/astrotl/configs/default.py:steps=3"
  assert configs.resolve("astrotl/configs/wd_search.py") == f"{REPO}/astrotl/configs/wd_search.py"
  with pytest.raises(ValueError, match="known names: .*default"):
    configs.resolve("nonesuch")
  assert models.defaults("cnn1d", dense_width=256)["dense_width"] == 256
  # The README's command from another directory, a model field overridden on the command
  # line, starting from a bundled model with its trunk frozen.
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "d.npz", x_train=rng.random((16, 3700), np.float32),
           y_train=rng.integers(0, 5, 16))
  r = subprocess.run(
      [sys.executable, "-m", "astrotl.main", "--config=default:data=d.npz,steps=2,batch=8,"
       "num_classes=5", "--workdir=w", "--config.model_config.dense_width=256",
       "--config.transfer.init_from=wd_stage1", "--config.transfer.freeze=block_.*",
       "--config.progress=False"],
      cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  from astrotl import checkpoint
  got = surgery.flatten(checkpoint.load_variables(tmp_path / "w"))
  src = surgery.flatten(bundle.load_model("wd_stage1").primary.variables)
  assert got["params/dense/kernel"].shape == (13140, 256)
  assert all(np.array_equal(got[k], src[k]) for k in src if "block_" in k)
  record = checkpoint.load_record(tmp_path / "w")
  assert json.loads(record["config"])["model_config"]["dense_width"] == 256


def test_front_door_is_lazy_and_lists_its_names():
  code = ("import sys, astrotl; assert 'jax' not in sys.modules, 'jax imported'; "
          "print(' '.join(dir(astrotl)))")
  r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                     cwd="/", timeout=120)
  assert r.returncode == 0, r.stderr
  names = set(r.stdout.split())
  assert {"read_spectrum", "load_model", "finetune", "features", "surgery", "models",
          "scan"} <= names
  import astrotl
  assert astrotl.read_spectrum is astrotl.io.read and astrotl.load_model is bundle.load_model
  assert callable(astrotl.finetune) and astrotl.finetune.__doc__


def test_labelled_images(tmp_path, shared_data):
  root = shared_data / "galaxies" / "sdss_gz1_small"
  with open(root / "labels.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  rows = [r for r in rows if r["class_name"] == "elliptical"][:6] + \
      [r for r in rows if r["class_name"] != "elliptical"][:6]
  with zipfile.ZipFile(root / "images_106px.zip") as z:
    for r in rows:
      (tmp_path / r["file"]).write_bytes(z.read(r["file"]))
  (tmp_path / "truncated.jpg").write_bytes(b"\xff\xd8\xff")
  rows.append(dict(rows[0], file="truncated.jpg", objid="1"))
  cat = _write_csv(tmp_path / "cat.csv", rows, ["objid", "class_name", "file"])
  d = labelled.load(cat, "image", {"type": "image", "size": 32}, label_column="class_name",
                    group_column="objid", progress=False, log=None)
  assert [p for p, _ in d.errors] == [str(tmp_path / "truncated.jpg")]
  assert d.splits["train"]["x"].shape[1:] == (32, 32, 3)
  assert sum(len(s["y"]) for s in d.splits.values()) == 12
  assert 0 <= d.splits["train"]["x"].min() and d.splits["train"]["x"].max() <= 1


def test_labelled_light_curves(tmp_path, shared_data):
  pytest.importorskip("astrotl.lightcurves")  # on the lightcurves branch
  from astrotl.io import lightcurve
  if not hasattr(lightcurve, "read_curve"):
    pytest.skip("astrotl.io.lightcurve.read_curve is not on this branch yet")
  folder = shared_data / "lightcurves" / "catalina_lcml" / "periodic"
  files = sorted(folder.glob("*.csv"))
  rows = [{"file": f.name, "label": f.name.rsplit("_", 1)[0]} for f in files]
  rows.append({"file": "missing.csv", "label": "rr_lyrae"})
  cat = _write_csv(tmp_path / "cat.csv", rows, ["file", "label"])
  d = labelled.load(cat, "lightcurve", root=folder, progress=False, log=None)
  assert d.classes == ["delta_scuti", "rr_lyrae", "w_uma"]
  assert d.splits["train"]["x"].shape[1] == 16
  assert any(p.endswith("missing.csv") for p, _ in d.errors)
  model = finetune(cat, source="upsilont", out=tmp_path / "lc.npz", root=folder, steps=2,
                   batch_size=8, progress=False, log=None)
  assert model.classes == d.classes and model.input["type"] == "lightcurve"


def test_a_bad_regex_flag_fails_in_one_line_before_anything_is_read(tmp_path):
  # from Python: the catalog does not even exist, yet the pattern is what is reported
  with pytest.raises(ValueError, match=r"^--freeze='block_\[': not a regular expression "
                                       r"\(unterminated character set at position 6\)$"):
    finetune(tmp_path / "nonexistent.csv", freeze="block_[", log=None)
  with pytest.raises(ValueError, match=r"^--skip='head/\(': not a regular expression"):
    finetune(tmp_path / "nonexistent.csv", skip=("head/.*", "head/("), log=None)
  with pytest.raises(ValueError, match="--label_transform='leter'"):
    finetune(tmp_path / "nonexistent.csv", label_transform="leter", log=None)
  r = subprocess.run([sys.executable, "-m", "astrotl.finetune", f"--catalog={SAMPLE / 'index.csv'}",
                      "--label_column=subclass", "--freeze=block_[", "--out=x.npz"],
                     cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  assert "--freeze='block_['" in lines[0] and "unterminated character set" in lines[0]
  assert "reading" not in r.stdout + r.stderr and not (tmp_path / "x.npz").exists()
