"""The scanning loop: decoded files -> device batches -> chunk tables, overlapped.

Worker processes decode files ahead of the device (tasks are submitted across chunk
boundaries); the device computes one padded batch while the host gathers the next (jax
dispatch is asynchronous); a writer thread saves finished chunks.  So the rate approaches
min(decode rate, network rate) rather than their harmonic sum.  The loop measures the
time the host spends waiting for decoders and for the device.

How a two-stage model runs (`mode`):
  shared   both networks share a frozen conv trunk: it runs once and both heads on it;
  cascade  stage 2 runs only on spectra whose stage-1 class can still make them
           candidates; the others get null stage-2 columns;
  plain    every network on every spectrum;
  auto     shared if the bundle's networks share their trunk, else cascade if the
           candidate rule needs stage 1 to agree, else plain.
"""

import functools
import importlib
import queue
import threading
import time

import numpy as np

from astrotl import cli, parallel, rules
from astrotl.inference import DEVICE_KEYS, lower_fn
from astrotl.scan import chunks, tables, workers

# Device batches queued at once.  Two keep the device busy while the host gathers the
# next; more would only hold their inputs in memory (jax dispatch does not wait), so the
# scan's memory would grow with the chunk size.
IN_FLIGHT = 2

# Seconds an interrupted scan waits for the writer to save the chunks already queued (the
# watchdog of astrotl.cli ends the process GRACE s after the signal in any case).
WRITE_GRACE = 1.5
POLL = 0.1  # seconds between checks of the stop signal in the writer's waits


# Loaded by `Preload` on the process that merges: the merge's and the report's writers
# (astropy's tables, FITS and VOTable; matplotlib's figure and Agg canvas).
PRELOAD = ("astropy.table", "astropy.io.fits", "astropy.io.votable", "matplotlib.figure",
           "matplotlib.backends.backend_agg")


class Preload:
  """Imports, in a thread, what the scan uses after compiling: the chunk writer's pyarrow
  (which loads pandas on its first table) and, with `merge`, PRELOAD, one module at a
  time until `stop`.  Only a head start (the code that needs a module imports it anyway),
  run while XLA compiles, which does not hold the GIL: on a warm compilation cache that
  is a moment, and what is left loads where it is used, as before."""

  def __init__(self, merge=True):
    self.steps = [chunks.warm_writes] + [
        functools.partial(importlib.import_module, name) for name in (PRELOAD if merge else ())]
    self._stop = threading.Event()
    self._thread = None

  def start(self):
    if self._thread is None:
      self._thread = threading.Thread(target=self._run, daemon=True, name="astrotl-preload")
      self._thread.start()

  def _run(self):
    try:
      for step in self.steps:
        if self._stop.is_set():
          return
        step()
    except Exception:  # pylint: disable=broad-except (left to the code that needs it)
      pass

  def stop(self):
    """Waits for the module being imported, if any.  Then the main thread may import
    these packages itself (a FITS catalog, a fallback reader): two threads importing one
    package can each get the other's half-made modules, and a thread still importing
    when the process exits can crash it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()


class Runner:
  """Scans chunks of inputs with one model on the local devices."""

  def __init__(self, model, mesh, batch_size=256, mode="auto", embed=False):
    self.model = model
    self.mesh = mesh
    n_dev = mesh.devices.size
    self.batch_size = max(n_dev, batch_size // n_dev * n_dev)
    self.embed = embed
    self.mode = resolve_mode(model, mode)
    names = list(model.networks)
    if self.mode == "cascade":
      self.stages = [names[:1], names[1:]]
    else:
      self.stages = [names]
    self.fns = [model.make_fn(mesh, networks=s, embed=embed and i == 0, share=self.mode == "shared")
                for i, s in enumerate(self.stages)]
    self.variables = [parallel.replicate(model.variables(s), mesh) for s in self.stages]
    self.wait_decode = 0.0
    self.wait_device = 0.0
    self.preload_wait = 0.0  # seconds warm_up waited for `Preload` after compiling

  def warm_up(self):
    """Compiles the device functions now (while the decoders start), without running
    them: on a CPU a dummy batch costs as much as a real one.  While XLA compiles, a
    thread imports what comes after (`Preload`)."""
    import jax
    from astrotl.io import batch as io_batch
    loader = Preload(merge=jax.process_index() == 0)
    try:
      raw, _ = parallel.pad_rows(io_batch.empty(), self.batch_size)
      arrays = parallel.shard_batch({k: raw[k] for k in DEVICE_KEYS}, self.mesh,
                                    self.batch_size)
      for fn, v in zip(self.fns, self.variables):
        cli.check()  # compiling cannot be interrupted; between functions it can
        lowered = lower_fn(fn, v, *(arrays[k] for k in DEVICE_KEYS))  # holds the GIL
        loader.start()
        lowered.compile()
    finally:
      t = time.perf_counter()
      loader.stop()
      self.preload_wait = time.perf_counter() - t

  def _dispatch(self, fn, variables, raw, n):
    """(device outputs, n, the host's S/N): the batch runs while the host goes on."""
    arrays = parallel.shard_batch({k: raw[k] for k in DEVICE_KEYS}, self.mesh, self.batch_size)
    return fn(variables, *(arrays[k] for k in DEVICE_KEYS)), n, raw["snr"][:n]

  def _host(self, pending):
    t = time.perf_counter()
    outs, n, snr = pending
    out = {"snr": snr, **{k: np.asarray(v)[:n] for k, v in outs.items()}}
    self.wait_device += time.perf_counter() - t
    return out

  def scan_chunk(self, results, first, inputs):
    """Rows (arrow table), errors [(file, reason)] and embeddings ((rows, D) or None) of
    one chunk.

    results: iterator of (task's paths, decode_many result) in input order, covering the
    chunk's inputs, which start at input number `first`.
    """
    files, metas, errors = [], [], []
    self._outs1, self._outs2 = _InFlight(self._host), _InFlight(self._host)
    self._held, self._rows = None, 0
    self._stage2 = _Batches(self.batch_size) if self.mode == "cascade" else None
    stage1 = _Batches(self.batch_size)
    for task_paths, (good, arrays, ms, errs) in _timed(results, self):
      errors += [(p, r) for _, p, r in errs]
      files += [task_paths[i] for i in good]
      metas += ms
      for raw, rows in stage1.add(arrays):
        self._stage1(raw, len(rows))
    for raw, rows in stage1.flush():
      self._stage1(raw, len(rows))
    outs = self._finish(len(files))
    table = tables.chunk_table(self.model, files, metas, outs, inputs, first, self.embed)
    embedding = None
    if self.embed:
      width = self.model.primary.embedding_width
      embedding = outs.get("embedding", np.zeros((0, width), np.float32))
    return table, errors, embedding

  def _stage1(self, raw, n):
    cli.check()  # a safe point per batch
    pending = self._dispatch(self.fns[0], self.variables[0], raw, n)
    if self._stage2 is None:
      self._outs1.put(pending)
      return
    # Cascade: the previous batch is (nearly) done by now; its admitted rows go on.
    self._admit()
    self._held = (pending, raw, self._rows)
    self._rows += n

  def _admit(self):
    if self._held is None:
      return
    pending, raw, start = self._held
    got = self._host(pending)
    self._outs1.put(got)
    class1 = self.model.outputs_to_columns(got)["class1"]
    admit = np.flatnonzero(rules.stage1_admits(self.model.rule, class1))
    for raw2, rows in self._stage2.add({k: v[admit] for k, v in raw.items()}, start + admit):
      self._outs2.put(self._dispatch(self.fns[1], self.variables[1], raw2, len(rows)), rows)
    self._held = None

  def _finish(self, n):
    if self._stage2 is not None:
      self._admit()
      for raw, rows in self._stage2.flush():
        self._outs2.put(self._dispatch(self.fns[1], self.variables[1], raw, len(rows)), rows)
    parts = [o for o, _ in self._outs1.results()]
    outs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if self._stage2 is not None:
      for name in self.stages[1]:
        outs[name] = np.full((n, self.model.networks[name].width), np.nan, np.float32)
      for got, rows in self._outs2.results():
        for name in self.stages[1]:
          outs[name][rows] = got[name]
    return outs


def resolve_mode(model, mode):
  if mode not in ("auto", "plain", "shared", "cascade"):
    raise ValueError(f"mode={mode!r}: use auto, plain, shared or cascade")
  two = model.kind == "two_stage" and len(model.networks) == 2
  names = list(model.networks)
  if mode == "auto":
    if two and model.shared_trunk(*names):
      return "shared"
    return "cascade" if two else "plain"
  if mode == "shared" and not (two and model.shared_trunk(*names)):
    raise ValueError("mode=shared: the model's networks do not share a conv trunk")
  if mode == "cascade" and not two:
    raise ValueError("mode=cascade needs a two-stage model with a two-stage rule")
  return mode


class _InFlight:
  """Device outputs in order, at most IN_FLIGHT of them not yet fetched to the host."""

  def __init__(self, host):
    self.host = host  # pending -> host dict (waits for the device)
    self.items, self.fetched = [], 0

  def put(self, out, tag=None):
    """`out`: a pending device result, or a host dict already fetched."""
    self.items.append((out, tag))
    while len(self.items) - self.fetched > IN_FLIGHT:
      self._fetch()

  def _fetch(self):
    out, tag = self.items[self.fetched]
    if not isinstance(out, dict):
      self.items[self.fetched] = (self.host(out), tag)
    self.fetched += 1

  def results(self):
    """[(host dict, tag)] of everything put."""
    while self.fetched < len(self.items):
      self._fetch()
    return self.items


class _Batches:
  """Accumulates raw rows into full batches of `size` (padded at the end)."""

  def __init__(self, size):
    self.size = size
    self.parts, self.rows, self.n = [], [], 0

  def add(self, arrays, rows=None):
    m = len(arrays["u"])
    rows = np.arange(m) if rows is None else np.asarray(rows)
    start = 0
    while start < m:
      take = min(self.size - self.n, m - start)
      self.parts.append({k: v[start:start + take] for k, v in arrays.items()})
      self.rows.append(rows[start:start + take])
      self.n += take
      start += take
      if self.n == self.size:
        yield self._emit()

  def flush(self):
    if self.n:
      yield self._emit()

  def _emit(self):
    raw = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
    raw, _ = parallel.pad_rows(raw, self.size)
    rows = np.concatenate(self.rows)
    self.parts, self.rows, self.n = [], [], 0
    return raw, rows


def _timed(results, runner):
  it = iter(results)
  while True:
    t = time.perf_counter()
    try:
      item = next(it)
    except StopIteration:
      return
    runner.wait_decode += time.perf_counter() - t
    yield item


class Writer:
  """Saves finished chunks in a background thread; errors surface on the next call.

  No wait here is unbounded once a stop is requested (`cli.STOP`): put waits for room in
  POLL s steps and then refuses the chunk (its inputs are scanned again on resume); close
  waits at most WRITE_GRACE s for the queued chunks.  The thread imports nothing (an
  import there waits on the import lock, which an interrupted main thread may hold):
  chunks.warm_writes() loads what Store.write uses first, in the calling thread.
  """

  def __init__(self, store, process, on_saved):
    self.store, self.process, self.on_saved = store, process, on_saved
    chunks.warm_writes()
    self._q = queue.Queue(maxsize=2)
    self._closing = threading.Event()
    self._error = None
    self._thread = threading.Thread(target=self._loop, daemon=True, name="astrotl-writer")
    self._thread.start()

  def _loop(self):
    while True:
      try:
        item = self._q.get(timeout=POLL)
      except queue.Empty:
        if self._closing.is_set() or cli.STOP.is_set():
          return  # nothing queued and nothing more will be
        continue
      i, table, errors, embedding = item
      try:
        if self._error is None:
          self.store.write(i, table, errors, self.process, embedding)
          self.on_saved(i, table.num_rows + len(errors))
      except BaseException as e:  # reported to the main thread
        self._error = e

  def put(self, i, table, errors, embedding=None):
    while True:
      self._raise()
      cli.check()
      if not self._thread.is_alive():
        raise RuntimeError("astrotl.scan: the chunk writer stopped")
      try:
        self._q.put((i, table, errors, embedding), timeout=POLL)
        return
      except queue.Full:
        pass

  def close(self, timeout=None):
    """Waits for the queued chunks to be saved: all of them, or for at most `timeout` s,
    or WRITE_GRACE s once a stop is requested.  A second call is a no-op."""
    if self._thread is None:
      return
    self._closing.set()
    t0 = time.monotonic()
    while self._thread.is_alive():
      limit = timeout
      if cli.STOP.is_set():
        limit = WRITE_GRACE if limit is None else min(limit, WRITE_GRACE)
      if limit is not None and time.monotonic() - t0 >= limit:
        break  # a chunk still being written is not finished: resume writes it again
      self._thread.join(POLL)
    self._thread = None
    self._raise()

  def _raise(self):
    if self._error is not None:
      raise self._error


def chunk_tasks(store, chunk_ids, inputs):
  """(chunk, files) decode tasks of the chunks, in order; `inputs.chunk_files(a, b)` are
  the files of inputs [a, b) (a catalog resolves its rows then)."""
  for i in chunk_ids:
    files = inputs.chunk_files(*store.span(i))
    for s in range(0, len(files), workers.TASK):
      yield i, files[s:s + workers.TASK]
