"""Nearest neighbours among a scan's embeddings: an exact pass, or a faiss IVF-PQ index with
exact re-ranking.

exact   every query against every row, streamed block by block from the memory-mapped
        chunks: exact, no index, memory O(block); the default below INDEX_FROM rows.
ivfpq   faiss IndexIVFPQ (an inverted file of `nlist` k-means cells, each vector stored
        as `m` bytes of product-quantization code plus an 8-byte id): the `nprobe` cells
        nearest a query give `rerank * k` candidates, whose exact distances, read from the
        memory-mapped float16 store, pick the k returned.  The index is built streaming:
        k-means and PQ are trained on a random sample, then the rows are added block by
        block.  Its file (about 45 bytes per spectrum at m=32: 0.5 GB for DR9) is read
        memory-mapped, and the 5.7 GB float16 store of DR9 stays on disk.

Why faiss IVF-PQ rather than a graph (HNSW) index (faiss HNSW, usearch, hnswlib), measured
on 10^5 scanned spectra (benchmarks/RESULTS.md, "More like these"): the graph indexes
answer a query 10x faster (0.25 ms against 2.8 ms) at the same recall, but hold
every vector and its links in memory, 400-1300 bytes per spectrum, 4.5-14.5 GB for DR9
(usearch's int8 copy, the smallest, lost 12% recall), and are built in memory.  IVF-PQ
keeps 45 bytes per spectrum and reaches the same recall once re-ranked exactly.
"""

import json
import os
import time

import numpy as np

from astrotl.scan.chunks import write_atomic
from astrotl.similar import metric
from astrotl.similar.store import SimilarError

INDEX_FROM = 200_000  # rows; below this the exact pass is fast enough (about 0.1 s a query)
NPROBE = 64
RERANK = 10


def exact(emb, queries, k, block=65536):
  """(distances, rows), each (len(queries), k), of the k nearest rows of every query
  (unit float32 rows), streaming over the store."""
  q = np.asarray(queries, np.float32)
  k = min(int(k), emb.n)
  best_d = np.full((len(q), 0), np.inf, np.float32)
  best_i = np.zeros((len(q), 0), np.int64)
  for first, b in emb.blocks(block):
    d2 = metric.sq_distances(q, b)
    d2[:, ~np.isfinite(b).all(axis=1)] = np.inf  # a non-finite row is never a neighbour
    take = min(k, d2.shape[1])
    part = np.argpartition(d2, take - 1, axis=1)[:, :take]
    best_d = np.concatenate([best_d, np.take_along_axis(d2, part, 1)], axis=1)
    best_i = np.concatenate([best_i, part + first], axis=1)
    keep = np.argsort(best_d, axis=1, kind="stable")[:, :k]
    best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
  best_i[~np.isfinite(best_d)] = -1  # fewer than k usable rows
  return np.sqrt(best_d), best_i


def default_nlist(n) -> int:
  """About sqrt(n) cells, a power of two in [16, 65536]: 4096 for DR9."""
  return int(2 ** np.clip(np.round(np.log2(np.sqrt(max(n, 1)))), 4, 16))


def default_m(dim) -> int:
  """PQ bytes per spectrum: dim / 8 (32 for 256), at most 64.  Sub-vectors of 8 dimensions
  train fast; 4 made training six times slower for no recall after re-ranking."""
  return max(d for d in (64, 32, 16, 8, 4, 2, 1) if dim % d == 0 and d <= max(dim // 8, 1))


def training_rows(n, nlist) -> int:
  """Rows the k-means and PQ training sample: 50 per cell (faiss wants 39), at least 2^16."""
  return int(min(n, max(50 * nlist, 65536)))


def build(emb, path, nlist=None, m=None, train_size=None, seed=0, block=65536, log=None):
  """Builds the IVF-PQ index of `emb` into `path` (+ `path`.json); returns its description."""
  import faiss
  t0 = time.time()
  nlist = int(nlist or default_nlist(emb.n))
  m = int(m or default_m(emb.dim))
  train_size = int(min(emb.n, train_size or training_rows(emb.n, nlist)))
  if emb.n < nlist * 8 or emb.n < 256:
    raise SimilarError(f"{emb.n} rows are too few for an index of {nlist} cells; use the "
                       "exact search")
  rng = np.random.default_rng(seed)
  sample = np.sort(rng.choice(emb.n, train_size, replace=False))
  index = faiss.IndexIVFPQ(faiss.IndexFlatL2(emb.dim), emb.dim, nlist, m, 8)
  index.cp.seed = seed
  index.pq.cp.seed = seed
  train = emb.rows(sample)
  index.train(train[np.isfinite(train).all(axis=1)])
  t_train = time.time() - t0
  for first, b in emb.blocks(block):
    ok = np.isfinite(b).all(axis=1)  # a non-finite row is left out of the index
    index.add_with_ids(b[ok], np.arange(first, first + len(b), dtype=np.int64)[ok])
    if log:
      log(f"astrotl.similar: indexed {first + len(b)} of {emb.n} spectra")
  write_atomic(path, lambda t: faiss.write_index(index, str(t)))
  about = {"kind": "ivfpq", "digest": emb.digest(), "n": emb.n, "dim": emb.dim,
           "nlist": nlist, "m": m, "train_size": train_size, "seed": seed,
           "left_out": emb.left_out,
           "train_seconds": t_train, "build_seconds": time.time() - t0,
           "bytes": os.path.getsize(path), "faiss": faiss.__version__}
  write_atomic(f"{path}.json", lambda t: t.write_text(json.dumps(about, indent=1)))
  return about


def load(path):
  """(faiss index read memory-mapped, its description)."""
  import faiss
  with open(f"{path}.json") as f:
    about = json.load(f)
  return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY), about


def search(index, emb, queries, k, nprobe=NPROBE, rerank=RERANK):
  """(distances, rows) of the k nearest rows of each query: `rerank * k` candidates from
  the index's `nprobe` nearest cells, re-ranked by their exact distance."""
  q = np.asarray(queries, np.float32)
  k = min(int(k), emb.n)
  index.nprobe = int(min(nprobe, index.nlist))
  _, cand = index.search(q, int(min(rerank * k, emb.n)))
  every = np.unique(cand[cand >= 0])  # one pass over the store for all queries
  vectors = emb.rows(every)
  dist = np.full((len(q), k), np.nan, np.float32)
  rows = np.full((len(q), k), -1, np.int64)
  for j in range(len(q)):
    c = np.unique(cand[j][cand[j] >= 0])
    d = np.sqrt(metric.sq_distances(q[j:j + 1], vectors[np.searchsorted(every, c)])[0])
    order = np.argsort(d, kind="stable")[:k]
    dist[j, :len(order)], rows[j, :len(order)] = d[order], c[order]
  return dist, rows
