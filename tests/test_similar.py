"""More like these: embeddings in the scan's chunks (exactly once, like the rows), the
anomaly reference of a bundle, and the search (itself first; equal to brute force)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from astrotl import bundle, data, scan, similar
from astrotl.scan import chunks
from astrotl.similar import index, metric, store
from astrotl.tools import make_mirror

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(devices=2):
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _sample(n=None):
  return [str(r["path"]) for r in data.sample_index("spectra")][:n]


def _scanned_files():
  """The 40 spectra the `scanned` fixture scans: the last ones, which have obsids."""
  return _sample()[-40:]


def _scan(out, files, model, **kw):
  return scan.scan(spectra=files, out=out, model=str(model), workers=0, progress=False,
                   log=lambda *_: None, embeddings=True, **kw)


def _by_file(out):
  """{file: (embedding row, anomaly)} of a finished scan, checking each chunk's embeddings
  match its rows one to one."""
  s = store.Embeddings(out)
  got = {}
  for i in range(s.store.n_chunks):
    t = pq.read_table(s.store.chunks / f"{s.store.name(i)}.parquet")
    e = np.load(s.store.embedding_path(i))
    assert e.dtype == np.float16 and len(e) == t.num_rows
    for f, row, a in zip(t["file"].to_pylist(), e, t["anomaly"].to_pylist()):
      assert f not in got, f"{f} stored twice"
      got[f] = (row, a)
  return got


@pytest.fixture(scope="module")
def with_reference(tiny_bundles, tmp_path_factory):
  """The tiny shared-trunk bundle with a reference made from 30 sample spectra."""
  m = bundle.load_model(tiny_bundles["shared"])
  path = tmp_path_factory.mktemp("ref") / "tiny_ref.npz"
  similar.add_reference(m, _sample(30), k=5, training_data="30 bundled spectra").save(path)
  return path


@pytest.fixture(scope="module")
def scanned(with_reference, tmp_path_factory):
  out = tmp_path_factory.mktemp("scan") / "out"
  _scan(out, _scanned_files(), with_reference, chunk_size=16, anomalies=5)
  return out


def test_reference_round_trips_and_scores_on_the_device(with_reference, scanned):
  m = bundle.load_model(with_reference)
  ref = m.meta["reference"]
  assert m.reference.shape == (30, 8) and ref["k"] == 5 and ref["n"] == 30
  np.testing.assert_allclose(np.linalg.norm(m.reference, axis=1), 1, atol=1e-3)
  assert m.subset("stage1").reference is not None and m.subset("stage2").reference is None
  got = _by_file(scanned)
  files = sorted(got)
  e = np.stack([got[f][0] for f in files]).astype(np.float32)
  want = metric.knn_score(e, m.reference, ref["k"], ref["scale"])
  np.testing.assert_allclose([got[f][1] for f in files], want, rtol=2e-2, atol=2e-3)
  emb = m.embed(files)  # the scan stores exactly what Model.embed gives, in float16
  np.testing.assert_allclose(e, emb, rtol=2e-3, atol=2e-3 * np.abs(emb).max())
  summary = json.loads((scanned / "summary.json").read_text())
  assert summary["embeddings"] and summary["anomaly_reference"]["n"] == 30
  assert summary["n_anomalies_written"] == 5
  from astropy.table import Table
  odd = Table.read(scanned / "anomalies.fits")
  assert len(odd) == 5 and np.all(np.diff(odd["anomaly"]) <= 0)
  assert odd["anomaly"][0] == pytest.approx(np.nanmax(want), rel=2e-2)
  report = (scanned / "report.md").read_text()
  assert "## Anomalies" in report and (scanned / "top_anomalies.png").exists()


def test_without_a_reference_anomalies_are_null_and_the_report_says_so(tmp_path, tiny_bundles):
  out = tmp_path / "out"
  _scan(out, _sample(8), tiny_bundles["classifier"])
  assert all(a is None for _, a in _by_file(out).values())
  assert "carries no reference" in (out / "report.md").read_text()
  with pytest.raises(scan.InputError, match="--embeddings"):
    scan.scan(spectra=_sample(2), out=tmp_path / "o2", anomalies=3, progress=False)


def test_a_crash_between_embeddings_and_rows_resumes_exactly_once(tmp_path, tiny_bundles,
                                                                  monkeypatch, with_reference,
                                                                  scanned):
  out = tmp_path / "out"
  write = chunks.Store.write
  calls = []

  def crash_on_third(self, i, table, errors, process=0, embedding=None):
    calls.append(i)
    if len(calls) == 3:  # the embeddings of chunk i land (half of them), its rows never do
      chunks.write_atomic(self.embedding_path(i), lambda t: chunks._save_npy(t, embedding[:2]))
      raise RuntimeError("killed")
    return write(self, i, table, errors, process, embedding)

  monkeypatch.setattr(chunks.Store, "write", crash_on_third)
  with pytest.raises(RuntimeError, match="killed"):
    _scan(out, _scanned_files(), with_reference, chunk_size=16)
  monkeypatch.setattr(chunks.Store, "write", write)
  assert len(list((out / "chunks").glob("*.parquet"))) == 2
  _scan(out, _scanned_files(), with_reference, chunk_size=16)
  a, b = _by_file(scanned), _by_file(out)
  assert sorted(a) == sorted(b) and len(b) == 40
  for f in a:
    np.testing.assert_array_equal(a[f][0], b[f][0])
  # a resumed scan must not mix stored embeddings with none
  with pytest.raises(scan.OutputError, match="embeddings"):
    scan.scan(spectra=_scanned_files(), out=out, model=str(with_reference), workers=0,
              chunk_size=16, progress=False, log=lambda *_: None)


def test_a_query_in_the_scan_finds_itself_first_and_exact_equals_brute_force(scanned,
                                                                               with_reference):
  files = _scanned_files()
  t = similar.search(scanned, files[:6] + ["missing.fits"], k=7, log=lambda *_: None)
  assert t.meta["search"]["kind"] == "exact" and len(t) == 6 * 7
  first = t[t["rank"] == 1]
  assert [os.path.basename(f) for f in first["file"]] == list(first["query"])
  assert np.all(first["distance"] < 1e-2)
  # brute force over every stored embedding
  got = _by_file(scanned)
  names = list(got)
  e = metric.unit(np.stack([got[f][0] for f in names]))
  q = metric.unit(bundle.load_model(with_reference).embed(files[:6]))
  d = np.sqrt(metric.sq_distances(q, e))
  for j in range(6):
    rows = t[t["query"] == os.path.basename(files[j])]
    want = np.sort(d[j])[:7]
    np.testing.assert_allclose(rows["distance"], want, atol=1e-5)
    assert set(rows["file"][1:]) <= {names[i] for i in np.argsort(d[j])[:8]}
  emb = store.Embeddings(scanned)
  obsids = [o for o in emb.table(np.arange(emb.n), ["obsid"])["obsid"].to_pylist() if o][:3]
  by_obsid = similar.search(scanned, obsids=obsids + [12345], k=3)
  assert len(obsids) == 3 and by_obsid.meta["skipped"] == ["obsid 12345 (not in the scan)"]
  first = by_obsid[by_obsid["rank"] == 1]
  assert list(first["obsid"]) == obsids and np.all(first["distance"] < 1e-6)


def test_index_search_equals_brute_force_and_recalls_well(tmp_path):
  x = make_mirror.embedding_scan(tmp_path, 6000, dim=16, chunk_size=1000)
  emb = store.Embeddings(tmp_path)
  assert emb.n == 6000 and list(emb.offsets[:3]) == [0, 1000, 2000]
  rng = np.random.default_rng(1)
  q = metric.unit(x[rng.choice(len(x), 50)] + 0.05 * rng.normal(size=(50, 16)))
  d = np.sqrt(metric.sq_distances(q, x))
  want = np.sort(d, axis=1)[:, :10]
  ed, er = index.exact(emb, q, 10, block=700)  # blocks that straddle chunks
  np.testing.assert_allclose(ed, want, atol=1e-5)
  np.testing.assert_allclose(np.take_along_axis(d, er, 1), want, atol=1e-5)
  path = tmp_path / "similar" / "index.faiss"
  path.parent.mkdir()
  about = index.build(emb, path, nlist=16, train_size=2000, block=700)
  assert about["n"] == 6000 and about["m"] == 2
  ivf, about = index.load(path)
  # every cell searched and every row a candidate: exactly the brute-force answer
  fd, fr = index.search(ivf, emb, q, 10, nprobe=16, rerank=600)
  np.testing.assert_allclose(fd, want, atol=1e-5)
  np.testing.assert_array_equal(fr, er)
  # the defaults: at least 95% of the true 10 nearest
  fd, fr = index.search(ivf, emb, q, 10, nprobe=4)
  recall = np.mean([len(set(fr[j]) & set(er[j])) / 10 for j in range(len(q))])
  assert recall >= 0.95, recall
  first = make_mirror.OBSID0
  t = similar.search(tmp_path, obsids=[first + 5, first + 4321], k=4, exact=False)
  assert t.meta["search"]["kind"] == "ivfpq"
  assert list(t["obsid"][t["rank"] == 1]) == [first + 5, first + 4321]


@pytest.mark.slow
def test_the_command_line_finds_catalog_obsids_first_and_names_a_bad_scan(tmp_path, scanned):
  # (embeddings exactly once under SIGKILL: test_scan's SIGKILL test runs with --embeddings)
  out = scanned
  obsids = pq.read_table(out / "predictions.parquet", columns=["obsid"])["obsid"].to_pylist()
  (tmp_path / "q.csv").write_text("obsid\n" + "\n".join(map(str, obsids[:3])) + "\n")
  r = subprocess.run([sys.executable, "-m", "astrotl.similar", f"--scan={out}",
                      f"--query={tmp_path / 'q.csv'}", "--k=5", f"--out={tmp_path / 's.fits'}"],
                     env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  from astropy.table import Table
  t = Table.read(tmp_path / "s.fits")
  assert len(t) == 15 and list(t["obsid"][t["rank"] == 1]) == obsids[:3]
  assert np.all(t["distance"][t["rank"] == 1] < 1e-3)
  r = subprocess.run([sys.executable, "-m", "astrotl.similar", f"--scan={tmp_path}",
                      "--query=x.fits"], env=_env(), capture_output=True, text=True)
  assert r.returncode == 2 and "scan.json" in r.stderr and "Traceback" not in r.stderr


# --- issue 24: embeddings are checked before use -------------------------------------------

def test_embeddings_one_row_short_of_their_chunk_are_refused(tmp_path):
  """One row fewer than the chunk's parquet reported the next file as the query, at 0.0."""
  make_mirror.embedding_scan(tmp_path, 300, dim=8, chunk_size=100)
  s = chunks.Store(tmp_path, 300, 100)
  path = s.embedding_path(1)
  np.save(path, np.load(path)[:-1])
  with pytest.raises(similar.SimilarError, match=r"chunk_000001.embedding.npy: 99 embeddings, "
                     r"but the chunk has 100 rows"):
    similar.search(tmp_path, obsids=[make_mirror.OBSID0 + 150], k=3)


@pytest.mark.parametrize("exact", [True, False])
def test_non_finite_embeddings_are_left_out_and_counted(tmp_path, exact):
  """NaN rows in a chunk made the query vanish from its own results."""
  x = make_mirror.embedding_scan(tmp_path, 3000, dim=8, chunk_size=1000)
  s = chunks.Store(tmp_path, 3000, 1000)
  e = np.load(s.embedding_path(0))
  e[[3, 4, 5]] = np.nan
  e[6, 0] = np.inf
  np.save(s.embedding_path(0), e)
  first, logs = make_mirror.OBSID0, []
  t = similar.search(tmp_path, obsids=[first + 10, first + 2500, first + 4], k=5, exact=exact,
                     log=logs.append)
  assert t.meta["skipped"] == [f"obsid {first + 4} (its stored embedding is not finite)"]
  assert list(t["obsid"][t["rank"] == 1]) == [first + 10, first + 2500]
  assert np.all(np.isfinite(t["distance"])) and not set(t["obsid"]) & {first + i for i in
                                                                           (3, 4, 5, 6)}
  assert t.meta["search"]["left_out"] == 4 and any("4 spectra" in m for m in logs), logs
  want = np.sort(np.sqrt(metric.sq_distances(x[[10]], np.delete(x, [3, 4, 5, 6], 0)))[0])[:5]
  np.testing.assert_allclose(t["distance"][:5], want, atol=1e-3 if not exact else 1e-5)
