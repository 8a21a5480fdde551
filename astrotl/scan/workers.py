"""Decoding in worker processes, with a time limit per file and no orphans.

Each worker is a spawned process (forking a process that already runs XLA threads is
unsafe) with its own pipe, so the pool always knows which task, and which file of it, a
worker is on.  A worker that spends longer than `time_limit` seconds on one file, or
dies (a reader crash, the OOM killer), is killed and replaced: that file becomes an
error row and the rest of its task is decoded again by the new worker.  Workers ignore
SIGINT (the main process decides what an interrupt means: `next` stops waiting once
`astrotl.cli.STOP` is set) and die with their parent: the parent-death signal on Linux,
and everywhere a watch on the parent's pid.

With workers=0 files are decoded in the calling process (no time limit).
"""

import collections
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time

from astrotl import cli
from astrotl.io import batch as io_batch

TASK = 32  # files per task: amortises the pipe's overhead


def _die_with_parent(parent):
  if sys.platform.startswith("linux"):
    try:
      import ctypes
      ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
      pass

  def watch():
    while True:
      if os.getppid() != parent:
        os._exit(1)
      time.sleep(1.0)

  if os.getppid() != parent:
    os._exit(1)
  threading.Thread(target=watch, daemon=True).start()


def _worker(conn, status, slot, parent, decode):
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _die_with_parent(parent)

  def on_file(i):
    status[2 * slot] = i
    status[2 * slot + 1] = time.monotonic()

  while True:
    try:
      task = conn.recv()
    except EOFError:
      return
    if task is None:
      return
    key, paths, raw_len = task
    result = decode(paths, raw_len, on_file=on_file)
    status[2 * slot + 1] = 0.0
    conn.send((key, result))


class _Task:
  def __init__(self, key, paths):
    self.key = key
    self.paths = list(paths)
    self.index = list(range(len(paths)))  # positions in the original task
    self.errors = []                        # (position, path, reason) found by the pool


class DecodePool:
  """submit(key, paths) tasks, then next() -> (key, paths, decode_many result) in the order
  they were submitted (workers finish them in any order).  Callers may submit far ahead:
  tasks wait in a queue until a worker is free."""

  def __init__(self, workers: int, time_limit: float = 60.0, raw_len: int = io_batch.RAW_LEN,
               decode=io_batch.decode_many):
    """decode(paths, raw_len, on_file=...) -> decode_many's result; a module-level function
    (workers are spawned, so it is pickled by name)."""
    self.n = workers
    self.decode = decode
    self.time_limit = time_limit
    self.raw_len = raw_len
    self.replaced = 0
    self._queue = collections.deque()
    self._order = collections.deque()  # (ticket, key, paths) in submission order
    self._finished = {}                # ticket -> result
    self._tickets = 0
    self._procs, self._conns, self._busy = [None] * workers, [None] * workers, [None] * workers
    if workers:
      self._ctx = multiprocessing.get_context("spawn")
      self._status = self._ctx.RawArray("d", 2 * workers)
      for slot in range(workers):
        self._start(slot)

  def _start(self, slot):
    ours, theirs = self._ctx.Pipe()
    p = self._ctx.Process(target=_worker,
                          args=(theirs, self._status, slot, os.getpid(), self.decode),
                          daemon=True, name=f"astrotl-decode-{slot}")
    p.start()
    theirs.close()
    self._procs[slot], self._conns[slot], self._busy[slot] = p, ours, None
    self._status[2 * slot + 1] = 0.0

  def submit(self, key, paths):
    paths = list(paths)
    self._tickets += 1
    self._order.append((self._tickets, key, paths))
    if self.n:
      self._queue.append(_Task(self._tickets, paths))
      self._dispatch()

  def __len__(self):
    """Tasks submitted and not yet returned by next()."""
    return len(self._order)

  def peek(self):
    """Key of the oldest task not yet returned by next()."""
    return self._order[0][1]

  def next(self):
    """(key, paths, result) of the oldest submitted task; blocks until it is decoded, or a
    stop is requested (`cli.check()` raises; the task stays first in line)."""
    cli.check()
    if not self.n:
      ticket, key, paths = self._order.popleft()
      return key, paths, self.decode(paths, self.raw_len)
    ticket, key, paths = self._order[0]
    while ticket not in self._finished:
      self._wait()
      cli.check()
    self._order.popleft()
    return key, paths, self._finished.pop(ticket)

  def _dispatch(self):
    for slot in range(self.n):
      if self._busy[slot] is None and self._queue:
        task = self._queue.popleft()
        if not task.paths:  # every file of it timed out
          self._finished[task.key] = _finish(task, ([], None, [], []), self.raw_len)
          continue
        self._busy[slot] = task
        self._conns[slot].send((task.key, task.paths, self.raw_len))

  def _wait(self):
    """Waits up to 0.25 s for results; replaces workers that are stuck or dead."""
    busy = [self._conns[s] for s in range(self.n) if self._busy[s] is not None]
    for conn in multiprocessing.connection.wait(busy, timeout=0.25):
      slot = self._conns.index(conn)
      try:
        ticket, result = conn.recv()
      except (EOFError, OSError):
        self._fail(slot, "the decoder process died on this file "
                         f"(exit code {self._procs[slot].exitcode})")
        continue
      task, self._busy[slot] = self._busy[slot], None
      self._finished[ticket] = _finish(task, result, self.raw_len)
    self._check_time()
    self._dispatch()

  def _check_time(self):
    now = time.monotonic()
    for slot in range(self.n):
      started = self._status[2 * slot + 1]
      if self._busy[slot] is not None and started and now - started > self.time_limit:
        self._fail(slot, f"decoding took longer than {self.time_limit:g} s (worker replaced)")

  def _fail(self, slot, reason):
    """Kills the worker of `slot`, records its current file as an error, and requeues the
    rest of its task first in line."""
    task = self._busy[slot]
    i = int(self._status[2 * slot]) if self._status[2 * slot + 1] else 0
    i = min(max(i, 0), len(task.paths) - 1)
    proc = self._procs[slot]
    if proc.is_alive():
      proc.kill()
    proc.join(5)
    self._conns[slot].close()
    self.replaced += 1
    task.errors.append((task.index[i], task.paths[i], reason))
    del task.paths[i], task.index[i]
    self._queue.appendleft(task)
    self._start(slot)

  def close(self):
    """Stops the workers (at once: a worker holds nothing that needs saving)."""
    for slot in range(self.n):
      proc = self._procs[slot]
      if proc is not None and proc.is_alive():
        proc.kill()
    for slot in range(self.n):
      if self._procs[slot] is not None:
        self._procs[slot].join(5)
        self._conns[slot].close()
    self.n = 0


def _finish(task, result, raw_len):
  """A decode_many result in the task's original positions, with the pool's own errors."""
  good, arrays, metas, errors = result
  good = [task.index[i] for i in good]
  errors = [(task.index[i], p, r) for i, p, r in errors] + task.errors
  if arrays is None:
    arrays = io_batch.empty(raw_len)
  return good, arrays, metas, sorted(errors)
