"""The output folder of a scan: its lock, its manifest, and the journaled chunks.

The inputs are cut into chunks.  A finished chunk's errors, its embeddings (with
--embeddings: `chunk_NNNNNN.embedding.npy`, float16, one row per row of the table) and
then its rows are written to `chunks/` with atomic renames; the rows file appearing marks
the chunk done, and a line in `journal.jsonl` records it.  So a killed scan resumes where
it stopped and never writes a row (or an embedding) twice or loses one.  `scan.json` (the
manifest) pins the inputs, chunking, model and embeddings, so a re-run into the same
folder with other inputs is refused instead of mixed in.  A lock file keeps a second scan
out of a folder that one is writing.
"""

import csv
import fcntl
import hashlib
import json
import os
import pathlib
import socket
import time

import numpy as np


class OutputError(RuntimeError):
  """A problem with the output folder; the message says what to do."""


def write_atomic(path: pathlib.Path, write):
  """Calls write(tmp) then renames tmp onto `path`, so `path` is never half-written."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


_WARM = []


def warm_writes():
  """Loads everything Store.write uses by writing a one-row chunk to memory, once.

  The scan's writer thread calls Store.write; an import there (pyarrow loads pandas on its
  first parquet write) would wait on the import lock, which a main thread interrupted
  inside an import can leave held, and a thread still importing when the process exits can
  crash the interpreter.  So the scan calls this in the main thread before the writer
  starts.
  """
  if _WARM:
    return
  import io
  import pyarrow as pa
  import pyarrow.parquet as pq
  table = pa.table({"file": ["x"], "p": pa.array([0.5], pa.float32()),
                    "n": pa.array([None], pa.int64())})
  table = table.replace_schema_metadata({b"astrotl": b"{}"})
  pq.write_table(table, pa.BufferOutputStream())
  np.save(io.BytesIO(), np.zeros((1, 2), np.float16))
  csv.writer(io.StringIO()).writerows([("file", "reason")])
  _WARM.append(pq)


def auto_chunk_size(n_inputs: int, smallest: int = 64) -> int:
  """About 1/20 of the inputs (so an interrupt keeps most work), in [smallest, 4096].

  The scan passes its batch size as `smallest`: a batch never spans chunks, so smaller
  chunks would shrink the batch, and the device's speed and memory would then depend on
  how many files were listed."""
  return int(min(4096, max(smallest, -(-n_inputs // 20))))


def resumed_chunk_size(out, digest):
  """The chunk size of an earlier scan of the same inputs in `out`, or None: a resumed
  scan keeps its chunks even if the automatic size has changed since (--chunk_size=0)."""
  try:
    old = json.loads((pathlib.Path(out) / "scan.json").read_text())
  except (OSError, ValueError):
    return None
  return old.get("chunk_size") if old.get("inputs_sha256") == digest else None


def inputs_digest(paths) -> str:
  h = hashlib.sha256()
  for p in paths:
    h.update(p.encode("utf-8", "surrogateescape"))
    h.update(b"\n")
  return h.hexdigest()


class Store:
  """`out`: the scan's folder.  Chunk i covers inputs [i * chunk_size, (i+1) * chunk_size)."""

  def __init__(self, out, n_inputs: int, chunk_size: int):
    self.out = pathlib.Path(out)
    self.chunks = self.out / "chunks"
    self.n_inputs = n_inputs
    self.chunk_size = chunk_size
    self.n_chunks = -(-n_inputs // chunk_size)
    self._lock = None

  # --- the folder ------------------------------------------------------------------------

  def open(self, manifest: dict, main: bool = True):
    """Creates the folder, takes the lock (process 0), cleans stale temporary files and
    checks or writes the manifest.  Raises OutputError with what to do."""
    try:
      self.chunks.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise OutputError(f"--out={self.out}: cannot create the output folder "
                        f"({e.strerror or e}); choose a writable folder") from None
    if not os.access(self.out, os.W_OK):
      raise OutputError(f"--out={self.out}: the folder is not writable; choose another --out")
    if main:
      self._take_lock()
      self._clean_tmp()
    self._check_manifest(manifest, main)

  def _take_lock(self):
    path = self.out / ".lock"
    f = open(path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise OutputError(f"--out={self.out} is in use by another scan ({holder}); wait for it "
                        "to finish or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._lock = f

  def _clean_tmp(self):
    # Left by a kill or a full disk; this process holds the lock, so none is in use.
    for folder in (self.out, self.chunks):
      for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)

  def _check_manifest(self, manifest, main):
    path = self.out / "scan.json"
    if path.exists():
      try:
        old = json.loads(path.read_text())
      except (OSError, json.JSONDecodeError):
        old = {}
      for key in ("inputs_sha256", "n_inputs", "chunk_size", "model", "cascade", "reader",
                  "embeddings"):
        if old.get(key) != manifest.get(key):
          done = len(list(self.chunks.glob("chunk_*.parquet")))
          if not done:  # nothing to protect: start over
            break
          raise OutputError(
              f"--out={self.out} holds a scan with a different {key} ({old.get(key)} vs "
              f"{manifest.get(key)}) and {done} finished chunks; use another --out, or "
              f"delete {self.out} to start over")
        # all keys equal: resume
      else:
        return
    if main:
      write_atomic(path, lambda t: t.write_text(json.dumps(manifest, indent=1)))

  def close(self):
    if self._lock is not None:
      fcntl.flock(self._lock, fcntl.LOCK_UN)
      self._lock.close()
      self._lock = None

  # --- chunks ----------------------------------------------------------------------------

  def name(self, i):
    return f"chunk_{i:06d}"

  def span(self, i):
    return i * self.chunk_size, min((i + 1) * self.chunk_size, self.n_inputs)

  def done(self, i) -> bool:
    return (self.chunks / f"{self.name(i)}.parquet").exists()

  def n_done_inputs(self) -> int:
    """Inputs covered by finished chunks (each saved as a row or an error)."""
    return sum(b - a for a, b in (self.span(i) for i in range(self.n_chunks) if self.done(i)))

  def embedding_path(self, i):
    return self.chunks / f"{self.name(i)}.embedding.npy"

  def write(self, i, table, errors, process=0, embedding=None):
    """Errors and embeddings first, then the rows, whose atomic appearance marks the chunk
    done (so a chunk's embeddings exist exactly when its rows do)."""
    warm_writes()  # a no-op in the scan's writer thread: the scan ran it before
    pq = _WARM[0]

    def write_errors(tmp):
      with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "reason"])
        w.writerows(errors)

    try:
      write_atomic(self.chunks / f"{self.name(i)}.errors.csv", write_errors)
      if embedding is not None:
        if len(embedding) != table.num_rows:
          raise ValueError(f"chunk {i}: {len(embedding)} embeddings for {table.num_rows} rows")
        write_atomic(self.embedding_path(i), lambda t: _save_npy(t, embedding))
      write_atomic(self.chunks / f"{self.name(i)}.parquet", lambda t: pq.write_table(table, t))
      with open(self.out / "journal.jsonl", "a") as f:
        f.write(json.dumps({"chunk": i, "rows": table.num_rows, "errors": len(errors),
                            "process": process, "time": time.time()}) + "\n")
    except OSError as e:
      raise OutputError(f"--out={self.out}: cannot write chunk {i} ({e.strerror or e}); free "
                        "space or fix permissions, then re-run the same command to resume "
                        "(finished chunks are kept)") from None

  def read(self, i):
    """(arrow table, [(file, reason)]) of a finished chunk."""
    import pyarrow.parquet as pq
    with open(self.chunks / f"{self.name(i)}.errors.csv", newline="") as f:
      errors = [tuple(r) for r in list(csv.reader(f))[1:]]
    return pq.read_table(self.chunks / f"{self.name(i)}.parquet"), errors


def _save_npy(path, array):
  with open(path, "wb") as f:  # np.save(path) would add a second .npy suffix
    np.save(f, np.asarray(array, np.float16))
