"""Scan throughput on a made mirror, side by side in one run:

  python benchmarks/scan_throughput.py --n=20000 --workers=2 --tan_n=1000

  decode       astrotl's decode pool alone (the upper bound for the scan);
  network      the model's device function alone, on decoded spectra held in memory;
  scan         `python -m astrotl.scan` as a user runs it, timed from the command to its
               exit (start-up, compilation, merge and report included), with its own
               steady-state rate, the time its host waited for decoders and for the
               device, and the peak memory of the process tree;
  tan          Tan et al.'s usage flow (benchmarks/tan_baseline.py) on the first --tan_n
               of the same files: astropy, min-max, median filter, PyTorch one spectrum
               at a time.
  torch_*      the flows a competent PyTorch user would write (benchmarks/torch_flow.py)
               on the first --torch_n of the same files: a DataLoader (astropy reading,
               the bundle's input in numpy/scipy, --workers workers, batches of
               --batch_size) into Conv2d or Conv1d networks of the bundle's sizes (two
               networks, or stage 2 on stage 1's shared trunk), and the networks alone
               on preloaded tensors, run as their own process; --torch_flows picks
               them.
Writes benchmarks/results/scan_throughput_<backend>.json.  Runs unchanged on CPU and GPU.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
import numpy as np

_N = flags.DEFINE_integer("n", 20000, "Spectra in the mirror.")
_MIRROR = flags.DEFINE_string("mirror", os.path.join(tempfile.gettempdir(), "astrotl-mirror"),
                              "Mirror folder (made with astrotl.tools.make_mirror if absent).")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count(), "Decoding processes.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Scan batch size.")
_MODEL = flags.DEFINE_string("model", "wd_two_stage", "Model bundle or bundled name.")
_TAN_N = flags.DEFINE_integer("tan_n", 1000, "Files for the (slow) Tan-style flow; its rate "
                              "is per file, so a subset is enough (0: skip).")
_TORCH_FLOWS = flags.DEFINE_list("torch_flows", ["all"], "PyTorch flows (torch_flow.FLOWS: "
                                  "loader, conv2d_batched, conv1d_two, conv1d_shared, "
                                  "net_conv2d_single, net_conv2d_batched, net_conv1d_two, "
                                  "net_conv1d_shared), all, or none.")
_TORCH_N = flags.DEFINE_integer("torch_n", 0, "Files for the PyTorch DataLoader flows (0: all).")
_TORCH_SECONDS = flags.DEFINE_float("torch_seconds", 20.0, "Seconds of each PyTorch "
                                    "networks-only timing.")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "Device of the PyTorch flows.")
_SKIP = flags.DEFINE_list("skip", [], "Parts to skip: decode, network, scan, tan, torch.")
_OUT = flags.DEFINE_string("out", str(pathlib.Path(__file__).parent / "results"), "Output dir.")
_TAG = flags.DEFINE_string("tag", "", "Suffix of the result file name.")

REPO = pathlib.Path(__file__).resolve().parents[1]
DR9_SPECTRA = 11_200_000


def mirror_paths(n, folder):
  from astrotl.scan import inputs
  from astrotl.tools import make_mirror
  folder = pathlib.Path(folder)
  catalog = folder / "catalog.csv"
  if not catalog.exists() or sum(1 for _ in open(catalog)) - 1 < n:
    t = time.time()
    make_mirror.make(n, folder)
    print(f"made a {n}-spectrum mirror in {time.time() - t:.0f} s")
  return catalog, inputs.from_catalog(str(catalog)).paths[:n]


def head_catalog(catalog, n, path):
  """The first n rows of a CSV catalog, written to path."""
  import csv
  with open(catalog, newline="") as f, open(path, "w", newline="") as g:
    r, w = csv.reader(f), csv.writer(g)
    w.writerow(next(r))
    for i, row in enumerate(r):
      if i >= n:
        break
      w.writerow(row)


class TreeMemory:
  """Peak resident memory of a process and of it with its children, sampled every 0.1 s."""

  def __init__(self, pid):
    self.pid, self.peak_main, self.peak_tree = pid, 0, 0
    self._stop = False
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self._thread.start()

  @staticmethod
  def _rss(pid):
    try:
      for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
    except OSError:
      pass
    return 0

  def _children(self):
    out = []
    for d in os.listdir("/proc"):
      if d.isdigit():
        try:
          if int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == self.pid:
            out.append(int(d))
        except (OSError, ValueError, IndexError):
          pass
    return out

  def _loop(self):
    while not self._stop:
      main = self._rss(self.pid)
      tree = main + sum(self._rss(c) for c in self._children())
      self.peak_main, self.peak_tree = max(self.peak_main, main), max(self.peak_tree, tree)
      time.sleep(0.1)

  def stop(self):
    self._stop = True
    self._thread.join()


def time_scan(args, out):
  """Runs the scan command; (wall seconds, summary, peak RSS of main / tree in bytes)."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  t = time.time()
  proc = subprocess.Popen([sys.executable, "-m", "astrotl.scan", "--progress=false",
                           f"--out={out}", *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  mem = TreeMemory(proc.pid)
  stdout, stderr = proc.communicate()
  wall = time.time() - t
  mem.stop()
  if proc.returncode != 0:
    raise RuntimeError(f"scan failed ({proc.returncode}): {stderr[-2000:]}")
  summary = json.loads((pathlib.Path(out) / "summary.json").read_text())
  return wall, summary, mem.peak_main, mem.peak_tree


def decode_rate(paths, workers):
  from astrotl.scan import workers as w
  pool = w.DecodePool(workers)
  t = time.time()
  for s in range(0, len(paths), w.TASK):
    pool.submit(s, paths[s:s + w.TASK])
  n_ok = 0
  while len(pool):
    n_ok += len(pool.next()[2][0])
  seconds = time.time() - t
  pool.close()
  return len(paths) / seconds, n_ok


def network_rate(model, paths, batch_size, seconds=20.0):
  """The device function alone (mode as the scan picks it), on decoded spectra in memory."""
  import jax
  from astrotl import parallel
  from astrotl.io import batch as io_batch
  from astrotl.scan import runner
  good, arrays, _, _ = io_batch.decode_many(paths[:batch_size])
  run = runner.Runner(model, parallel.make_mesh(jax.local_devices()), batch_size)
  raw = {k: np.resize(v, (run.batch_size,) + v.shape[1:]) for k, v in arrays.items()}
  run.warm_up()
  n, t = 0, time.time()
  while time.time() - t < seconds:
    for fn, v in zip(run.fns, run.variables):
      jax.block_until_ready(run._dispatch(fn, v, raw, run.batch_size)[0])
    n += run.batch_size
  return n / (time.time() - t), run.mode


def time_torch(paths, flows, workers):
  """benchmarks/torch_flow.py's flows on `paths`, in a process of their own as a user runs
  them (no jax threads in the process its DataLoader forks); {"torch": {flow: result},
  "torch_version": ..., ...}."""
  with tempfile.TemporaryDirectory(prefix="astrotl-torch-bench-") as d:
    listing, out = pathlib.Path(d) / "paths.txt", pathlib.Path(d) / "torch.json"
    listing.write_text("".join(f"{p}\n" for p in paths))
    cmd = [sys.executable, str(pathlib.Path(__file__).parent / "torch_flow.py"),
           f"--paths={listing}", "--n=0", f"--model={_MODEL.value}", f"--flows={','.join(flows)}",
           f"--batch_size={_BATCH.value}", f"--workers={workers}",
           f"--seconds={_TORCH_SECONDS.value}", f"--device={_TORCH_DEVICE.value}", f"--json={out}"]
    subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    got = json.loads(out.read_text())
  return {"torch": got.pop("flows"), **{f"torch_{k}": v for k, v in got.items()}}


def main(argv):
  del argv
  import jax
  from astrotl import bundle
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  import tan_baseline

  catalog, paths = mirror_paths(_N.value, _MIRROR.value)
  workers = _WORKERS.value
  model = bundle.load_model(_MODEL.value)
  r = {"n": len(paths), "workers": workers, "batch_size": _BATCH.value, "model": model.name,
       "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
       "n_devices": jax.local_device_count(), "cpu_count": os.cpu_count(),
       "load_average_before": os.getloadavg()}
  if "decode" not in _SKIP.value:
    r["decode_rate"], _ = decode_rate(paths, workers)
    print(f"decode only:   {r['decode_rate']:8.0f} spectra/s ({workers} workers)")
  if "network" not in _SKIP.value:
    r["network_rate"], r["mode"] = network_rate(model, paths, _BATCH.value)
    print(f"network only:  {r['network_rate']:8.0f} spectra/s (mode {r['mode']})")
  if "scan" not in _SKIP.value:
    with tempfile.TemporaryDirectory(prefix="astrotl-scan-bench-") as d:
      head = pathlib.Path(d) / "catalog.csv"  # the mirror may hold more than --n
      head_catalog(catalog, len(paths), head)
      args = [f"--catalog={head}", f"--root={catalog.parent}", f"--model={_MODEL.value}",
              f"--workers={workers}", f"--batch_size={_BATCH.value}"]
      wall, summary, peak_main, peak_tree = time_scan(args, pathlib.Path(d) / "out")
    r.update(scan_wall_seconds=wall, scan_rate_wall=len(paths) / wall,
             scan_rate_steady=summary["spectra_per_second"], scan_timings=summary["timings"],
             scan_wait_decode_s=summary["host_wait_decode_s"],
             scan_wait_device_s=summary["host_wait_device_s"], scan_mode=summary["mode"],
             scan_peak_rss_main_mb=peak_main / 2**20, scan_peak_rss_tree_mb=peak_tree / 2**20)
    print(f"scan:          {r['scan_rate_wall']:8.0f} spectra/s command to exit ({wall:.1f} s); "
          f"steady {r['scan_rate_steady']:.0f}/s; host waited {summary['host_wait_decode_s']:.1f} s "
          f"for decoders, {summary['host_wait_device_s']:.1f} s for the device; peak RSS "
          f"{r['scan_peak_rss_main_mb']:.0f} MB ({r['scan_peak_rss_tree_mb']:.0f} MB with workers)")
    print(f"               timings {json.dumps({k: round(v, 1) for k, v in summary['timings'].items()})}")
  if _TAN_N.value and "tan" not in _SKIP.value:
    sub = paths[:_TAN_N.value]
    tan = tan_baseline.run(sub, tan_baseline.shipped_configs(model))
    r.update(tan_rate=tan["rate"], tan_n=tan["n"], tan_torch_threads=tan["torch_threads"],
             tan_read_fraction=tan["read_seconds"] / tan["seconds"])
    print(f"Tan-style:     {tan['rate']:8.1f} spectra/s (on {tan['n']} files, "
          f"{r['tan_read_fraction']:.0%} reading)")
  flows = [] if "torch" in _SKIP.value else [f for f in _TORCH_FLOWS.value if f != "none"]
  if flows:
    r.update(time_torch(paths[:_TORCH_N.value or len(paths)], flows, workers))
    if "scan_rate_wall" in r:
      for t in r["torch"].values():
        t["scan_over_this"] = r["scan_rate_wall"] / t["rate"]
      # The whole flows (reading + networks), not the DataLoader alone.
      full = {f: t["rate"] for f, t in r["torch"].items()
              if f in ("conv2d_batched", "conv1d_two", "conv1d_shared")}
      if full:
        best = max(full, key=full.get)
        r["best_torch_flow"], r["scan_over_best_torch"] = best, r["scan_rate_wall"] / full[best]
        print(f"scan / best PyTorch flow ({best}) = {r['scan_over_best_torch']:.1f}x")
  if "scan_rate_wall" in r and "decode_rate" in r:
    r["scan_over_decode"] = r["scan_rate_wall"] / r["decode_rate"]
  if "scan_rate_wall" in r and "tan_rate" in r:
    r["scan_over_tan"] = r["scan_rate_wall"] / r["tan_rate"]
    print(f"scan / Tan-style = {r['scan_over_tan']:.1f}x")
  if "decode_rate" in r:
    r["dr9_hours_16_cores_decode_bound"] = DR9_SPECTRA / (r["decode_rate"] / max(workers, 1) * 16) / 3600
  r["load_average_after"] = os.getloadavg()
  outdir = pathlib.Path(_OUT.value)
  outdir.mkdir(parents=True, exist_ok=True)
  name = f"scan_throughput_{r['backend']}{'_' + _TAG.value if _TAG.value else ''}.json"
  (outdir / name).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
  app.run(main)
