"""lamost_lrs TFDS builder: the bundled sample and a small real mirror, built offline."""

import csv
import math
import pathlib
import shutil
import socket
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from astrotl import data
from astrotl.datasets import as_numpy, lamost_lrs
from astrotl.io import SpectrumError
from astrotl.preprocess import spectra

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError("network access in a test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


def _build(tmp_path, config, **kwargs):
  builder = lamost_lrs.Builder(config=config, data_dir=str(tmp_path / "tfds"), **kwargs)
  builder.download_and_prepare()
  return builder


def _all_splits(tmp_path, name):
  info = tfds.builder(name, data_dir=str(tmp_path / "tfds")).info
  return {split: as_numpy(name, split, str(tmp_path / "tfds")) for split in info.splits}


def test_sample_builds_offline_and_round_trips(tmp_path, no_network):
  builder = _build(tmp_path, "sample")
  assert "tensorflow" not in sys.modules
  assert builder.info.file_format.value == "array_record"
  assert builder.info.metadata["classes"] == list(lamost_lrs.CLASSES)
  assert builder.info.metadata["unreadable_files"] == 0 and builder.skipped == []
  rows = {pathlib.Path(r["file"]).name: r for r in data.sample_index()}
  splits = _all_splits(tmp_path, "lamost_lrs/sample")
  assert sum(len(s["file"]) for s in splits.values()) == len(rows)
  seen = set()
  for split, arrays in splits.items():
    assert arrays["flux"].dtype == np.float32 and arrays["flux"].shape[1:] == (spectra.NPIX,)
    assert arrays["mask"].dtype == bool and arrays["label"].dtype == np.int64
    for i, name in enumerate(arrays["file"]):
      seen.add(name)
      row = rows[name]
      expected = lamost_lrs.example(row["path"])
      for key in ("flux", "ivar", "mask"):
        np.testing.assert_array_equal(arrays[key][i], expected[key], err_msg=f"{name} {key}")
      assert arrays["label"][i] == expected["label"]
      assert arrays["subclass"][i] == row["subclass"] and arrays["class"][i] == row["class"]
      assert arrays["obsid"][i] == (int(row["obsid"]) if row["obsid"] else -1)
      assert arrays["snr_g"][i] == pytest.approx(float(row["snrg"]), rel=1e-6)
      assert arrays["ra"][i] == pytest.approx(float(row["ra"]))
      letter = spectra.spectral_letter(row["subclass"])
      if row["class"] == "STAR":
        assert lamost_lrs.CLASSES[arrays["label"][i]] == letter
        assert math.floor(arrays["subtype"][i] / 10) * 10 == spectra.SUBTYPE_BASE[letter]
      else:  # the QSO
        assert arrays["label"][i] == -1 and np.isnan(arrays["subtype"][i])
      key = (f"desig:{row['designation']}" if row["designation"]
             else f"obsid:{row['obsid']}")
      assert lamost_lrs.split_of(key) == split
  assert seen == set(rows)


def test_as_numpy_subset_and_empty(tmp_path):
  _build(tmp_path, "sample")
  full = as_numpy("lamost_lrs/sample", "train", str(tmp_path / "tfds"))
  part = as_numpy("lamost_lrs/sample", "train", str(tmp_path / "tfds"), indices=[2, 0],
                  features=["flux", "file"])
  assert set(part) == {"flux", "file"}
  np.testing.assert_array_equal(part["flux"], full["flux"][[2, 0]])
  empty = as_numpy("lamost_lrs/sample", "train", str(tmp_path / "tfds"), indices=[])
  assert empty["flux"].shape == (0, spectra.NPIX) and empty["file"].shape == (0,)


def _mirror(shared_data, root, n=24):
  """A LAMOST-archive-like folder of real DR8 files, its catalog, and one damaged file."""
  src = shared_data / "spectra"
  with open(src / "catalogs" / "jhliu_dr8_snrg30_grouped_ccf_test.csv", newline="") as f:
    reader = csv.DictReader(f)
    fields, rows = reader.fieldnames, list(reader)[:n]
  for row in rows:
    target = root / row["combined_file"]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "lamost_dr8v1_image_format" / target.name, target)
  broken = root / rows[0]["combined_file"]
  broken.write_bytes(broken.read_bytes()[:5000])
  extra = root / "20111024" / "F5902" / "spec-55859-F5902_sp16-250.fits.gz"
  extra.write_bytes(b"")  # not in the catalog, so never read when the catalog is used
  with open(root / "catalog.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    missing = dict(rows[1], combined_obsid="999", combined_file="x/spec-1-X_sp01-001.fits.gz")
    writer.writerow(missing)
  return rows


def test_mirror_with_catalog_skips_and_counts_bad_files(shared_data, tmp_path, no_network):
  root = tmp_path / "mirror"
  rows = _mirror(shared_data, root)
  builder = lamost_lrs.Builder(config="mirror", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  assert [pathlib.Path(p).name for p, _ in builder.skipped] == [
      pathlib.Path(rows[0]["combined_file"]).name]
  assert "truncated" in builder.skipped[0][1]
  assert builder.info.metadata["unreadable_files"] == 1
  splits = _all_splits(tmp_path, "lamost_lrs/mirror")
  files = np.concatenate([s["file"] for s in splits.values()])
  obsids = np.concatenate([s["obsid"] for s in splits.values()])
  assert sorted(files) == sorted(pathlib.Path(r["combined_file"]).name for r in rows[1:])
  assert sorted(obsids) == sorted(int(r["combined_obsid"]) for r in rows[1:])
  for split, arrays in splits.items():
    for obsid in arrays["obsid"]:
      assert lamost_lrs.split_of(f"obsid:{obsid}") == split


def test_mirror_without_catalog_reads_every_spec_file(shared_data, tmp_path):
  root = tmp_path / "mirror"
  rows = _mirror(shared_data, root, n=6)
  (root / "catalog.csv").unlink()
  sources = lamost_lrs.lamost_lrs_dataset_builder.mirror_sources(root)
  assert len(sources) == 7 and all(s.labels == {} for s in sources)
  good, bad = [], []
  for s in sources:
    try:
      good.append(lamost_lrs.example(s.path))
    except SpectrumError as e:
      bad.append(e.reason)
  assert len(good) == 5 and len(bad) == 2
  assert {g["file"] for g in good} == {pathlib.Path(r["combined_file"]).name for r in rows[1:]}


def test_mirror_errors(tmp_path):
  mirror_sources = lamost_lrs.lamost_lrs_dataset_builder.mirror_sources
  with pytest.raises(FileNotFoundError, match="not found"):
    mirror_sources(tmp_path / "absent")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no spec-"):
    mirror_sources(tmp_path / "empty")


def test_split_of_is_stable_and_proportioned():
  names = [lamost_lrs.split_of(f"obsid:{i}") for i in range(20000)]
  assert names == [lamost_lrs.split_of(f"obsid:{i}") for i in range(20000)]
  share = {s: names.count(s) / len(names) for s in ("train", "validation", "test")}
  assert share["train"] == pytest.approx(0.8, abs=0.015)
  assert share["validation"] == pytest.approx(0.1, abs=0.01)
  assert share["test"] == pytest.approx(0.1, abs=0.01)


def test_package_never_refers_to_shared_data():
  for path in (REPO / "astrotl").rglob("*.py"):
    text = path.read_text()
    assert "/work/shared" not in text and "../shared" not in text, path


def test_command_line_builds_the_sample(tmp_path, capsys):
  from astrotl.datasets.lamost_lrs.__main__ import main

  builder = main(["--config=sample", f"--data_dir={tmp_path}"])
  assert sum(s.num_examples for s in builder.info.splits.values()) == len(data.sample_index())
  assert "unreadable files skipped: 0" in capsys.readouterr().out


def test_mirror_with_beam(shared_data, tmp_path):
  pytest.importorskip("apache_beam")  # optional extra `beam`; not installed in CI
  from astrotl.datasets.lamost_lrs.__main__ import main

  root = tmp_path / "mirror"
  rows = _mirror(shared_data, root, n=12)
  builder = main(["--config=mirror", f"--manual_dir={root}", f"--data_dir={tmp_path / 'tfds'}",
                  "--beam_options=runner=DirectRunner"])
  assert builder.info.metadata["unreadable_files"] == 1
  splits = _all_splits(tmp_path, "lamost_lrs/mirror")
  files = sorted(np.concatenate([s["file"] for s in splits.values()]))
  assert files == sorted(pathlib.Path(r["combined_file"]).name for r in rows[1:])


def test_fit_reads_rows_on_demand_like_arrays(tmp_path):
  """train.fit on array_record rows read per batch equals fit on the same arrays."""
  from astrotl import datasets, train
  from astrotl.datasets import lamost_lrs
  from astrotl.preprocess import spectra
  import tensorflow_datasets as tfds
  data_dir = tmp_path / "tfds"
  lamost_lrs.Builder(config="sample", data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig())
  tan = lambda flux, mask: spectra.tan_normalise(flux, mask, npix=512).astype(np.float32)
  rows = datasets.Rows("lamost_lrs/sample", "train", str(data_dir), x=("flux", "mask"),
                       transform=tan)
  arrays = datasets.as_numpy("lamost_lrs/sample", "train", str(data_dir))
  dense = {"x": tan(arrays["flux"], arrays["mask"]), "y": arrays["label"]}
  cfg = dict(model="mlp", model_config={"num_classes": 7, "widths": (16, 16, 16)},
             batch_size=8, num_steps=4, log_every=1, progress=False, checkpoint_every=100)
  a = train.fit(cfg, tmp_path / "a", {"train": rows})
  b = train.fit(cfg, tmp_path / "b", {"train": dense})
  assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], rel=1e-6)


def test_simulated_config_adds_white_dwarfs_from_each_splits_stars(tmp_path):
  from astrotl import datasets
  from astrotl.datasets import lamost_lrs
  lamost_lrs.Builder(config="simulated", data_dir=str(tmp_path)).download_and_prepare(
      download_config=tfds.download.DownloadConfig())
  total_real = 0
  for split in ("train", "validation", "test"):
    d = datasets.as_numpy("lamost_lrs/simulated", split, data_dir=str(tmp_path),
                          features=("label", "subclass", "file", "flux", "mask"))
    sim = np.char.startswith(d["file"], "simulated:")
    n_real = int((~sim).sum())
    total_real += n_real
    assert int((d["subclass"] == "DA").sum()) == int((d["label"][~sim] >= 0).sum())
    assert np.all(d["label"][sim] == lamost_lrs.CLASSES.index("WD"))
    assert np.all(np.isfinite(d["flux"][sim]))
  assert total_real == len(data.sample_index("spectra"))
