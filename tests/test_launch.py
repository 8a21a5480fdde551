"""The cluster launchers, run here against stand-ins for srun, scontrol and gcloud.

The stand-ins do what the real tools do to the launched command (srun: start SLURM_NTASKS
copies with the task's SLURM variables; gcloud: copy files, run a command on every worker),
so the scripts' own logic (exit status, requeue on the warning signal, remote quoting, what is
shipped to a TPU pod) is exercised; a real cluster is not.  The srun stand-in is the
`fake_slurm` fixture (conftest.py); the end-to-end SLURM scan is in test_scan.py.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_slurm_script_fails_when_a_task_fails(fake_slurm):
  env, logs = fake_slurm
  r = subprocess.run(["bash", str(REPO / "launch" / "slurm_gpu.sbatch"), "astrotl.no_such_module"],
                     env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert "No module named astrotl.no_such_module" in (logs / "task_0.log").read_text()


def test_slurm_script_requeues_on_the_warning_signal(tmp_path, fake_slurm):
  env, logs = fake_slurm
  # A task that outlives the signal: the real scan would be mid-run here.
  sleeper = tmp_path / "sleeper"
  (sleeper / "astrotl_sleep").mkdir(parents=True)
  (sleeper / "astrotl_sleep" / "__main__.py").write_text("import time\ntime.sleep(60)\n")
  (sleeper / "astrotl_sleep" / "__init__.py").write_text("")
  env["PYTHONPATH"] = f"{sleeper}:{env['PYTHONPATH']}"
  proc = subprocess.Popen(["bash", str(REPO / "launch" / "slurm_gpu.sbatch"), "astrotl_sleep"],
                          env=env, start_new_session=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 60
    while not (logs / "srun_started").exists() and time.time() < deadline:
      time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends the batch shell
    proc.wait(timeout=30)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
  assert (logs / "scontrol.log").read_text().split() == ["requeue", env["SLURM_JOB_ID"]]
  assert proc.returncode != 0  # the step did not finish; the requeued job resumes it


def _fake_gcloud(tmp_path, write_tool):
  """gcloud stand-in: `scp` copies into each worker's home, `ssh --worker=all` runs there."""
  workers = [tmp_path / "worker_0", tmp_path / "worker_1"]
  write_tool(tmp_path / "bin", "gcloud", f"""#!{sys.executable}
import json, os, re, shutil, subprocess, sys
args = sys.argv[1:]
with open({str(tmp_path / "gcloud.log")!r}, "a") as f:
  f.write(json.dumps(args) + "\\n")
assert args[:3] == ["compute", "tpus", "tpu-vm"] and "--worker=all" in args, args
for home in {[str(w) for w in workers]!r}:
  os.makedirs(home + "/tmp", exist_ok=True)
  if args[3] == "scp":
    shutil.copy(args[4], home + "/tmp/" + os.path.basename(args[5].split(":", 1)[1]))
  elif args[3] == "ssh":
    command = next(a for a in args if a.startswith("--command="))[len("--command="):]
    # The worker's /tmp is its home's tmp/; installing is the worker's business, not this test's.
    command = command.replace("/tmp/", home + "/tmp/")
    command = re.split(r"\\s*&&\\s*cd ~/astrotl && python3 -m venv", command)[0]
    subprocess.run(["bash", "-c", command], env=dict(os.environ, HOME=home), check=True)
""")
  return workers


def _stub_python(worker, write_tool):
  """The worker's venv python, replaced by one that reports the argv it was given."""
  path = worker / "astrotl" / ".venv" / "bin" / "python"
  path.parent.mkdir(parents=True)
  write_tool(path.parent, "python",
             f"#!{sys.executable}\nimport json, sys\n"
             f"open({str(worker / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n")


def test_tpu_script_ships_the_source_and_quotes_the_command(tmp_path, write_tool):
  (tmp_path / "bin").mkdir()
  workers = _fake_gcloud(tmp_path, write_tool)
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
  script = str(REPO / "launch" / "tpu_pod.sh")
  odd = ["--out=/mnt/shared/dr9 scan", "--note=it's $HOME"]
  for args in (odd, []):
    for w in workers:
      shutil.rmtree(w, ignore_errors=True)
      _stub_python(w, write_tool)
    r = subprocess.run(["bash", script, "my-pod", "us-central2-b", "--", "astrotl.scan", *args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for w in workers:
      assert json.loads((w / "argv.json").read_text()) == ["-m", "astrotl.scan", "--distributed", *args]
  calls = [json.loads(l) for l in (tmp_path / "gcloud.log").read_text().splitlines()]
  assert all("my-pod" in " ".join(c) and "--zone=us-central2-b" in c for c in calls)
  with tarfile.open(workers[0] / "tmp" / "astrotl-src.tgz") as tar:
    names = set(tar.getnames())
  assert {"pyproject.toml", "astrotl/scan/__init__.py", "launch/tpu_pod.sh"} <= names
  assert not any(n.split("/")[0] in {".git", ".venv", "workdir", "build"} for n in names)
  # the source really arrived: unpacked by the script on each worker
  assert (workers[1] / "astrotl" / "astrotl" / "scan" / "__init__.py").exists()


def test_tpu_script_usage_error(tmp_path):
  r = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), "pod", "zone", "astrotl.scan"],
                     capture_output=True, text=True)
  assert r.returncode == 2 and "usage" in r.stderr


def test_slurm_gpus_per_task_drive_the_gpus_the_task_sees():
  from astrotl.parallel import slurm_bound_gpus
  task = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "3", "SLURM_LOCALID": "3", "SLURM_NTASKS": "4"}
  # every task sees the node's 4 GPUs: JAX's own choice (GPU number SLURM_LOCALID) is right
  assert slurm_bound_gpus(dict(task, CUDA_VISIBLE_DEVICES="0,1,2,3")) is None
  # --gpus-per-task=1: task 3 sees only its GPU, as device 0
  assert slurm_bound_gpus(dict(task, SLURM_GPUS_PER_TASK="1", CUDA_VISIBLE_DEVICES="3")) == [0]
  assert slurm_bound_gpus(dict(task, SLURM_GPUS_PER_TASK="2", CUDA_VISIBLE_DEVICES="6,7")) == [0, 1]
  # an explicit JAX_LOCAL_DEVICE_IDS, no GPUs, or no SLURM: left to JAX
  assert slurm_bound_gpus(dict(task, SLURM_GPUS_PER_TASK="1", CUDA_VISIBLE_DEVICES="3",
                               JAX_LOCAL_DEVICE_IDS="0")) is None
  assert slurm_bound_gpus(dict(task, SLURM_GPUS_PER_TASK="1")) is None
  assert slurm_bound_gpus({"SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "0"}) is None
