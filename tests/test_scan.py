"""The scan: outputs, bad input, resume after SIGKILL, multi-process, device preprocessing."""

import csv
import gzip
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from astrotl import checkpoint, data, parallel, scan, train
from astrotl.io import batch as io_batch
from astrotl.preprocess import spectra

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["A", "F", "G", "K", "M", "WD", "WD+M"]
TINY = {"channels": (4, 4, 4, 4, 4, 4, 4, 4), "dense_width": 8}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  """A small random two-stage bundle: fast to compile, same code path as the real one."""
  path = tmp_path_factory.mktemp("model") / "tiny.npz"
  from astrotl import models
  x = np.zeros((1, 3700), np.float32)
  v1 = train.init_variables(models.get("cnn1d", num_classes=7, **TINY), x, 0)
  v2 = train.init_variables(models.get("cnn1d", num_classes=2, **TINY), x, 1)
  meta = {"stage1": {"model": "cnn1d", "config": dict(TINY, num_classes=7), "classes": CLASSES,
                     "temperature": 1.3},
          "stage2": {"model": "cnn1d", "config": dict(TINY, num_classes=2),
                     "classes": ["other", "WD"], "positive_index": 1, "temperature": 0.7},
          "input_pixels": 3700}
  checkpoint.save_bundle(path, {"stage1": v1, "stage2": v2}, meta)
  return path


def _env(devices=2):
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _scan(args, devices=2, check=True):
  r = subprocess.run([sys.executable, "-m", "astrotl.scan", "--progress=false", *args],
                     env=_env(devices), capture_output=True, text=True, timeout=600)
  if check:
    assert r.returncode == 0, r.stderr[-3000:]
  return r


def _predictions(out):
  t = pq.read_table(pathlib.Path(out) / "predictions.parquet").to_pydict()
  order = np.argsort(t["file"])
  return {k: np.asarray(v)[order] for k, v in t.items()}


def _errors(out):
  with open(pathlib.Path(out) / "errors.csv", newline="") as f:
    return {os.path.basename(r["file"]): r["reason"] for r in csv.DictReader(f)}


def test_device_preprocessing_equals_host_preprocessing(tiny_model):
  model = scan.ScanModel.load(str(tiny_model))
  files = [str(r["path"]) for r in data.sample_index("spectra")[:6]]
  good, arrays, _, errors = io_batch.decode_many(files)
  assert not errors and good == list(range(6))
  mesh = parallel.make_mesh()
  fn = model.make_fn(mesh)
  batch, _ = parallel.pad_rows(arrays, 8)
  p1, pwd = fn(parallel.replicate(model.variables, mesh),
               *(parallel.shard_batch({k: batch[k]}, mesh, 8)[k] for k in ("u", "flux", "ivar", "mask")))
  from astrotl import io as aio, models
  xs = []
  for f in files:
    s = aio.read(f)
    flux, _, bad = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    xs.append(spectra.tan_normalise(flux, bad))
  x = np.stack(xs).astype(np.float32)
  z1 = train.predict(models.get("cnn1d", num_classes=7, **TINY), model.variables["stage1"], x)
  z2 = train.predict(models.get("cnn1d", num_classes=2, **TINY), model.variables["stage2"], x)
  want1 = np.exp(z1 / 1.3) / np.exp(z1 / 1.3).sum(-1, keepdims=True)
  want2 = (np.exp(z2 / 0.7) / np.exp(z2 / 0.7).sum(-1, keepdims=True))[:, 1]
  np.testing.assert_allclose(np.asarray(p1)[:6], want1, atol=2e-5)
  np.testing.assert_allclose(np.asarray(pwd)[:6], want2, atol=2e-5)


def test_bad_files_are_reported_and_skipped(tmp_path, tiny_model, shared_data):
  d = tmp_path / "in"
  d.mkdir()
  good = [r["path"] for r in data.sample_index("spectra")[:5]]
  for p in good:
    shutil.copy(p, d / p.name)
  raw = good[0].read_bytes()
  (d / "spec-truncated.fits.gz").write_bytes(raw[:len(raw) // 2])
  (d / "spec-empty.fits.gz").write_bytes(b"")
  (d / "spec-random.fits").write_bytes(np.random.default_rng(0).bytes(5000))
  mrs = next((shared_data / "spectra" / "lamost_mrs_dr7_example").glob("med-*"))
  shutil.copy(mrs, d / mrs.name)
  out = tmp_path / "out"
  _scan([f"--spectra={d}", f"--out={out}", f"--model={tiny_model}", "--workers=2"])
  errors = _errors(out)
  assert set(errors) == {"spec-truncated.fits.gz", "spec-empty.fits.gz", "spec-random.fits", mrs.name}
  assert all(errors.values())
  pred = _predictions(out)
  assert sorted(os.path.basename(f) for f in pred["file"]) == sorted(p.name for p in good)
  summary = json.loads((out / "summary.json").read_text())
  assert (summary["n_scanned"], summary["n_errors"]) == (5, 4)

  # a catalog naming a file that does not exist: one error row, the rest scanned
  cat = tmp_path / "cat.csv"
  with open(cat, "w") as f:
    f.write("path,ra,dec\n")
    for p in good:
      f.write(f"{d / p.name},10.0,20.0\n")
    f.write(f"{d / 'spec-missing.fits.gz'},1.0,2.0\n")
  out2 = tmp_path / "out2"
  _scan([f"--catalog={cat}", f"--out={out2}", f"--model={tiny_model}", "--workers=0"])
  assert set(_errors(out2)) == {"spec-missing.fits.gz"}
  assert len(_predictions(out2)["file"]) == 5


def test_known_catalog_crossmatch_and_candidates(tmp_path, tiny_model):
  files = [r["path"] for r in data.sample_index("spectra")[:8]]
  d = tmp_path / "in"
  d.mkdir()
  for p in files:
    shutil.copy(p, d / p.name)
  out = tmp_path / "out"
  _scan([f"--spectra={d}", f"--out={out}", f"--model={tiny_model}", "--workers=0",
         "--threshold=0.0"])
  from astropy.table import Table
  two_stage = Table.read(out / "candidates.fits")  # default rule: stage 1 must agree
  assert set(np.asarray(two_stage["pred_class"]).astype(str)) <= {"WD", "WD+M"}
  pred = _predictions(out)
  assert len(two_stage) == int(np.isin(pred["pred_class"], ["WD", "WD+M"]).sum())
  has_pos = np.isfinite(pred["ra"])
  known = tmp_path / "known.csv"
  i = int(np.flatnonzero(has_pos)[0])
  with open(known, "w") as f:
    f.write("name,RAJ2000,DEJ2000\nwd1,%.6f,%.6f\nfar,%.6f,%.6f\n" % (
        pred["ra"][i] + 1.0 / 3600, pred["dec"][i], pred["ra"][i] + 1.0, pred["dec"][i]))
  _scan([f"--spectra={d}", f"--out={out}", f"--model={tiny_model}", "--workers=0",
         "--threshold=0.0", "--notwo_stage", f"--known={known}"])
  cand = Table.read(out / "candidates.fits")
  assert len(cand) == 8  # threshold 0: everything is a candidate
  assert int(np.sum(cand["known"])) == 1
  assert os.path.basename(str(cand["file"][np.asarray(cand["known"])][0])) == os.path.basename(pred["file"][i])
  summary = json.loads((out / "summary.json").read_text())
  assert summary["n_known"] == 1 and summary["n_candidates"] == 8
  assert (out / "report.md").exists() and (out / "top_candidates.png").exists()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
  from astrotl.tools import make_mirror
  out = tmp_path_factory.mktemp("mirror")
  return make_mirror.make(96, out, seed=1, level=1)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_each_input_once(tmp_path, tiny_model, mirror):
  ref = tmp_path / "ref"
  args = [f"--catalog={mirror}", f"--model={tiny_model}", "--chunk_size=16", "--workers=1",
          "--batch_size=16"]
  _scan(args + [f"--out={ref}"])
  out = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-m", "astrotl.scan", "--progress=false", *args,
                           f"--out={out}"], env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  journal = out / "journal.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline:
    if journal.exists() and len(journal.read_text().splitlines()) >= 2:
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  finished = len(list((out / "chunks").glob("chunk_*.parquet")))
  assert 2 <= finished < 6, f"{finished} of 6 chunks finished before the kill"
  _scan(args + [f"--out={out}"])
  a, b = _predictions(ref), _predictions(out)
  assert len(b["obsid"]) == len(set(b["obsid"])) == 96
  np.testing.assert_array_equal(a["obsid"], b["obsid"])
  np.testing.assert_allclose(a["p_wd"], b["p_wd"], atol=1e-6)
  # a different input list into the same --out is refused, not mixed in
  some = str(pathlib.Path(mirror).parent / "*" / "*" / "*_sp01-00*.fits.gz")
  r = _scan([f"--spectra={some}", f"--model={tiny_model}", f"--out={out}", "--chunk_size=16"],
            check=False)
  assert r.returncode != 0 and "different" in (r.stderr + r.stdout)


@pytest.mark.slow
def test_two_processes_scan_like_one(tmp_path, tiny_model, mirror, fake_slurm):
  """Two processes through launch/local.sh, and two SLURM tasks through launch/slurm_gpu.sbatch
  (srun stood in for; jax.distributed finds the coordinator from the SLURM variables)."""
  args = [f"--catalog={mirror}", f"--model={tiny_model}", "--chunk_size=32", "--workers=0",
          "--batch_size=16"]
  _scan(args + [f"--out={tmp_path / 'one'}"])
  env = dict(_env(), PYTHON=sys.executable, ASTROTL_LOG_DIR=str(tmp_path / "logs"),
             ASTROTL_LOCAL_DEVICES="2")
  r = subprocess.run([str(REPO / "launch" / "local.sh"), "2", "--", "astrotl.scan", "--progress=false",
                      *args, f"--out={tmp_path / 'two'}", "--distributed"],
                     env=env, capture_output=True, text=True, timeout=600)
  logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.log")))
  assert r.returncode == 0, logs[-3000:]
  procs = {json.loads(l)["process"] for l in (tmp_path / "two" / "journal.jsonl").read_text().splitlines()}
  assert procs == {0, 1}
  a, b = _predictions(tmp_path / "one"), _predictions(tmp_path / "two")
  np.testing.assert_array_equal(a["file"], b["file"])
  np.testing.assert_allclose(a["p_wd"], b["p_wd"], atol=1e-6)

  slurm_env, slurm_logs = fake_slurm
  slurm_env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  slurm_args = [x for x in args if not x.startswith("--workers")]  # the script sets --workers
  r = subprocess.run(["bash", str(REPO / "launch" / "slurm_gpu.sbatch"), "astrotl.scan",
                      *slurm_args, f"--out={tmp_path / 'slurm'}"],
                     env=slurm_env, capture_output=True, text=True, timeout=600)
  logs = "".join(p.read_text() for p in sorted(slurm_logs.glob("task_*.log")))
  assert r.returncode == 0, (r.stderr + logs)[-3000:]
  journal = (tmp_path / "slurm" / "journal.jsonl").read_text().splitlines()
  assert {json.loads(l)["process"] for l in journal} == {0, 1}
  c = _predictions(tmp_path / "slurm")
  np.testing.assert_array_equal(a["file"], c["file"])
  np.testing.assert_allclose(a["p_wd"], c["p_wd"], atol=1e-6)


def test_no_argument_scan_of_the_bundled_sample(tmp_path):
  """The README's first command: the bundled sample with the bundled model into ./astrotl-scan."""
  r = subprocess.run([sys.executable, "-m", "astrotl.scan"], cwd=tmp_path, env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  out = tmp_path / "astrotl-scan"
  pred = _predictions(out)
  sample = data.sample_index("spectra")
  assert sorted(os.path.basename(f) for f in pred["file"]) == sorted(p["path"].name for p in sample)
  assert np.all((pred["p_wd"] >= 0) & (pred["p_wd"] <= 1))
  np.testing.assert_allclose(sum(pred[f"p_{c}"] for c in CLASSES), 1.0, atol=1e-4)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["n_scanned"] == len(sample) and summary["n_errors"] == 0
  assert "spectra scanned" in r.stdout
  # the sample holds real A-M stars and no white dwarfs: stage 1 should mostly say so
  agree = [p == s[:1] for p, s in zip(pred["pred_class"], pred["survey_subclass"])
           if s[:1] in "AFGKM" and s]
  assert np.mean(agree) > 0.6
