"""The scan: outputs astronomers open, bad input, resume, multi-process, the run modes."""

import csv
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

from astrotl import bundle, data, scan, train
from astrotl.preprocess import spectra

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["A", "F", "G", "K", "M", "WD", "WD+M"]


def _env(devices=2):
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _scan(args, devices=2, check=True, cwd=None):
  r = subprocess.run([sys.executable, "-m", "astrotl.scan", "--progress=false", *args],
                     env=_env(devices), capture_output=True, text=True, timeout=600, cwd=cwd)
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


def _sample(n=None):
  return [r["path"] for r in data.sample_index("spectra")][:n]


def _copy(files, d):
  d.mkdir(parents=True, exist_ok=True)
  for p in files:
    shutil.copy(p, d / pathlib.Path(p).name)
  return d


def test_device_preprocessing_equals_host_preprocessing(tiny_bundles):
  model = bundle.load_model(tiny_bundles["separate"])
  files = [str(p) for p in _sample(6)]
  got = model.predict(files)
  xs = []
  from astrotl import io as aio
  for f in files:
    s = aio.read(f)
    flux, _, bad = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    xs.append(spectra.tan_normalise(flux, bad))
  x = np.stack(xs).astype(np.float32)
  n1, n2 = model.networks["stage1"], model.networks["stage2"]
  z1, z2 = (train.predict(n.model, n.variables, x) for n in (n1, n2))
  want1 = np.exp(z1 / 1.3) / np.exp(z1 / 1.3).sum(-1, keepdims=True)
  want2 = (np.exp(z2 / 0.7) / np.exp(z2 / 0.7).sum(-1, keepdims=True))[:, 1]
  np.testing.assert_allclose(np.stack([got[f"p1_{bundle.column_name(c)}"] for c in CLASSES], -1),
                             want1, atol=2e-5)
  np.testing.assert_allclose(got["p_wd"], want2, atol=2e-5)


def test_shared_trunk_and_cascade_equal_the_plain_path(tmp_path, tiny_bundles):
  files = [str(p) for p in _sample(40)]
  model = bundle.load_model(tiny_bundles["shared"])
  assert model.shared_trunk("stage1", "stage2")
  assert not bundle.load_model(tiny_bundles["separate"]).shared_trunk("stage1", "stage2")
  # a threshold of 0 makes the stage-1 agreement decide, so the cascade skips most rows;
  # ten batches a chunk, more than runner.IN_FLIGHT, so results are fetched while queued
  res = {}
  for mode in ("plain", "shared", "cascade"):
    out = tmp_path / mode
    scan.scan(spectra=",".join(files), out=out, model=str(tiny_bundles["shared"]), mode=mode,
              workers=0, batch_size=4, chunk_size=40, progress=False, threshold=0.0,
              log=lambda *_: None)
    res[mode] = _predictions(out)
  plain, shared, cascade = res["plain"], res["shared"], res["cascade"]
  for c in [f"p1_{bundle.column_name(k)}" for k in CLASSES] + ["p_wd", "snr"]:
    np.testing.assert_allclose(shared[c], plain[c], atol=1e-5)
  np.testing.assert_array_equal(cascade["candidate"], plain["candidate"])
  agree = np.isin(plain["class1"], ["WD", "WD+M"])
  assert 0 < agree.sum() < len(agree)  # the tiny model admits some, not all
  np.testing.assert_allclose(cascade["p_wd"][agree].astype(float), plain["p_wd"][agree], atol=1e-5)
  assert all(v is None for v in cascade["p_wd"][~agree])  # skipped: null, not zero
  summary = json.loads((tmp_path / "cascade" / "summary.json").read_text())
  assert summary["mode"] == "cascade"


def test_outputs_open_in_astropy_with_units_nulls_and_unique_names(tmp_path, tiny_bundles,
                                                                   shared_data):
  from astropy.io.votable import parse_single_table
  from astropy.table import Table
  out = tmp_path / "out"
  files = _sample(10)  # pilot files: no OBSID in their headers
  known = tmp_path / "known.csv"
  s = scan.scan(spectra=",".join(map(str, files)), out=out, model=str(tiny_bundles["separate"]),
                workers=0, progress=False, threshold=0.0, log=lambda *_: None)
  pred = Table.read(out / "predictions.parquet")  # needs pandas: a dependency
  names = pred.colnames
  assert len({n.lower() for n in names}) == len(names)
  assert all(n.isidentifier() for n in names)
  assert pred["ra"].unit == "deg" and pred["p_wd"].description
  assert pq.read_table(out / "predictions.parquet")["obsid"].null_count == len(pred)
  cand = Table.read(out / "candidates.fits")
  assert len({n.lower() for n in cand.colnames}) == len(cand.colnames)
  assert cand["ra"].unit == "deg"
  assert np.all(cand["obsid"].mask)  # null, not -1
  from astropy.io import fits
  header = fits.getheader(out / "candidates.fits", 1)
  assert header.comments["TTYPE4"] and header["TCOMM4"].startswith("right ascension")
  vot = parse_single_table(str(out / "candidates.vot"))
  ucd = {f.name: f.ucd for f in vot.fields}
  assert ucd["ra"] == "pos.eq.ra;meta.main" and ucd["p_wd"] == "stat.probability"
  Table.read(out / "errors.csv", format="ascii.csv")
  assert json.loads((out / "summary.json").read_text())["n_scanned"] == s["n_scanned"] == 10
  report = (out / "report.md").read_text()
  assert "not checked (no --known catalog given)" in report and "of no catalog" not in report


def test_catalog_columns_and_known_matches_reach_the_predictions(tmp_path, tiny_bundles):
  files = _sample(8)
  d = _copy(files, tmp_path / "in")
  pred0 = scan.scan(spectra=str(d), out=tmp_path / "o0", model=str(tiny_bundles["separate"]),
                    workers=0, progress=False, log=lambda *_: None)
  p = _predictions(tmp_path / "o0")
  i = int(np.flatnonzero(p["ra"] != None)[0])  # noqa: E711 (null test)
  cat = tmp_path / "cat.csv"
  with open(cat, "w") as f:
    f.write("filename,obsid,designation,class,snrg,mag1\n")
    for k, fp in enumerate(files):
      f.write(f"{pathlib.Path(fp).name},{1000 + k},J{k},STAR,{10 + k},{15.5 + k}\n")
  known = tmp_path / "known.csv"
  known.write_text("name,RAJ2000,DEJ2000\nWD J0001,%.6f,%.6f\nfar,%.6f,%.6f\n" % (
      p["ra"][i] + 1.0 / 3600, p["dec"][i], p["ra"][i] + 1.0, p["dec"][i]))
  out = tmp_path / "o1"
  scan.scan(catalog=str(cat), root=str(d), out=out, model=str(tiny_bundles["separate"]),
            known=str(known), workers=0, progress=False, threshold=0.0, log=lambda *_: None)
  q = _predictions(out)
  assert {"cat_obsid", "cat_designation", "cat_class", "cat_snrg", "cat_mag1"} <= set(q)
  by_name = {os.path.basename(f): k for k, f in enumerate(q["file"])}
  k = by_name[os.path.basename(p["file"][i])]
  assert q["known"][k] and q["known_id"][k] == "WD J0001" and q["known_sep"][k] < 1.5
  assert q["known"].sum() == 1
  assert sorted(q["cat_obsid"]) == [1000 + k for k in range(8)]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["known_catalog"] == str(known)


def test_bad_files_are_reported_and_skipped(tmp_path, tiny_bundles, shared_data):
  d = _copy(_sample(5), tmp_path / "in")
  raw = _sample(1)[0].read_bytes()
  (d / "spec-truncated.fits.gz").write_bytes(raw[:len(raw) // 2])
  (d / "spec-empty.fits.gz").write_bytes(b"")
  (d / "spec-random.fits").write_bytes(np.random.default_rng(0).bytes(5000))
  (d / "folder.fits.gz").mkdir()                      # a folder with a spectrum's name
  (d / "dangling.fits").symlink_to(d / "nowhere.fits")  # a dangling link
  (d / "loop.fits").symlink_to(d / "loop.fits")         # a link to itself
  mrs = next((shared_data / "spectra" / "lamost_mrs_dr7_example").glob("med-*"))
  shutil.copy(mrs, d / mrs.name)
  out = tmp_path / "out"
  s = scan.scan(spectra=str(d), out=out, model=str(tiny_bundles["shared"]), workers=2,
                progress=False, log=lambda *_: None)
  errors = _errors(out)
  assert set(errors) == {"spec-truncated.fits.gz", "spec-empty.fits.gz", "spec-random.fits",
                         mrs.name, "folder.fits.gz", "dangling.fits", "loop.fits"}
  assert all(errors.values())
  pred = _predictions(out)
  assert len(pred["file"]) == 5 and (s["n_scanned"], s["n_errors"]) == (5, 7)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_each_input_and_embedding_once(tmp_path, tiny_bundles, mirror):
  ref = tmp_path / "ref"
  args = [f"--catalog={mirror}", f"--model={tiny_bundles['shared']}", "--chunk_size=16",
          "--workers=1", "--batch_size=16", "--embeddings"]
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
  r = _scan(args + [f"--out={out}"])
  assert f"{finished * 16} of 96 inputs already done" in r.stdout
  a, b = _predictions(ref), _predictions(out)
  assert len(b["obsid"]) == len(set(b["obsid"])) == 96
  np.testing.assert_array_equal(a["obsid"], b["obsid"])
  np.testing.assert_allclose(a["p_wd"], b["p_wd"], atol=1e-6)
  # the embeddings (written beside each chunk's rows, before them): once each, the same
  from astrotl.similar import store
  ea, eb = store.Embeddings(ref), store.Embeddings(out)
  fa, fb = (e.table(np.arange(e.n), ["file"])["file"].to_pylist() for e in (ea, eb))
  assert eb.n == len(set(fb)) == 96 and sorted(fa) == sorted(fb)
  np.testing.assert_array_equal(ea.rows(np.argsort(fa)), eb.rows(np.argsort(fb)))
  # a different input list into the same --out is refused, not mixed in
  some = str(pathlib.Path(mirror).parent / "*" / "*" / "*_sp01-00*.fits.gz")
  r = _scan([f"--spectra={some}", f"--model={tiny_bundles['shared']}", f"--out={out}",
             "--chunk_size=16"], check=False)
  assert r.returncode == 2 and "different" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_two_processes_scan_like_one(tmp_path, tiny_bundles, mirror, fake_slurm):
  """Two processes through launch/local.sh, and two SLURM tasks through launch/slurm_gpu.sbatch
  (srun stood in for; jax.distributed finds the coordinator from the SLURM variables)."""
  args = [f"--catalog={mirror}", f"--model={tiny_bundles['shared']}", "--chunk_size=32",
          "--workers=0", "--batch_size=16"]
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
  assert "Unable to initialize backend" not in r.stderr and "Traceback" not in r.stderr
  out = tmp_path / "astrotl-scan"
  pred = _predictions(out)
  sample = data.sample_index("spectra") + data.sample_index("spectra/sdss_boss")
  assert sorted(os.path.basename(f) for f in pred["file"]) == sorted(p["path"].name for p in sample)
  model = bundle.load_model("wd_two_stage")
  scored = np.array([v is not None for v in pred["p_wd"]])
  assert all(0 <= v <= 1 for v in pred["p_wd"][scored])
  summary = json.loads((out / "summary.json").read_text())
  if summary["mode"] == "cascade":  # stage 2 ran exactly where stage 1 can admit a candidate
    np.testing.assert_array_equal(scored, np.isin(pred["class1"], model.rule["classes"]))
  probs = [f"p1_{bundle.column_name(c)}" for c in model.classes]
  np.testing.assert_allclose(sum(pred[c] for c in probs), 1.0, atol=1e-4)
  assert summary["n_scanned"] == len(sample) and summary["n_errors"] == 0
  assert "spectra scanned" in r.stdout
  # the one real white dwarf of the sample (SDSS BOSS) is found, and nothing else
  cand = [os.path.basename(f) for f, c in zip(pred["file"], pred["candidate"]) if c]
  assert cand == ["spec-4455-55539-0692.fits.gz"] and summary["n_candidates"] == 1
  # the sample holds real A-M stars and no white dwarfs: stage 1 should mostly say so
  agree = [p == s[:1] for p, s in zip(pred["class1"], pred["survey_subclass"])
           if s and s[:1] in "AFGKM"]
  assert np.mean(agree) > 0.6


def test_an_unknown_veto_class_fails_in_one_line_before_any_work(tmp_path):
  from astrotl import rules
  # checked before the catalog is even looked at (a survey catalog takes a while to read)
  with pytest.raises(rules.RuleError) as e:
    scan.scan(catalog="/nonexistent.csv", out=tmp_path / "o", veto=["QSO", "STARZ"],
              progress=False, log=lambda *_: None)
  assert str(e.value).startswith("--veto=STARZ: not a survey class")
  assert "STAR, GALAXY, QSO, Unknown" in str(e.value) and not (tmp_path / "o").exists()
  assert rules.veto_classes(["qso", "galaxy", ""]) == ["QSO", "GALAXY"]
  r = subprocess.run([sys.executable, "-m", "astrotl.scan", "--progress=false", "--veto=STARZ",
                      f"--out={tmp_path / 'o'}"], env=_env(1), capture_output=True, text=True,
                     timeout=600)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  assert "--veto=STARZ" in lines[0] and "STAR, GALAXY, QSO, Unknown" in lines[0]
  assert not (tmp_path / "o").exists()
