"""The output folder of a scan: its lock, its manifest, and the journaled chunks.

The inputs are cut into chunks.  A finished chunk's errors, its embeddings (with
--embeddings: `chunk_NNNNNN.embedding.npy`, float16, one row per row of the table), its
record (`chunk_NNNNNN.json`: the byte size and sha256 of each of those files and of the
rows file, and the numbers of rows and errors) and then its rows are written to `chunks/`
with atomic renames; the rows file appearing marks the chunk done, and a line in
`journal.jsonl` records it.  So a killed scan resumes where it stopped and never writes a
row (or an embedding) twice or loses one.  The record goes just before the rows so that
"done" stays one atomic rename: a kill between the two leaves a record without rows,
which the chunk's next write replaces.  The sums are taken from the bytes in memory as
they are written, so they cost no second pass over the disk.

On resume each finished chunk is checked against its record (`Store.verify`); one that
fails (a truncated or damaged file) is named in one line, moved to `corrupt/` and scanned
again, and the merge checks the row counts again (`Store.mismatch`).  Chunks written by
an astrotl from before the records (their scan.json has no "checksums") are checked by
reading them whole, which finds a truncated file but not every flipped bit.  `scan.json` (the
manifest) pins the inputs, chunking, model and embeddings, so a re-run into the same
folder with other inputs is refused instead of mixed in.  A lock file keeps a second scan
out of a folder that one is writing.
"""

import csv
import fcntl
import hashlib
import io
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
  except BaseException as e:
    tmp.unlink(missing_ok=True)
    if isinstance(e, OSError) and e.filename in (None, str(tmp), tmp):
      e.filename = str(path)  # a full disk names no file: name the one the user knows
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
  import pyarrow as pa
  import pyarrow.parquet as pq
  table = pa.table({"file": ["x"], "p": pa.array([0.5], pa.float32()),
                    "n": pa.array([None], pa.int64())})
  table = table.replace_schema_metadata({b"astrotl": b"{}"})
  pq.write_table(table, pa.BufferOutputStream())
  np.save(io.BytesIO(), np.zeros((1, 2), np.float16))
  _npy_parts(np.zeros((1, 2), np.float16))
  _csv_bytes([("x", "y")])  # a text codec is imported on its first use
  _WARM.append((pa, pq))


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
    self.manifest = {}  # the folder's scan.json, once opened
    self.legacy = False  # its chunks were written by an astrotl without chunk records

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
    self._check_manifest(dict(manifest, checksums="sha256"), main)

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
        self.manifest = old
        self.legacy = "checksums" not in old
        return
    self.manifest = manifest
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

  def record_path(self, i):
    return self.chunks / f"{self.name(i)}.json"

  def files(self, i):
    """The paths of chunk i's files, its rows (the mark of a finished chunk) first."""
    return [self.chunks / f"{self.name(i)}.parquet", self.chunks / f"{self.name(i)}.errors.csv",
            self.embedding_path(i), self.record_path(i)]

  def write(self, i, table, errors, process=0, embedding=None):
    """Errors, embeddings and the record first, then the rows, whose atomic appearance
    marks the chunk done (so a chunk's embeddings and record exist exactly when its rows
    do).  Each file is made in memory, summed there and then written."""
    warm_writes()  # a no-op in the scan's writer thread: the scan ran it before
    pa, pq = _WARM[0]
    try:
      rows = self.files(i)[0]
      files = {self.files(i)[1]: [_csv_bytes(errors)]}  # {path: its bytes, in parts}
      if embedding is not None:
        if len(embedding) != table.num_rows:
          raise ValueError(f"chunk {i}: {len(embedding)} embeddings for {table.num_rows} rows")
        files[self.embedding_path(i)] = _npy_parts(embedding)
      sink = pa.BufferOutputStream()
      pq.write_table(table, sink)
      files[rows] = [sink.getvalue()]
      record = {"chunk": i, "rows": table.num_rows, "errors": len(errors),
                "files": {path.name: _sum(parts) for path, parts in files.items()}}
      for path, parts in files.items():
        if path == rows:  # the record just before the rows, whose appearance marks it done
          write_atomic(self.record_path(i), lambda t: t.write_text(json.dumps(record, indent=1)))
        write_atomic(path, lambda t: _write_parts(t, parts))
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
    return pq.read_table(self.files(i)[0]), self._errors(i)

  def _errors(self, i):
    with open(self.files(i)[1], newline="") as f:
      return [tuple(r) for r in list(csv.reader(f))[1:]]

  # --- checks ----------------------------------------------------------------------------

  def verify(self, i, log=print) -> bool:
    """Checks finished chunk i against its record (each file's size, then its sha256).  A
    chunk that fails is named in one line and moved to `corrupt/`, so that it is scanned
    again.  Returns False for such a chunk, True otherwise (a chunk not finished too)."""
    if not self.done(i):
      return True
    problem = self._damage(i)
    if problem is None:
      return True
    where = self.set_aside(i)
    log(f"astrotl.scan: WARNING: chunk {i} is damaged ({problem}); moved to {where} and "
        "scanning it again")
    return False

  def _record(self, i):
    """Chunk i's record, or None if it has none; raises ValueError if it is unreadable."""
    try:
      text = self.record_path(i).read_text()
    except FileNotFoundError:
      return None
    except OSError as e:
      raise ValueError(f"{self.record_path(i).name} cannot be read: {e.strerror or e}")
    try:
      record = json.loads(text)
      need = {p.name for p in self.files(i)[:2]}
      if self.manifest.get("embeddings"):
        need.add(self.embedding_path(i).name)
      names = set(record["files"])
      if not need <= names <= {p.name for p in self.files(i)[:3]}:
        raise ValueError
      for name in names:  # each with a size and a sum
        int(record["files"][name]["bytes"]), str(record["files"][name]["sha256"])
      int(record["rows"]), int(record["errors"])
    except (ValueError, KeyError, TypeError, AttributeError):
      raise ValueError(f"{self.record_path(i).name} is not a chunk record") from None
    return record

  def _damage(self, i):
    """What is wrong with finished chunk i's files, or None."""
    try:
      record = self._record(i)
    except ValueError as e:
      return str(e)
    if record is None:
      return self._unreadable(i) if self.legacy else f"{self.record_path(i).name} is missing"
    for name, want in record["files"].items():
      path = self.chunks / name
      try:
        size = path.stat().st_size
        if size != want["bytes"]:
          return f"{name}: {size} bytes, its record says {want['bytes']}"
        with open(path, "rb") as f:
          if hashlib.file_digest(f, "sha256").hexdigest() != want["sha256"]:
            return f"{name}: its sha256 differs from its record"
      except OSError as e:
        return f"{name}: {e.strerror or e}"
    return None

  def _unreadable(self, i):
    """Why a chunk without a record (from an older astrotl) cannot be read whole, or None:
    reading finds a truncated file, not every flipped bit."""
    import pyarrow.parquet as pq
    parquet, errors, npy = self.files(i)[:3]
    path = parquet
    try:
      rows = pq.read_table(parquet).num_rows
      path = errors
      self._errors(i)
      path = npy
      if self.manifest.get("embeddings"):
        n = len(np.load(npy))
        if n != rows:
          return f"{npy.name}: {n} embeddings for {rows} rows"
    except (OSError, ValueError, csv.Error, UnicodeDecodeError) as e:
      return f"{path.name} cannot be read: {' '.join(str(e).split())[:200]}"
    return None

  def mismatch(self, i):
    """None, or how finished chunk i disagrees with its record: its numbers of rows (read
    from the rows file's footer), errors and embeddings.  The merge's check (`verify` has
    compared the bytes on resume); nothing to compare for a chunk without a record."""
    import pyarrow.parquet as pq
    try:
      record = self._record(i)
      if record is None:
        return None if self.legacy else f"{self.record_path(i).name} is missing"
      parquet, errors, npy = self.files(i)[:3]
      got = {parquet.name: pq.read_metadata(parquet).num_rows, errors.name: len(self._errors(i))}
      want = {parquet.name: record["rows"], errors.name: record["errors"]}
      if npy.name in record["files"]:
        got[npy.name] = len(np.load(npy, mmap_mode="r"))
        want[npy.name] = record["rows"]
    except (OSError, ValueError, csv.Error, UnicodeDecodeError) as e:
      return " ".join(str(e).split())[:200]
    for name, n in got.items():
      if n != want[name]:
        return f"{name} has {n} rows, its record says {want[name]}"
    return None

  def set_aside(self, i):
    """Moves chunk i's files into `corrupt/`, its rows first (from then on the chunk is
    not finished, whatever happens next), and returns that folder."""
    dest = self.out / "corrupt"
    try:
      dest.mkdir(exist_ok=True)
      for path in self.files(i):
        if path.exists():
          target, k = dest / path.name, 1
          while target.exists():  # damaged before: keep both
            target, k = dest / f"{path.name}.{k}", k + 1
          os.replace(path, target)
    except OSError as e:
      raise OutputError(f"--out={self.out}: cannot move damaged chunk {i} to {dest} "
                        f"({e.strerror or e}); delete {self.files(i)[0]} and re-run") from None
    return dest


def _csv_bytes(errors) -> bytes:
  """The errors file: as open(path, "w", newline="") would write it."""
  buf = io.TextIOWrapper(io.BytesIO(), newline="")
  w = csv.writer(buf)
  w.writerow(["file", "reason"])
  w.writerows(errors)
  buf.flush()
  return buf.buffer.getvalue()


def _npy_parts(array):
  """The bytes np.save writes for `array` as float16: its header and, without a copy, its
  data."""
  a = np.ascontiguousarray(array, np.float16)
  head = io.BytesIO()
  np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
  return [head.getvalue(), a.reshape(-1).view(np.uint8)]


def _sum(parts) -> dict:
  """Size and sha256 of a file's bytes, from memory (re-reading them would be a second
  pass over the disk)."""
  h, size = hashlib.sha256(), 0
  for part in parts:
    h.update(part)
    size += memoryview(part).nbytes
  return {"bytes": size, "sha256": h.hexdigest()}


def _write_parts(path, parts):
  with open(path, "wb") as f:
    for part in parts:
      f.write(part)


def _save_npy(path, array):
  with open(path, "wb") as f:  # np.save(path) would add a second .npy suffix
    np.save(f, np.asarray(array, np.float16))
