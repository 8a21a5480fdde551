"""Checksummed chunks (issue 25): a damaged chunk is named, set aside and scanned again;
the merge checks row counts against the records; a full disk at the merge is one line and
a re-run only merges."""

import errno
import json
import os
import pathlib
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from astrotl import data, scan
from astrotl.scan import chunks

N, CHUNK = 12, 4  # three chunks


def _args(model):
  files = [str(r["path"]) for r in data.sample_index("spectra")][:N]
  # top=0: the report plots no spectra, which would take most of each test's time
  return dict(spectra=files, model=str(model), chunk_size=CHUNK, batch_size=CHUNK, workers=0,
              embeddings=True, top=0, progress=False)


@pytest.fixture(scope="module")
def ref(tmp_path_factory, tiny_bundles):
  out = tmp_path_factory.mktemp("chunks") / "ref"
  scan.scan(out=out, log=lambda *_: None, **_args(tiny_bundles["shared"]))
  return out


def _copy(ref, tmp_path):
  out = tmp_path / "out"
  shutil.copytree(ref, out)
  return out


def _rescan(out, model):
  lines = []
  summary = scan.scan(out=out, log=lines.append, **_args(model))
  return summary, [l for l in lines if "WARNING" in l]


def _same_outputs(ref, out):
  def table(folder):
    t = pq.read_table(folder / "predictions.parquet")
    return t.take(np.argsort(t["file"].to_numpy(zero_copy_only=False))).to_pydict()
  a, b = table(ref), table(out)
  assert a.keys() == b.keys() and len(b["file"]) == N
  for k in a:
    if isinstance(a[k][0], float):
      np.testing.assert_allclose(np.array(a[k], float), np.array(b[k], float), atol=1e-6)
    else:
      assert a[k] == b[k], k
  assert (ref / "errors.csv").read_text() == (out / "errors.csv").read_text()
  for i in range(N // CHUNK):
    name = f"chunk_{i:06d}.embedding.npy"
    np.testing.assert_array_equal(np.load(ref / "chunks" / name), np.load(out / "chunks" / name))


def _flip(path, at=0.5):
  raw = bytearray(path.read_bytes())
  raw[int(len(raw) * at)] ^= 0x10
  path.write_bytes(bytes(raw))


def _truncate(path):
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize("name,damage", [
    ("chunk_000001.parquet", _truncate),
    ("chunk_000001.parquet", _flip),
    ("chunk_000001.embedding.npy", lambda p: _flip(p, 0.9)),
    ("chunk_000001.errors.csv", lambda p: p.write_bytes(p.read_bytes() + b"x.fits,y\r\n")),
    ("chunk_000001.json", lambda p: p.unlink()),
    ("chunk_000001.json", lambda p: p.write_text(p.read_text().replace('"rows"', '"rowz"'))),
])
def test_a_damaged_chunk_is_named_set_aside_and_scanned_again(ref, tmp_path, tiny_bundles,
                                                              name, damage):
  out = _copy(ref, tmp_path)
  record = json.loads((out / "chunks" / "chunk_000001.json").read_text())
  assert record["rows"] + record["errors"] == CHUNK
  assert set(record["files"]) >= {"chunk_000001.parquet", "chunk_000001.errors.csv",
                                  "chunk_000001.embedding.npy"}
  damage(out / "chunks" / name)
  summary, warnings = _rescan(out, tiny_bundles["shared"])
  assert len(warnings) == 1 and "chunk 1 " in warnings[0] and name in warnings[0], warnings
  assert str(out / "corrupt") in warnings[0]
  assert summary["files_this_run"] == CHUNK and summary["n_already_done"] == N - CHUNK
  assert (out / "corrupt" / "chunk_000001.parquet").exists()
  _same_outputs(ref, out)
  store = chunks.Store(out, N, CHUNK)
  store.open(json.loads((out / "scan.json").read_text()), main=False)  # no lock: reads only
  assert store.verify(1, log=pytest.fail)  # scanned again, with a record that passes


def test_chunks_of_an_older_astrotl_are_read_whole_instead(ref, tmp_path, tiny_bundles):
  out = _copy(ref, tmp_path)
  manifest = json.loads((out / "scan.json").read_text())
  assert manifest.pop("checksums") == "sha256"
  (out / "scan.json").write_text(json.dumps(manifest))
  for record in (out / "chunks").glob("chunk_*.json"):
    record.unlink()
  summary, warnings = _rescan(out, tiny_bundles["shared"])
  assert warnings == [] and summary["files_this_run"] == 0  # whole: kept
  _truncate(out / "chunks" / "chunk_000002.parquet")
  summary, warnings = _rescan(out, tiny_bundles["shared"])
  assert len(warnings) == 1 and "chunk 2 " in warnings[0] and "cannot be read" in warnings[0]
  assert summary["files_this_run"] == CHUNK
  _same_outputs(ref, out)


def test_the_merge_checks_row_counts_against_the_records(ref, tmp_path, tiny_bundles):
  out = _copy(ref, tmp_path)
  path = out / "chunks" / "chunk_000002.json"
  record = json.loads(path.read_text())
  record["rows"] += 1  # the files still match their sums: only the merge's check sees it
  path.write_text(json.dumps(record))
  with pytest.raises(chunks.OutputError) as e:
    _rescan(out, tiny_bundles["shared"])
  msg = str(e.value)
  assert "\n" not in msg and "chunk 2:" in msg and "re-run" in msg, msg
  assert not (out / "chunks" / "chunk_000002.parquet").exists()  # set aside
  summary, warnings = _rescan(out, tiny_bundles["shared"])
  assert warnings == [] and summary["files_this_run"] == CHUNK
  _same_outputs(ref, out)


# one output per writer: pyarrow, astropy, json (write_atomic), matplotlib (in the report)
@pytest.mark.parametrize("target", ["predictions.parquet", "candidates.fits", "summary.json",
                                    "score_histogram.png"])
def test_a_full_disk_at_the_merge_is_one_line_and_a_rerun_only_merges(
    ref, tmp_path, tiny_bundles, monkeypatch, target):
  out = _copy(ref, tmp_path)
  for f in out.iterdir():
    if f.is_file() and f.name not in ("scan.json", "journal.jsonl", ".lock"):
      f.unlink()  # as if the first merge never ran
  replace = os.replace

  def full(src, dst):  # the disk fills up while `target` is written
    if pathlib.Path(dst).name == target:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return replace(src, dst)

  monkeypatch.setattr(os, "replace", full)
  with pytest.raises(chunks.OutputError) as e:
    _rescan(out, tiny_bundles["shared"])
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(str(out / target)), msg
  assert "No space left on device" in msg and "free space" in msg and "re-run" in msg, msg
  assert not list(out.glob(".*.tmp")) and not (out / target).exists()
  monkeypatch.setattr(os, "replace", replace)
  summary, warnings = _rescan(out, tiny_bundles["shared"])
  assert warnings == [] and summary["files_this_run"] == 0 and summary["n_already_done"] == N
  assert (out / "report.md").exists() and (out / "candidates.fits").exists()
  _same_outputs(ref, out)
