"""The scan as a user meets it: one-line errors before any work, catalogs as they come,
interrupts, a lock, no orphans, no stale files, a decoder that hangs."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from astrotl import data, scan
from astrotl.scan import chunks, workers

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(devices=1):
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _run(args, timeout=600, **kw):
  return subprocess.run([sys.executable, "-m", "astrotl.scan", "--progress=false", *args],
                        env=_env(), capture_output=True, text=True, timeout=timeout, **kw)


def _one_line_error(r, *words):
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  for w in words:
    assert w in lines[0], lines[0]
  return lines[0]


def _sample(n=None):
  return [r["path"] for r in data.sample_index("spectra")][:n]


@pytest.mark.parametrize("args,words", [
    (["--threshold=1.5"], ["--threshold=1.5", "[0, 1]"]),
    (["--radius=-3"], ["--radius=-3"]),
    (["--workers=-2"], ["--workers=-2"]),
    (["--spectra=/nonexistent"], ["/nonexistent", "no such folder"]),
    (["--known=/nonexistent.csv"], ["--known=/nonexistent.csv", "no such file"]),
    (["--model=/nonexistent.npz"], ["/nonexistent.npz"]),
    (["--select=nonsense"], ["--select"]),
    (["--catalog=/nonexistent.csv"], ["--catalog"]),
])
def test_user_errors_are_one_line_and_exit_2(args, words, tmp_path):
  _one_line_error(_run(args + [f"--out={tmp_path / 'o'}"]), *words)
  assert not (tmp_path / "o" / "chunks").exists()  # failed before any work


@pytest.mark.parametrize("module,args,words", [
    ("astrotl.scan", ["--spectrra=x"], ["'spectrra'", "Did you mean: spectra"]),
    ("astrotl.scan", ["--threshold=abc"], ["--threshold=abc", "float"]),
    ("astrotl.similar", ["--outt=x"], ["'outt'", "Did you mean: out"]),
    ("astrotl.similar", ["--k=abc"], ["--k=abc"]),
    ("astrotl.finetune", ["--outt=x"], ["'outt'", "Did you mean: out"]),
    ("astrotl.finetune", ["--steps=abc"], ["--steps=abc"]),
    ("astrotl.classify_lightcurves", ["--outt=x"], ["'outt'", "Did you mean: out"]),
    ("astrotl.classify_lightcurves", ["--batch_size=abc"], ["--batch_size=abc"]),
])
def test_flag_mistakes_are_one_line_and_exit_2(module, args, words):
  """absl's own message is two lines and exit 1; its 'Did you mean' hint is kept."""
  r = subprocess.run([sys.executable, "-m", module, *args], env=_env(), capture_output=True,
                     text=True, timeout=120)
  line = _one_line_error(r, *words)
  assert line.startswith(f"{module}: ") and r.stdout == "", (line, r.stdout)


def test_known_without_radec_columns_fails_before_scanning(tmp_path):
  known = tmp_path / "known.csv"
  known.write_text("name,x,y\nwd,1,2\n")
  line = _one_line_error(_run([f"--known={known}", f"--out={tmp_path / 'o'}"]),
                         "--known_ra_column")
  assert "--ra_column" not in line.replace("--known_ra_column", "")


def test_empty_folder_names_it_and_the_suffixes(tmp_path):
  (tmp_path / "empty").mkdir()
  _one_line_error(_run([f"--spectra={tmp_path / 'empty'}", f"--out={tmp_path / 'o'}"]),
                  str(tmp_path / "empty"), "*.fits.gz")


def test_help_exits_0():
  r = subprocess.run([sys.executable, "-m", "astrotl.scan", "--help"], env=_env(),
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and "--catalog" in r.stdout


def test_catalog_with_fits_names_finds_fits_gz_and_exits_1_when_most_are_missing(
    tmp_path, shared_data, tiny_bundles):
  """LearningLAMOST's catalog says .fits; the disk has .fits.gz; only some of its 3,165
  files are here."""
  cat = shared_data / "spectra" / "catalogs" / "learninglamost_my_data3.csv.gz"
  root = shared_data / "spectra" / "lamost_dr1_pilot_B6212"
  from astrotl.io import catalog
  names = {f"{n}.gz" for n in catalog.read_table(cat)["filename"]}
  here = len(names & set(os.listdir(root)))
  assert 100 < here < 3165 / 2
  r = _run([f"--catalog={cat}", f"--root={root}", f"--model={tiny_bundles['shared']}",
            f"--out={tmp_path / 'o'}", "--workers=0"])
  assert r.returncode == 1, r.stderr[-2000:]
  assert "WARNING" in r.stderr and "not found" in r.stderr
  summary = json.loads((tmp_path / "o" / "summary.json").read_text())
  assert summary["n_scanned"] == here and summary["n_missing_files"] == 3165 - here
  pred = __import__("pyarrow.parquet").parquet.read_table(tmp_path / "o" / "predictions.parquet")
  assert {"cat_obsid", "cat_class", "cat_subclass", "cat_snrg", "cat_mag1"} <= set(pred.column_names)


def test_catalog_archive_paths_against_a_flat_folder_are_found_by_name(tmp_path, shared_data,
                                                                        tiny_bundles):
  cat = shared_data / "spectra" / "catalogs" / "jhliu_dr8_snrg30_grouped_ccf_test.csv"
  root = shared_data / "spectra" / "lamost_dr8v1_image_format"
  found = scan.inputs.from_catalog(str(cat), str(root))
  assert found.missing == 0 and len(found.paths) == 220
  assert all(p.startswith(str(root)) for p in found.paths)


def test_catalog_keeps_only_the_columns_asked_for_and_errors_list_all(tmp_path, shared_data):
  cat = shared_data / "spectra" / "catalogs" / "jhliu_dr8_snrg30_grouped_ccf_test.csv"
  root = shared_data / "spectra" / "lamost_dr8v1_image_format"
  everything = scan.inputs.from_catalog(str(cat), str(root))
  keep = ("obsid", "ra", "dec", "snrg")
  kept = scan.inputs.from_catalog(str(cat), str(root), keep=keep)
  assert kept.paths == everything.paths and len(kept.table) < len(everything.table)
  from astrotl.io import catalog
  assert set(kept.table) <= {*keep, *catalog.PATH_ALIASES,
                             *catalog.LAMOST_PATH_COLUMNS}
  for c in kept.table:
    np.testing.assert_array_equal(kept.table[c], everything.table[c])
  bad = tmp_path / "bad.csv"
  bad.write_text("ra,dec,teff,wanted\n1,2,3,4\n")
  with pytest.raises(scan.InputError, match=r"columns are \['dec', 'ra', 'teff', 'wanted'\]"):
    scan.inputs.from_catalog(str(bad), str(tmp_path), keep=("obsid",))


def test_catalog_duplicates_scanned_once_and_escapes_refused(tmp_path, tiny_bundles):
  files = _sample(4)
  d = tmp_path / "root"
  d.mkdir()
  for p in files:
    shutil.copy(p, d / p.name)
  outside = tmp_path / "outside.fits.gz"
  shutil.copy(files[0], outside)
  cat = tmp_path / "cat.csv"
  rows = [p.name for p in files] + [files[1].name, "../outside.fits.gz", str(outside)]
  cat.write_text("path\n" + "\n".join(rows) + "\n")
  found = scan.inputs.from_catalog(str(cat), str(d))
  assert len(found.paths) == 4 and len(found.duplicates) == 1 and len(found.refused) == 2
  allowed = scan.inputs.from_catalog(str(cat), str(d), allow_outside_root=True)
  assert len(allowed.paths) == 5  # the two outside rows are one file
  s = scan.scan(catalog=str(cat), root=str(d), out=tmp_path / "o", workers=0, progress=False,
                model=str(tiny_bundles["shared"]), log=lambda *_: None)
  assert (s["n_scanned"], s["n_duplicate_rows"], s["n_refused_rows"]) == (4, 1, 2)


def test_output_folder_errors_are_one_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  _one_line_error(_run([f"--out={blocker / 'sub'}"]), str(blocker / "sub"))


def test_chunks_are_a_twentieth_of_the_inputs_within_bounds():
  assert chunks.auto_chunk_size(3000) == 150
  assert chunks.auto_chunk_size(100) == 64
  assert chunks.auto_chunk_size(11_200_000) == 4096
  # The scan's batch is the smallest chunk, so the batch does not shrink with the input.
  assert chunks.auto_chunk_size(1000, smallest=256) == 256
  assert chunks.auto_chunk_size(11_200_000, smallest=256) == 4096


def test_a_resumed_scan_keeps_its_chunk_size(tmp_path):
  digest = chunks.inputs_digest(["a.fits", "b.fits"])
  assert chunks.resumed_chunk_size(tmp_path, digest) is None  # no earlier scan
  (tmp_path / "scan.json").write_text(json.dumps({"inputs_sha256": digest, "chunk_size": 64}))
  assert chunks.resumed_chunk_size(tmp_path, digest) == 64
  assert chunks.resumed_chunk_size(tmp_path, chunks.inputs_digest(["c.fits"])) is None


def test_a_second_scan_into_the_same_folder_is_refused_and_stale_tmp_removed(tmp_path):
  out = tmp_path / "o"
  store = chunks.Store(out, 10, 5)
  store.open({"n_inputs": 10}, main=True)
  (out / ".predictions.parquet.host.123.tmp").write_text("stale")
  (out / "chunks" / ".chunk_000000.parquet.host.9.tmp").write_text("stale")
  other = chunks.Store(out, 10, 5)
  with pytest.raises(chunks.OutputError, match=f"pid {os.getpid()}"):
    other.open({"n_inputs": 10}, main=True)
  store.close()
  other.open({"n_inputs": 10}, main=True)  # free again; cleans what a kill left
  assert not list(out.rglob("*.tmp"))
  other.close()


def test_changed_manifest_with_no_finished_chunks_starts_over(tmp_path):
  """The advice 'delete OUT/chunks to start over' must be true."""
  out = tmp_path / "o"
  s = chunks.Store(out, 10, 5)
  s.open({"n_inputs": 10, "model": "a"})
  s.write(0, __import__("pyarrow").table({"file": ["x"]}), [])
  s.close()
  with pytest.raises(chunks.OutputError, match="different model"):
    chunks.Store(out, 10, 5).open({"n_inputs": 10, "model": "b"})
  shutil.rmtree(out / "chunks")
  s = chunks.Store(out, 10, 5)
  s.open({"n_inputs": 10, "model": "b"})
  s.close()


def _slow_decode(paths, raw_len, on_file=None):
  """A decoder that hangs on files named *hang*: stands in for a pathological file."""
  from astrotl.io import batch as io_batch
  for i, p in enumerate(paths):
    if "hang" in os.path.basename(p):
      if on_file:
        on_file(i)
      time.sleep(3600)
  return io_batch.decode_many(paths, raw_len, on_file)


def test_a_hanging_file_costs_one_error_row_not_the_scan(tmp_path):
  files = [str(p) for p in _sample(6)]
  hang = tmp_path / "spec-hang.fits.gz"
  shutil.copy(files[0], hang)
  paths = files[:3] + [str(hang)] + files[3:]
  pool = workers.DecodePool(1, time_limit=2.0, decode=_slow_decode)
  try:
    t = time.time()
    pool.submit("a", paths)
    key, got_paths, (good, arrays, metas, errors) = pool.next()
    assert time.time() - t < 30
  finally:
    pool.close()
  assert key == "a" and good == [0, 1, 2, 4, 5, 6] and len(arrays["u"]) == 6
  assert [(i, os.path.basename(p)) for i, p, _ in errors] == [(3, "spec-hang.fits.gz")]
  assert "longer than 2 s" in errors[0][2] and pool.replaced == 1


def _alive(pids):
  """Those of `pids` still running (with their command lines), zombies excluded."""
  out = []
  for k in pids:
    try:
      state = pathlib.Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0]
      cmd = pathlib.Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
      continue
    if state != "Z":
      out.append((k, cmd[-120:]))
  return out


def _children(pid):
  out = []
  for d in pathlib.Path("/proc").iterdir():
    if d.name.isdigit():
      try:
        stat = (d / "stat").read_text()
      except OSError:
        continue
      if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
        out.append(int(d.name))
  return out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_fast_keeps_chunks_and_resumes(tmp_path, tiny_bundles, sig):
  from astrotl.tools import make_mirror
  cat = make_mirror.make(400, tmp_path / "mirror", seed=2, level=1)
  args = [f"--catalog={cat}", f"--model={tiny_bundles['shared']}", "--workers=2",
          "--batch_size=16", f"--out={tmp_path / 'o'}"]
  proc = subprocess.Popen([sys.executable, "-m", "astrotl.scan", "--progress=false", *args],
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  journal = tmp_path / "o" / "journal.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (journal.exists() and journal.read_text().count("\n") >= 2):
    time.sleep(0.05)
  kids = _children(proc.pid)
  assert kids, "the scan should have decode workers"
  t = time.time()
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=60)
  took = time.time() - t
  assert proc.returncode == 128 + sig and took < 5, (proc.returncode, took, err[-2000:])
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and "re-run the same command" in lines[0] and "Traceback" not in err
  saved = int(lines[0].split("interrupted")[1].split(":")[1].split()[0])
  assert saved > 0
  deadline = time.time() + 5
  while time.time() < deadline and _alive(kids):
    time.sleep(0.2)
  assert not _alive(kids), "orphaned workers"
  r = _run(args)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"{saved} of 400 inputs already done" in r.stdout
  import pyarrow.parquet as pq
  files = pq.read_table(tmp_path / "o" / "predictions.parquet")["file"].to_pylist()
  assert len(files) == len(set(files)) == 400


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_scan(tmp_path, tiny_bundles):
  from astrotl.tools import make_mirror
  cat = make_mirror.make(300, tmp_path / "mirror", seed=3, level=1)
  proc = subprocess.Popen([sys.executable, "-m", "astrotl.scan", "--progress=false",
                           f"--catalog={cat}", f"--model={tiny_bundles['shared']}",
                           "--workers=2", f"--out={tmp_path / 'o'}"], env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  kids = []
  while time.time() < deadline and len(kids) < 2:
    kids = _children(proc.pid)
    time.sleep(0.1)
  proc.kill()
  proc.wait()
  deadline = time.time() + 10
  while time.time() < deadline and _alive(kids):
    time.sleep(0.2)
  assert not _alive(kids)
