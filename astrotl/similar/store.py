"""A finished scan's embeddings, read chunk by chunk from disk, never all at once.

`python -m astrotl.scan --embeddings` writes, beside each chunk's rows, the rows'
embeddings as `chunks/chunk_NNNNNN.embedding.npy` (float16, (rows, D), the same order).
Row number r of the whole scan is row r - offsets[i] of chunk i, and row r of
predictions.parquet.  Chunks are opened memory-mapped, so only the pages read are in
memory; blocks are made unit-length (`metric.unit`) as they are read.

Nothing in the files is trusted: each chunk's embeddings must have as many rows as its
table (else SimilarError naming the file), and a row that is not finite (NaN or inf) is
left out of every search and index, and counted (`left_out`).
"""

import json
import os
import pathlib

import numpy as np

from astrotl.similar import metric

# Columns of a neighbour the search reports, from the chunk tables when present.
COLUMNS = ("file", "obsid", "designation", "ra", "dec", "survey_class", "survey_subclass",
           "class1", "pred_class", "p_wd", "anomaly")


class SimilarError(ValueError):
  """A scan or query that cannot be searched; the message says what to do."""


class Embeddings:
  """The embeddings of the scan in `folder` (a finished `--embeddings` scan)."""

  def __init__(self, folder):
    from astrotl.scan import chunks
    self.folder = pathlib.Path(folder)
    try:
      self.manifest = json.loads((self.folder / "scan.json").read_text())
    except (OSError, json.JSONDecodeError):
      raise SimilarError(f"--scan={folder}: no readable scan.json; give the --out folder of "
                         "a finished python -m astrotl.scan --embeddings") from None
    if not self.manifest.get("embeddings"):
      raise SimilarError(f"--scan={folder}: the scan was run without --embeddings; run it "
                         "again with --embeddings into a new --out")
    self.store = chunks.Store(self.folder, self.manifest["n_inputs"], self.manifest["chunk_size"])
    unfinished = [i for i in range(self.store.n_chunks) if not self.store.done(i)]
    if unfinished:
      raise SimilarError(f"--scan={folder}: {len(unfinished)} of {self.store.n_chunks} chunks "
                         "are not finished; re-run the scan's command to finish them")
    self.dim = int(self.manifest["embeddings"]["width"])
    self._maps = {}
    counts = [self._open(i, keep=False).shape[0] for i in range(self.store.n_chunks)]
    self._check_rows(counts)
    self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.n = int(self.offsets[-1])
    self.left_out = None  # rows with non-finite embeddings, once a pass has seen them all

  def _check_rows(self, counts):
    """Row i of a chunk's embeddings is row i of its table: their lengths must agree
    (a shorter file would shift every later row onto the wrong spectrum)."""
    import pyarrow.parquet as pq
    for i, n in enumerate(counts):
      table = self.store.chunks / f"{self.store.name(i)}.parquet"
      try:
        rows = pq.ParquetFile(table).metadata.num_rows
      except (OSError, ValueError) as e:
        raise SimilarError(f"{table}: cannot read the chunk's rows ({e})") from None
      if rows != n:
        raise SimilarError(f"{self.store.embedding_path(i)}: {n} embeddings, but the chunk "
                           f"has {rows} rows; the scan's files are damaged: scan again "
                           "with --embeddings into a new --out")

  def _open(self, i, keep=True):
    if i in self._maps:
      return self._maps[i]
    path = self.store.embedding_path(i)
    try:
      a = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
      raise SimilarError(f"{path}: cannot read the chunk's embeddings ({e})") from None
    if a.ndim != 2 or (len(a) and a.shape[1] != self.dim):
      raise SimilarError(f"{path}: shape {a.shape}, expected (rows, {self.dim})")
    if keep:  # a memory map: only the pages read stay in memory
      self._maps[i] = a
    return a

  def digest(self) -> str:
    """Changes when the scan's chunks do (an index built from them is then stale)."""
    import hashlib
    h = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode())
    for i in range(self.store.n_chunks):
      st = os.stat(self.store.embedding_path(i))
      h.update(f"{i}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]

  def blocks(self, size: int = 65536):
    """(first row, unit float32 block) over all rows, at most `size` rows at a time; a
    non-finite row stays NaN (callers leave it out) and a whole pass sets `left_out`."""
    buf, start, first, bad = [], 0, 0, 0
    for i in range(self.store.n_chunks):
      a = self._open(i, keep=False)  # a pass over everything: let each map go
      for s in range(0, len(a), size):
        buf.append(a[s:s + size])
        start += len(buf[-1])
        if start - first >= size:
          block = _unit(np.concatenate(buf))
          bad += int((~np.isfinite(block).all(axis=1)).sum())
          yield first, block
          buf, first = [], start
    if buf:
      block = _unit(np.concatenate(buf))
      bad += int((~np.isfinite(block).all(axis=1)).sum())
      yield first, block
    self.left_out = bad

  def rows(self, ids) -> np.ndarray:
    """Unit embeddings (float32) of scan rows `ids` (any order, repeats allowed); a row
    that is not finite comes back NaN."""
    ids = np.asarray(ids, np.int64)
    out = np.zeros((len(ids), self.dim), np.float32)
    chunk = np.searchsorted(self.offsets, ids, side="right") - 1
    for i in np.unique(chunk):
      sel = np.flatnonzero(chunk == i)
      a = self._open(i)
      local = ids[sel] - self.offsets[i]
      order = np.argsort(local)  # ascending reads from the memory map
      out[sel[order]] = a[local[order]]
    return _unit(out)

  def table(self, ids, names=COLUMNS):
    """Arrow table of the chunk tables' columns `names` (those the scan has) for scan rows
    `ids`, in that order; only the chunks that hold them are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    ids = np.asarray(ids, np.int64)
    chunk = np.searchsorted(self.offsets, ids, side="right") - 1
    parts, where = [], []
    for i in np.unique(chunk):
      sel = np.flatnonzero(chunk == i)
      f = pq.ParquetFile(self.store.chunks / f"{self.store.name(i)}.parquet")
      have = [c for c in names if c in f.schema_arrow.names]
      parts.append(f.read(columns=have).take(ids[sel] - self.offsets[i]))
      where.append(sel)
    if not parts:
      return pa.table({})
    t = pa.concat_tables(parts, promote_options="default")
    return t.take(np.argsort(np.concatenate(where), kind="stable"))

  def find(self, column, values) -> np.ndarray:
    """Scan row of each value of `column` (e.g. obsid), -1 where none; streams the chunk
    tables one column at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    values = list(values)
    unique = list(dict.fromkeys(values))
    wanted = pa.array(unique)
    out = np.full(len(wanted), -1, np.int64)
    for i in range(self.store.n_chunks):
      col = pq.read_table(self.store.chunks / f"{self.store.name(i)}.parquet",
                          columns=[column])[column]
      hit = pc.index_in(col, value_set=wanted.cast(col.type))
      rows = np.flatnonzero(np.asarray(hit.is_valid()))
      which, first = np.unique(np.asarray(hit.drop_null()), return_index=True)
      fresh = out[which] < 0  # the first row of a repeated value wins
      out[which[fresh]] = self.offsets[i] + rows[first[fresh]]
    where = {v: k for k, v in enumerate(unique)}
    return out[[where[v] for v in values]]


def _unit(x):
  with np.errstate(invalid="ignore"):  # a non-finite row becomes NaN, quietly: it is counted
    return metric.unit(x)
