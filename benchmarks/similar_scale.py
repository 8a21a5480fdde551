"""Similarity search at survey scale: the index's build time, query time and peak memory on a
made mirror, nearest-neighbour libraries side by side, and a projection to DR9.

  python benchmarks/similar_scale.py --n=100000 --mirror=/scratch/mirror100k
  python benchmarks/similar_scale.py --scan=/scratch/scan100k     # a finished --embeddings scan

1. scan    `python -m astrotl.scan --embeddings` over the mirror (timed as scan_scale.py),
           unless --scan names one;
2. astrotl `astrotl.similar` as a user runs it, each step in a fresh process with its peak
           resident memory: building the index; 100 queries through it; the same 100
           queries exactly (every spectrum); recall@10 and @50 of the index against exact;
3. libraries the same embeddings and queries through each candidate library, each in a
           fresh process: faiss IVF-PQ + exact re-ranking (astrotl's choice, at a few
           settings), faiss HNSW, usearch HNSW (f16, i8), hnswlib HNSW (f32): build
           seconds, index bytes, peak memory, query milliseconds, recall@10/@50;
4. DR9     the measured sizes and rates carried to 11.2 M spectra (stated as projections).
The queries are 100 random spectra of the scan (their stored embeddings).  The made mirror
holds noisy copies of a few dozen real spectra, so its embeddings form a few dozen tight
clusters: not a survey's distribution, and an easy one for recall (--synthetic gives a
second one).  Writes benchmarks/results/similar_scale_<backend>[_synthetic].json.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
# --n, --mirror, --model, --workers and --out are scan_throughput's flags, shared.
from scan_throughput import _MIRROR, _MODEL, _N, _OUT, _WORKERS, mirror_paths, time_scan

_SCAN = flags.DEFINE_string("scan", None, "A finished --embeddings scan to reuse.")
_SYNTHETIC = flags.DEFINE_integer("synthetic", 0, "Instead of a scan: this many synthetic "
                                  "embeddings (1000 Gaussian clusters; a second distribution "
                                  "beside the mirror's noisy copies of a few dozen stars).")
_SCAN_OUT = flags.DEFINE_string("scan_out", None, "Where to scan (default a folder beside "
                                "--mirror, kept for reuse with --scan).")
_LIBS = flags.DEFINE_list("libraries", ["faiss_ivfpq", "faiss_hnsw", "usearch_f16",
                                        "usearch_i8", "hnswlib"], "Libraries to compare.")
_QUERIES = flags.DEFINE_integer("queries", 100, "Queries.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count(), "Threads of every library (OpenMP "
                                "for faiss); on a machine others load, 1 avoids OpenMP's "
                                "spinning threads waiting for a core.")
_DEVICE = flags.DEFINE_bool("device", True, "Measure the scan's device function without and "
                             "with embeddings and the anomaly score (needs --model).")
_STEP = flags.DEFINE_string("step", None, "Internal: run one step in this process.")
_ARG = flags.DEFINE_string("arg", None, "Internal: the step's argument (JSON).")

REPO = pathlib.Path(__file__).resolve().parents[1]
DR9 = 11_200_000
K = 50


def peak_rss_mb():
  for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def rss_mb():
  for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def queries(emb, n, seed=0):
  rows = np.sort(np.random.default_rng(seed).choice(emb.n, n, replace=False))
  return rows, emb.rows(rows)


def step(name, arg):
  """One measured step, in this (fresh) process; returns a JSON-able dict."""
  from astrotl import similar
  from astrotl.similar import index, store
  import faiss  # noqa: F401 (imported before the baseline, like each library below)
  if name.startswith("usearch"):
    import usearch.index  # noqa: F401
  if name == "hnswlib":
    import hnswlib  # noqa: F401
  emb = store.Embeddings(arg["scan"])
  rows, q = queries(emb, arg["queries"])
  out = {"rss_after_imports_mb": rss_mb()}
  if name == "exact":
    t = time.time()
    d, r = index.exact(emb, q, K)
    out.update(seconds=time.time() - t, rows=r.tolist())
  elif name == "build":
    t = time.time()
    similar.nearest(emb, q[:1], 1, exact=False, rebuild=True)
    out.update(seconds=time.time() - t,
               about=json.loads((emb.folder / "similar" / "index.faiss.json").read_text()))
  elif name == "search":  # as a user calls it, cold: load, search, table of neighbours
    import astropy.table  # noqa: F401 (a one-off second to import, not a per-query cost)
    t = time.time()
    ivf, _ = index.load(emb.folder / "similar" / "index.faiss")
    d, r = index.search(ivf, emb, q, K)
    t_index = time.time() - t
    table = similar._table(emb, [str(i) for i in rows], d, r, {})
    out.update(seconds=time.time() - t, index_seconds=t_index, table_seconds=time.time() - t
               - t_index, chunks_read=int(len(np.unique(np.searchsorted(
                   emb.offsets, r.ravel(), side="right")))), rows=r.tolist(), n_rows=len(table))
  else:
    out.update(library(name, emb, q, arg))
  out["peak_rss_mb"] = peak_rss_mb()
  out["peak_rss_over_imports_mb"] = out["peak_rss_mb"] - out["rss_after_imports_mb"]
  return out


def library(name, emb, q, arg):
  """Build and query one library; returns build/query seconds, bytes and result rows."""
  d = emb.dim
  folder = pathlib.Path(arg["tmp"])
  t = time.time()
  if name == "faiss_ivfpq":  # one build, several nprobe
    from astrotl.similar import index
    path = folder / "ivfpq.faiss"
    about = index.build(emb, path, m=arg["m"])
    build = time.time() - t
    ivf, _ = index.load(path)
    probes = {}
    for nprobe in arg["nprobes"]:
      t = time.time()
      _, rows = index.search(ivf, emb, q, K, nprobe=nprobe)
      probes[nprobe] = {"query_seconds": time.time() - t, "rows": rows.tolist()}
    return {"build_seconds": build, "bytes": about["bytes"], "probes": probes,
            "params": {"nlist": about["nlist"], "m": about["m"], "rerank": index.RERANK}}
  if name == "faiss_hnsw":
    import faiss
    index = faiss.IndexHNSWFlat(d, 32)
    index.hnsw.efConstruction = 80
    for _, b in emb.blocks():
      index.add(b)
    build = time.time() - t
    path = folder / "hnsw.faiss"
    faiss.write_index(index, str(path))
    index.hnsw.efSearch = 128
    t = time.time()
    _, rows = index.search(q, K)
    return {"build_seconds": build, "bytes": os.path.getsize(path),
            "query_seconds": time.time() - t, "rows": rows.tolist(),
            "params": {"M": 32, "efConstruction": 80, "efSearch": 128}}
  if name.startswith("usearch"):
    from usearch.index import Index
    dtype = name.split("_")[1]
    index = Index(ndim=d, metric="l2sq", dtype=dtype, connectivity=16, expansion_add=128,
                  expansion_search=128)
    for first, b in emb.blocks():
      index.add(np.arange(first, first + len(b)), b, log=False, threads=arg["threads"])
    build = time.time() - t
    path = folder / f"{name}.usearch"
    index.save(str(path))
    del index
    index = Index.restore(str(path), view=True)  # memory-mapped, as it would serve DR9
    t = time.time()
    m = index.search(q, K, threads=arg["threads"])
    return {"build_seconds": build, "bytes": os.path.getsize(path),
            "query_seconds": time.time() - t, "rows": np.asarray(m.keys).tolist(),
            "params": {"connectivity": 16, "expansion_add": 128, "expansion_search": 128}}
  if name == "hnswlib":
    import hnswlib
    index = hnswlib.Index(space="l2", dim=d)
    index.init_index(max_elements=emb.n, ef_construction=128, M=16)
    index.set_num_threads(arg["threads"])
    for first, b in emb.blocks():
      index.add_items(b, np.arange(first, first + len(b)))
    build = time.time() - t
    path = folder / "hnswlib.bin"
    index.save_index(str(path))
    index.set_ef(128)
    t = time.time()
    rows, _ = index.knn_query(q, K)
    return {"build_seconds": build, "bytes": os.path.getsize(path),
            "query_seconds": time.time() - t, "rows": rows.tolist(),
            "params": {"M": 16, "ef_construction": 128, "ef": 128}}
  raise ValueError(f"unknown library {name}")


def run_step(name, arg):
  """Runs `step` in a fresh Python process; its dict."""
  env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(arg["threads"]))
  r = subprocess.run([sys.executable, __file__, f"--step={name}", f"--arg={json.dumps(arg)}"],
                     env=env, capture_output=True, text=True)
  if r.returncode != 0:
    raise RuntimeError(f"step {name} failed: {r.stderr[-3000:]}")
  return json.loads(r.stdout.strip().splitlines()[-1])


def recall(rows, truth, k):
  return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(rows, truth)]))


def main(argv):
  del argv
  if _STEP.value:
    print(json.dumps(step(_STEP.value, json.loads(_ARG.value))))
    return
  import jax
  from astrotl.similar import store
  result = {"backend": jax.default_backend(), "cpu_count": os.cpu_count(),
            "load_average_before": os.getloadavg(), "k": K, "queries": _QUERIES.value}
  scan_dir = _SCAN.value
  if _SYNTHETIC.value:
    from astrotl.tools import make_mirror
    scan_dir = pathlib.Path(tempfile.mkdtemp(prefix="astrotl-synthetic-"))
    make_mirror.embedding_scan(scan_dir, _SYNTHETIC.value, clusters=1000, spread=0.5)
    result["synthetic"] = {"n": _SYNTHETIC.value, "clusters": 1000, "spread": 0.5}
  elif not scan_dir:
    catalog, _ = mirror_paths(_N.value, _MIRROR.value)
    scan_dir = _SCAN_OUT.value or f"{_MIRROR.value.rstrip('/')}-scan"
    wall, summary, main_rss, tree_rss = time_scan(
        [f"--catalog={catalog}", f"--model={_MODEL.value}", f"--workers={_WORKERS.value}",
         "--embeddings", "--anomalies=100"], scan_dir)
    result["scan"] = {"wall_seconds": wall, "rate_wall": summary["n_inputs"] / wall,
                      "rate_steady": summary["spectra_per_second"],
                      "peak_rss_main_mb": main_rss / 2**20, "peak_rss_tree_mb": tree_rss / 2**20}
    print(f"scan with --embeddings: {wall:.0f} s ({result['scan']['rate_wall']:.0f} spectra/s)")
  emb = store.Embeddings(scan_dir)
  chunk_bytes = sum(os.path.getsize(emb.store.embedding_path(i)) for i in range(emb.store.n_chunks))
  result.update(scan_dir=str(scan_dir), n=emb.n, dim=emb.dim, store_bytes=chunk_bytes,
                chunk_rows=emb.manifest["chunk_size"])
  arg = {"scan": str(scan_dir), "queries": _QUERIES.value, "threads": _THREADS.value}
  result["threads"] = _THREADS.value
  exact = run_step("exact", arg)
  truth = exact.pop("rows")
  result["exact"] = exact
  print(f"exact pass: {_QUERIES.value} queries in {exact['seconds']:.1f} s, peak RSS "
        f"{exact['peak_rss_mb']:.0f} MB")
  build = run_step("build", arg)
  search = run_step("search", arg)
  rows = search.pop("rows")
  search.update(recall_at_10=recall(rows, truth, 10), recall_at_50=recall(rows, truth, K))
  result["astrotl"] = {"build": build, "search": search}
  print(f"astrotl index: built in {build['seconds']:.1f} s (peak RSS {build['peak_rss_mb']:.0f} "
        f"MB, {build['about']['bytes'] / 2**20:.1f} MB on disk); {_QUERIES.value} queries in "
        f"{search['seconds']:.2f} s (peak RSS {search['peak_rss_mb']:.0f} MB); recall@10 "
        f"{search['recall_at_10']:.3f}, @50 {search['recall_at_50']:.3f}")
  if _DEVICE.value and not _SYNTHETIC.value:
    result["device_spectra_per_second"] = device_cost(_MODEL.value, scan_dir)
    print(f"device function, spectra/s: {result['device_spectra_per_second']}")
  result["libraries"] = {}
  with tempfile.TemporaryDirectory(prefix="astrotl-similar-bench-") as tmp:
    for name in _LIBS.value:
      if name == "faiss_ivfpq":
        for m in (32, 64):
          r = run_step(name, dict(arg, tmp=tmp, m=m, nprobes=[8, 16, 32, 64, 128]))
          for nprobe, got in r.pop("probes").items():
            report(result, f"faiss_ivfpq_m{m}_nprobe{nprobe}",
                   dict(r, query_seconds=got["query_seconds"],
                        params=dict(r["params"], nprobe=int(nprobe))), got["rows"], truth, emb)
      else:
        r = run_step(name, dict(arg, tmp=tmp))
        report(result, name, r, r.pop("rows"), truth, emb)
  result["dr9_projection"] = project(result, emb)
  result["load_average_after"] = os.getloadavg()
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  tag = "_synthetic" if _SYNTHETIC.value else ""
  (out / f"similar_scale_{result['backend']}{tag}.json").write_text(json.dumps(result, indent=1))
  print(json.dumps(result["dr9_projection"], indent=1))


def device_cost(model_path, scan_dir, batch=256, seconds=10.0, rounds=3):
  """Spectra/s of the scan's device function(s) on one batch of decoded spectra: without
  embeddings, with embeddings, and with embeddings and the anomaly score (the model's
  reference), alternated so a varying load affects all alike."""
  import jax
  import pyarrow.parquet as pq
  from astrotl import bundle, parallel
  from astrotl.io import batch as io_batch
  from astrotl.scan import runner
  model = bundle.load_model(model_path)
  bare = bundle.Model({n: net.variables for n, net in model.networks.items()},
                      dict(model.meta, reference=None), source=model.source)
  files = pq.read_table(pathlib.Path(scan_dir) / "chunks" / "chunk_000000.parquet",
                        columns=["file"])["file"].to_pylist()[:batch]
  _, arrays, _, _ = io_batch.decode_many(files)
  mesh = parallel.make_mesh(jax.local_devices())
  runs = {"no_embeddings": runner.Runner(bare, mesh, batch),
          "embeddings": runner.Runner(bare, mesh, batch, embed=True)}
  if model.reference is not None:
    runs["embeddings_and_anomaly"] = runner.Runner(model, mesh, batch, embed=True)
  raw = {k: np.resize(v, (batch,) + v.shape[1:]) for k, v in arrays.items()}
  rates = {k: [] for k in runs}
  for run in runs.values():
    run.warm_up()
  for _ in range(rounds):
    for name, run in runs.items():
      n, t = 0, time.time()
      while time.time() - t < seconds:
        for fn, v in zip(run.fns, run.variables):
          jax.block_until_ready(run._dispatch(fn, v, raw, batch)[0])
        n += batch
      rates[name].append(n / (time.time() - t))
  out = {k: float(np.median(v)) for k, v in rates.items()}
  out["reference_rows"] = 0 if model.reference is None else len(model.reference)
  # The anomaly score alone, which the rates above cannot resolve on a loaded machine.
  import jax.numpy as jnp
  from astrotl.similar import metric, reference
  e = jnp.asarray(np.random.default_rng(0).normal(size=(batch, model.primary.embedding_width)),
                  jnp.float32)
  score = jax.jit(lambda e, r: metric.knn_score(e, r, reference.K, 1.0, xp=jnp))
  for rows in sorted({out["reference_rows"] or 327, reference.SIZE}):
    r = jnp.asarray(metric.unit(np.random.default_rng(1).normal(size=(rows, e.shape[1]))))
    score(e, r).block_until_ready()
    n, t = 0, time.time()
    while time.time() - t < 3:
      score(e, r).block_until_ready()
      n += 1
    out[f"anomaly_ms_per_batch_reference_{rows}"] = 1000 * (time.time() - t) / n
  out["networks_ms_per_batch"] = 1000 * batch / out["no_embeddings"]
  return out


def report(result, name, r, rows, truth, emb):
  r = dict(r, recall_at_10=recall(rows, truth, 10), recall_at_50=recall(rows, truth, K),
           query_ms=1000 * r["query_seconds"] / len(truth), bytes_per_spectrum=r["bytes"] / emb.n)
  result["libraries"][name] = r
  print(f"{name:26s} build {r['build_seconds']:7.1f} s  {r['bytes'] / 2**20:7.1f} MB  "
        f"peak RSS {r['peak_rss_mb']:6.0f} MB  query {r['query_ms']:6.2f} ms  recall@10 "
        f"{r['recall_at_10']:.3f} @50 {r['recall_at_50']:.3f}")


def project(result, emb):
  """DR9 from the measurements (projections, not measurements): sizes per spectrum; the
  index's k-means training time scales with training rows x cells and its adding time
  with rows x cells; a query scans n * nprobe / nlist codes, which grows as sqrt(n) with
  nlist ~ sqrt(n), and the table of neighbours reads each chunk they fall in once."""
  from astrotl.similar import index
  b = result["astrotl"]["build"]["about"]
  s = result["astrotl"]["search"]
  scale = DR9 / emb.n
  nlist = index.default_nlist(DR9)
  train = b["train_seconds"] * (nlist / b["nlist"]) * (
      index.training_rows(DR9, nlist) / b["train_size"])
  add = (b["build_seconds"] - b["train_seconds"]) * scale * (nlist / b["nlist"])
  chunk_rows = result["chunk_rows"]
  chunks_dr9 = DR9 / chunk_rows
  n_neighbours = result["queries"] * K
  # chunks hit by the neighbours of 100 queries, if they fall at random
  chunks_hit = chunks_dr9 * (1 - (1 - 1 / chunks_dr9) ** n_neighbours)
  return {
      "n": DR9, "nlist": nlist, "store_gb": DR9 * emb.dim * 2 / 1e9,
      "index_gb": b["bytes"] / emb.n * DR9 / 1e9,
      "build_hours_single_thread": (train + add) / 3600,
      "exact_seconds_per_100_queries": result["exact"]["seconds"] * scale,
      "index_seconds_per_query": s["index_seconds"] / result["queries"] * np.sqrt(scale),
      "table_seconds_per_100_queries": s["table_seconds"] / s["chunks_read"] * chunks_hit,
      "peak_rss_build_gb": (index.training_rows(DR9, nlist) * emb.dim * 4 * 2
                            + b["bytes"] / emb.n * DR9 + 65536 * emb.dim * 6) / 1e9,
      "graph_index_ram_gb": {k: v["bytes_per_spectrum"] * DR9 / 1e9
                             for k, v in result["libraries"].items()
                             if not k.startswith("faiss_ivfpq")},
      "note": "projected from the 10^5 measurements, not measured: see project() in "
              "benchmarks/similar_scale.py"}


if __name__ == "__main__":
  app.run(main)
