"""What every astrotl command line shares: one-line errors, exit codes, signals, --help.

Exit codes of every command: 0 done; 1 done with a warning; 2 a usage error, a mistyped
flag or value included (one line on stderr, no traceback); 130 / 143 interrupted by
SIGINT / SIGTERM.

Signals.  From its first line a command ends at once on SIGINT or SIGTERM, with one line
(`exit_on_signals`): while it starts there is nothing to save.  A command that saves work
as it goes (the scan, the light curves) calls `raise_on_signals`; then a signal during
its `saving()` region (chunks being made and written) sets `STOP`, which its loops test
at safe points (`check()` raises Interrupted there), so it stops keeping every finished
chunk and saying how many inputs are saved; a second signal, or GRACE seconds without
stopping, ends the process at once.  Outside that region no work is half done (every
file is written atomically), so a signal ends the command at once.  The handlers never
raise into the code they interrupt: an exception raised inside an import can leave its
lock held for good (a thread waiting on it then hangs the exit), and one raised in a gc
callback is lost.  A watchdog thread woken through `signal.set_wakeup_fd` keeps these
limits also while the main thread is inside C code (XLA compiling, a device wait), where
Python runs no handler.
"""

import contextlib
import os
import select
import signal
import sys
import threading
import time

HELP = {"--help", "-h", "-?", "--helpshort"}
GRACE = 3.0  # seconds an interrupted command has to stop by itself
STOP = threading.Event()  # a signal arrived: every loop of the command stops at its next check

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"prog": "astrotl", "mode": None, "exception": None, "signum": None, "seen": 0,
          "pipe": None, "saving": 0, "py": 0, "last": None}
_exiting = threading.Lock()


class Interrupted(Exception):
  """SIGINT or SIGTERM arrived; `signum` says which."""

  def __init__(self, signum):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def fail(prog: str, message: str, code: int = 2):
  """Prints `prog: message` on stderr, one line (text quoted from a file may hold escape
  sequences or newlines: they are written as escapes), and exits with `code`."""
  message = str(message)
  if not message.isprintable():
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
  print(f"{prog}: {message}", file=sys.stderr)
  sys.exit(code)


def start(prog: str, argv):
  """Refuses stray arguments and quiets the backends' logs unless --verbosity is given."""
  from absl import flags, logging
  if len(argv) > 1:
    fail(prog, f"unexpected arguments {' '.join(argv[1:])} (flags are --name=value)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


# --- signals ----------------------------------------------------------------------------

def exit_on_signals(prog: str):
  """From here on SIGINT/SIGTERM end the process at once (one line, 128 + signal).

  For a command's start-up and for commands that keep nothing as they go.  Does not undo
  `raise_on_signals`."""
  _state["prog"] = prog
  if _state["mode"] is None:
    _install("exit")


def raise_on_signals(exception=Interrupted):
  """From here on a SIGINT/SIGTERM inside `saving()` sets STOP and `check()` raises
  `exception(signum)`, so the command stops at a safe point keeping finished work; a
  second signal or GRACE seconds end the process at once, as does a signal outside
  `saving()`."""
  _state["exception"] = exception
  _install("stop")


@contextlib.contextmanager
def saving():
  """Marks work that an interrupt lets finish up to a safe point (see raise_on_signals);
  without raise_on_signals (a library call) it changes nothing."""
  _state["saving"] += 1
  try:
    yield
  finally:
    _state["saving"] -= 1


def check():
  """Raises the command's Interrupted once a signal has set STOP (a safe point)."""
  if STOP.is_set():
    raise (_state["exception"] or Interrupted)(_state["signum"] or signal.SIGINT)


def _install(mode):
  if threading.current_thread() is not threading.main_thread():
    return  # only the main thread may set handlers; the defaults stay
  _state["mode"] = mode
  for s in _SIGNALS:
    signal.signal(s, _handler)
  if _state["pipe"] is None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
      signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
      os.close(r)
      os.close(w)
      return
    _state["pipe"] = (r, w)
    threading.Thread(target=_watch, args=(r,), daemon=True, name="astrotl-signals").start()


def _handler(signum, frame):
  # Runs in the main thread between bytecodes and never raises into the code it interrupts:
  # it counts the signal and wakes the watchdog, which acts on it (also if something else
  # took over the wakeup fd).
  _state["py"] += 1
  _state["last"] = signum
  if _state["pipe"] is None:
    _note(signum)
    return
  try:
    os.write(_state["pipe"][1], b"\0")
  except OSError:
    pass


def _note(signum):
  """Acts on one signal: the first sets STOP (or exits, before raise_on_signals); the
  second exits."""
  _state["seen"] += 1
  if _state["signum"] is None:
    _state["signum"] = signum
  name = signal.Signals(signum).name
  if _state["mode"] == "exit":
    _exit_now(signum, f"interrupted ({name})")
  if not _state["saving"]:
    _exit_now(signum, f"interrupted ({name}): no chunk was in progress, so stopped at once; "
              "finished chunks are kept; re-run the same command to resume")
  if _state["seen"] > 1:
    _exit_now(signum, f"interrupted again ({name}): stopped at once; finished chunks are "
              "kept; re-run the same command to resume")
  STOP.set()


def _watch(fd):
  """Acts on each signal once, counting the C-level handler's bytes on the wakeup fd (also
  written while the main thread is in C code, where no Python handler runs) and the Python
  handler's; ends the process GRACE s after the first."""
  deadline, from_fd, last_fd, done = None, 0, None, 0
  while True:
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not select.select([fd], [], [], timeout)[0]:
      first = _state["signum"]
      _exit_now(first, f"interrupted ({signal.Signals(first).name}); not stopped within "
                f"{GRACE:g} s, so stopped at once; finished chunks are kept; re-run the "
                "same command to resume")
    for b in os.read(fd, 64):
      if b in _SIGNALS:
        from_fd, last_fd = from_fd + 1, b
    while done < max(from_fd, _state["py"]):
      done += 1
      _note(last_fd if from_fd >= _state["py"] else _state["last"])
      if deadline is None:
        deadline = time.monotonic() + GRACE


def _exit_now(signum, message):
  """One line on stderr and exit 128 + signum now, whatever the other threads are doing (the
  kernel releases the output folder's lock; decode workers die with this process)."""
  if not _exiting.acquire(blocking=False):
    while True:  # another thread is ending the process (one line, not two)
      time.sleep(1)
  _flush()
  try:
    os.write(2, f"{_state['prog']}: {message}\n".encode())
  finally:
    os._exit(128 + signum)


def _flush():
  # In a helper thread: the interrupted thread may hold a stream's lock.
  def flush():
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # noqa: BLE001 (a closed or reentered stream: nothing to save)
        pass
  t = threading.Thread(target=flush, daemon=True)
  t.start()
  t.join(0.5)


def quick_exit(code: int = 0):
  """Ends a command that has finished: runs the atexit handlers, flushes stdout and stderr,
  and exits without the interpreter's teardown, which spends a second of CPU freeing the
  objects of jax, astropy and matplotlib one by one (the kernel frees the memory anyway).
  Only for a command whose outputs are all written and closed, with no thread left but
  daemon threads."""
  import atexit
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # noqa: BLE001 (a closed stream: nothing to save)
      pass
  os._exit(code)


def interrupted(prog: str, e, out: str):
  """Exits 128 + signal with what was saved, for an Interrupted (or KeyboardInterrupt) `e`.

  Exits with os._exit: a writer thread may still be inside a chunk's (atomic) write, and
  the interpreter's shutdown could hang on, or crash in, such a thread."""
  signum = getattr(e, "signum", signal.SIGINT)
  saved = getattr(e, "saved", None)
  what = f"{saved} inputs are saved in {out}" if saved is not None else "nothing was lost"
  _state["prog"] = prog
  _exit_now(signum, f"interrupted ({signal.Signals(signum).name}): {what}; re-run the same "
            "command to resume")


# --- flags -------------------------------------------------------------------------------

def parse_flags(prog: str, argv):
  """absl's parse with a mistake as one line and exit 2 (absl prints two and exits 1),
  keeping its 'Did you mean' hint."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(prog, " ".join(str(e).split()) + " (see --help)")


def define_catalog_flags(verb: str, max_missing: bool = True):
  """--root, --path_column, --allow_outside_root (and --max_missing): how every command
  that takes a catalog of files finds them (astrotl.scan.inputs.from_catalog).  The caller
  then adopts them (`flags.adopt_module_key_flags(cli)`), or --help leaves them out."""
  from absl import flags
  flags.DEFINE_string("root", None, "Folder the catalog's paths are relative to (default: "
                      "the catalog's folder).")
  flags.DEFINE_string("path_column", None, "Catalog column holding file paths.")
  flags.DEFINE_bool("allow_outside_root", False, f"{verb} catalog paths that lead outside "
                    "--root.")
  if max_missing:
    flags.DEFINE_float("max_missing", 0.5, "Exit with code 1 if more than this fraction of "
                       "the catalog's files are missing.")


def run(define_flags, main, doc: str):
  """Defines the flags and runs `main` under absl; --help prints `doc` and the flags and
  exits 0 (absl's own --help exits 1).  The command's name is its module's PROG."""
  prog = getattr(main, "__globals__", {}).get("PROG") or _prog_from_argv()
  exit_on_signals(prog)
  from absl import app, flags
  define_flags()
  if HELP & set(sys.argv[1:]):
    print(doc.rstrip() + "\n\nFlags:")
    print(flags.FLAGS.main_module_help())
    sys.exit(0)
  app.run(main, flags_parser=lambda argv: parse_flags(prog, argv))


def _prog_from_argv():
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  name = spec.name if spec is not None else os.path.basename(sys.argv[0])
  return name.removesuffix(".__main__")
