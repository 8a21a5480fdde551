"""Interrupting a command at any moment: while jax loads, while the model compiles, while
chunks are written; once, twice, or stuck in C code.  Every way out is bounded, exits
128 + signal with one line, and leaves the output folder free for the re-run."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from astrotl import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _env():
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _lines(text):
  return [l for l in text.splitlines() if l.strip()]


def _python(code):
  """A Python process running `code` (which prints 'ready' when it may be signalled)."""
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=30)
  return proc


def _signal_and_wait(proc, sig, timeout):
  t = time.monotonic()
  proc.send_signal(sig)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"still running {timeout} s after {sig.name}: {err[-2000:]}")
  return time.monotonic() - t, out, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_starting_ends_the_command_at_once(sig):
  proc = _python("""
      import time
      from astrotl import cli
      cli.exit_on_signals("prog")
      print("ready", flush=True)
      time.sleep(60)
  """)
  took, _, err = _signal_and_wait(proc, sig, 10)
  assert proc.returncode == 128 + sig and took < 2, (proc.returncode, took, err)
  assert _lines(err) == [f"prog: interrupted ({sig.name})"]


_SAVING = """
    import threading, time
    from astrotl import cli
    cli.exit_on_signals("prog")
    cli.raise_on_signals()
    with cli.saving():
      print("ready", flush=True)
      {wait}
      print("stopping", flush=True)
      lock = threading.Lock()
      lock.acquire()
      lock.acquire()  # stuck for good: only the watchdog or a second signal ends this
"""


def test_a_second_signal_ends_a_stuck_command_at_once():
  proc = _python(_SAVING.format(wait="cli.STOP.wait()"))
  proc.send_signal(signal.SIGINT)
  assert proc.stdout.readline().strip() == "stopping"  # the first one set STOP
  took, _, err = _signal_and_wait(proc, signal.SIGTERM, 10)
  assert proc.returncode == 143 and took < 1.5, (proc.returncode, took, err)
  assert len(_lines(err)) == 1 and "interrupted again (SIGTERM)" in err, err


def test_a_command_that_never_checks_ends_grace_seconds_after_the_signal():
  proc = _python(_SAVING.format(wait="pass"))  # never reaches a check: stuck at once
  took, _, err = _signal_and_wait(proc, signal.SIGINT, cli.GRACE + 10)
  assert proc.returncode == 130 and cli.GRACE - 0.5 < took < cli.GRACE + 2, (took, err)
  assert len(_lines(err)) == 1 and f"not stopped within {cli.GRACE:g} s" in err, err


@pytest.mark.slow
def test_the_writer_thread_imports_nothing(tmp_path, tiny_bundles):
  """An import in the writer waits on the import lock, which a main thread interrupted
  inside an import could hold for good: the hang of issue 23."""
  code = f"""
      import sys, threading
      seen = []
      def hook(event, args):
        if event == "import" and threading.current_thread().name == "astrotl-writer":
          seen.append(args[0])
      sys.addaudithook(hook)
      from astrotl import scan
      s = scan.scan(out={str(tmp_path / 'o')!r}, model={str(tiny_bundles['shared'])!r},
                    workers=0, chunk_size=16, embeddings=True, log=lambda *_: None)
      print(s["n_inputs"], seen)
  """
  r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  n, seen = r.stdout.split(" ", 1)
  assert int(n) > 16 and seen.strip() == "[]", r.stdout  # several chunks, no import


def _astrotl_started(pid):
  """Whether the scan has run its first line (Linux): its signal watchdog is the first
  thread besides the main one."""
  try:
    return len(os.listdir(f"/proc/{pid}/task")) > 1
  except OSError:
    return not sys.platform.startswith("linux")


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 1, 2, 3, 5])
def test_sigint_at_any_moment_exits_130_and_frees_the_output_folder(tmp_path, delay):
  """The default scan of the bundled sample: the first seconds load jax, then the model
  compiles and the chunk is written.  A Ctrl-C at any of them ends the scan in seconds.

  The signal goes `delay` s after the start, but not before the scan's first line has run:
  until then Python itself is starting (site.py, runpy), which takes ~0.05 s on an idle
  machine but can take over a second on a busy one, and a Ctrl-C there is Python's own."""
  cmd = [sys.executable, "-m", "astrotl.scan", "--progress=false", f"--out={tmp_path / 'o'}"]
  t0 = time.monotonic()
  proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  while not _astrotl_started(proc.pid) and proc.poll() is None and time.monotonic() < t0 + 60:
    time.sleep(0.005)
  time.sleep(max(0.0, t0 + delay - time.monotonic()))
  took, _, err = _signal_and_wait(proc, signal.SIGINT, 5)
  assert proc.returncode == 130, (proc.returncode, err[-2000:])
  lines = _lines(err)
  assert len(lines) == 1 and "interrupted (SIGINT)" in lines[0] and "Traceback" not in err, err
  r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "in use by another scan" not in r.stderr, r.stderr[-2000:]
  assert (tmp_path / "o" / "predictions.parquet").exists()
