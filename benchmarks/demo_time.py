"""Fixed costs of the bundled demo: the README's command, first run and repeated runs.

  python benchmarks/demo_time.py --warm=3

runs `python -m astrotl.scan` (no arguments: the bundled spectra and two-stage model, into
./astrotl-scan) as the README says, each time in a fresh empty folder, as a subprocess:

  cold   once with ASTROTL_CACHE set to a fresh empty folder (nothing compiled yet);
  warm   --warm more times with the same folder (the compiled programs on disk).

For each run it records the wall-clock seconds from the command to its exit, the CPU
seconds of the process and its decoders (user + system, from getrusage), the load average
before it (on a busy machine wall-clock times say little; CPU times still compare), and
summary.json's `timings`, `wall_seconds` and counts.  Writes
benchmarks/results/demo_time_<backend>[_<tag>].json.  Targets (issue 23, item 12), on an
idle 2-core machine: warm <= 6 s, cold <= 20 s wall-clock.
"""

import json
import os
import pathlib
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_WARM = flags.DEFINE_integer("warm", 3, "Runs after the cold one, with its compilation cache.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python that runs the scan.")
_PYTHONPATH = flags.DEFINE_string("pythonpath", "", "PYTHONPATH of the scan (another "
                                  "checkout's folder, to compare two versions).")
_OUT = flags.DEFINE_string("out", str(pathlib.Path(__file__).parent / "results"), "Output dir.")
_TAG = flags.DEFINE_string("tag", "", "Suffix of the result file name (e.g. contended: "
                           "measured while other work ran).")

COMMAND = ["-m", "astrotl.scan"]  # the README's demo: no arguments


def run_once(kind, cache, env):
  """One demo run in a fresh folder: its times and what its summary.json says."""
  work = pathlib.Path(tempfile.mkdtemp(prefix="astrotl-demo-"))
  try:
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([_PYTHON.value] + COMMAND, cwd=work, capture_output=True, text=True,
                          env=dict(env, ASTROTL_CACHE=str(cache)))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    row = {"kind": kind, "returncode": proc.returncode, "wall_s": round(wall, 3),
           "cpu_s": round(user + system, 3), "user_s": round(user, 3),
           "sys_s": round(system, 3), "load_before": round(load, 2)}
    summary_path = work / "astrotl-scan" / "summary.json"
    if proc.returncode != 0 or not summary_path.exists():
      row["stderr_tail"] = proc.stderr[-2000:]
      return row
    summary = json.loads(summary_path.read_text())
    row.update(timings={k: round(v, 3) for k, v in summary.get("timings", {}).items()},
               summary_wall_s=round(summary["wall_seconds"], 3),
               n_scanned=summary["n_scanned"], n_candidates=summary["n_candidates"],
               outputs=sorted(p.name for p in (work / "astrotl-scan").iterdir() if p.is_file()))
    return row
  finally:
    shutil.rmtree(work, ignore_errors=True)


def backend(env):
  got = subprocess.run([_PYTHON.value, "-c", "import jax; print(jax.default_backend())"],
                       capture_output=True, text=True, env=env)
  return got.stdout.strip() or "unknown"


def main(argv):
  del argv
  env = dict(os.environ)
  env.pop("ASTROTL_CACHE", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # it would override ASTROTL_CACHE
  if _PYTHONPATH.value:
    env["PYTHONPATH"] = _PYTHONPATH.value
  cache = pathlib.Path(tempfile.mkdtemp(prefix="astrotl-demo-cache-"))
  runs = []
  try:
    for i in range(1 + _WARM.value):
      row = run_once("cold" if i == 0 else "warm", cache, env)
      runs.append(row)
      print(json.dumps(row), flush=True)
      if row["returncode"] != 0:
        break
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  warm = [r for r in runs[1:] if r["returncode"] == 0]

  def stats(key):
    values = [r[key] for r in warm]
    return {"median": round(statistics.median(values), 3), "min": min(values),
            "max": max(values)} if values else None

  name = backend(env)
  result = {
      "command": " ".join(["python"] + COMMAND) + "  (in a fresh folder each run)",
      "tag": _TAG.value or None, "backend": name, "python": _PYTHON.value,
      "pythonpath": _PYTHONPATH.value or None,
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "processor": platform.processor() or platform.machine()},
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
      "targets_s": {"warm_wall": 6.0, "cold_wall": 20.0, "on": "an idle 2-core machine"},
      "cold": runs[0] if runs else None,
      "warm": {"runs": len(warm), "wall_s": stats("wall_s"), "cpu_s": stats("cpu_s")},
      "runs": runs,
  }
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"demo_time_{name}{'_' + _TAG.value if _TAG.value else ''}.json"
  path.write_text(json.dumps(result, indent=1) + "\n")
  print(f"cold: wall {runs[0]['wall_s']} s, cpu {runs[0]['cpu_s']} s; warm (median of "
        f"{len(warm)}): wall {result['warm']['wall_s']}, cpu {result['warm']['cpu_s']} -> {path}")
  if any(r["returncode"] != 0 for r in runs):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
