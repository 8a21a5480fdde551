"""Test set-up shared by every test file.

Eight forced host CPU devices for the whole session (set before jax is imported), so
multi-device tests run in-process; single-device tests build a mesh of one device.
Real data is read from ../shared/data beside the checkout (or $ASTROTL_SHARED_DATA);
tests that need it are skipped when it is absent.
"""

import os
import pathlib
import stat
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _shared_data():
  env = os.environ.get("ASTROTL_SHARED_DATA")
  candidates = [pathlib.Path(env)] if env else []
  candidates += [REPO.parent / "shared" / "data", pathlib.Path("/work/shared/data")]
  for c in candidates:
    if (c / "README.md").exists():
      return c
  return None


@pytest.fixture(scope="session")
def shared_data():
  path = _shared_data()
  if path is None:
    pytest.skip("../shared/data not found (set ASTROTL_SHARED_DATA)")
  return path


def _write_tool(bin_dir, name, text):
  path = pathlib.Path(bin_dir) / name
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


@pytest.fixture
def write_tool():
  """write_tool(dir, name, text): an executable script, for stand-ins of cluster tools."""
  return _write_tool


@pytest.fixture
def fake_slurm(tmp_path):
  """srun and scontrol stand-ins on PATH; returns (the environment sbatch would give, log dir).

  The srun stand-in starts SLURM_NTASKS copies of the command on this machine, each with its
  task variables, as srun does on one node; task i writes to <log dir>/task_i.log.
  """
  bin_dir, log_dir = tmp_path / "slurm_bin", tmp_path / "slurm_logs"
  bin_dir.mkdir(parents=True, exist_ok=True)
  log_dir.mkdir(parents=True, exist_ok=True)
  _write_tool(bin_dir, "srun", f"""#!/usr/bin/env bash
# srun on one node: SLURM_NTASKS copies of the command, each with its task variables.
while [[ "$1" == --* ]]; do shift; done
pids=()
for (( i = 0; i < SLURM_NTASKS; i++ )); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NODELIST=localhost SLURM_STEP_NUM_NODES=1 \\
    "$@" >"{log_dir}/task_$i.log" 2>&1 &
  pids+=($!)
done
touch "{log_dir}/srun_started"
status=0
for pid in "${{pids[@]}}"; do wait "$pid" || status=$?; done
exit $status
""")
  _write_tool(bin_dir, "scontrol", f'#!/usr/bin/env bash\necho "$@" >>"{log_dir}/scontrol.log"\n')
  # jax derives the coordinator port from the job id: vary it between runs.
  job_id = str(100000 + (os.getpid() * 7919 + int(time.time())) % 900000)
  env = dict(os.environ, PATH=f"{bin_dir}:{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}",
             PYTHONPATH=str(REPO), SLURM_JOB_ID=job_id, SLURM_NTASKS="2",
             SLURM_CPUS_PER_TASK="1", JAX_PLATFORMS="cpu")
  return env, log_dir


TINY = {"channels": (4, 4, 4, 4, 4, 4, 4, 4), "dense_width": 8}
TINY_CLASSES = ["A", "F", "G", "K", "M", "WD", "WD+M"]


def _tiny_bundles(folder):
  """Small random bundles, fast to compile, on the real code paths: a two-stage model
  whose stages share their conv trunk, one whose stages do not, a single classifier and
  a regressor.  Returns {kind: path}."""
  import numpy as np
  from astrotl import checkpoint, models, train
  x = np.zeros((1, 3700), np.float32)
  v1 = train.init_variables(models.get("cnn1d", num_classes=7, **TINY), x, 0)
  v2 = train.init_variables(models.get("cnn1d", num_classes=2, **TINY), x, 1)
  shared = {c: {k: (v1[c][k] if k.startswith("block_") else v) for k, v in v2[c].items()}
            for c in v2}
  vr = train.init_variables(models.get("cnn1d", num_classes=1, **TINY), x, 2)
  spectrum = {"type": "spectrum", "normalise": "tan", "pixels": 3700}
  stage1 = {"model": "cnn1d", "config": dict(TINY, num_classes=7), "output": "classes",
            "classes": TINY_CLASSES, "temperature": 1.3}
  stage2 = {"model": "cnn1d", "config": dict(TINY, num_classes=2), "output": "classes",
            "classes": ["other", "WD"], "positive": "WD", "temperature": 0.7}
  rule = {"type": "two_stage", "score": "p_wd", "threshold": 0.5, "agree": "class1",
          "classes": ["WD", "WD+M"]}
  out = {}
  for kind, trees, meta in (
      ("shared", {"stage1": v1, "stage2": shared},
       {"networks": {"stage1": stage1, "stage2": stage2}, "rule": rule}),
      ("separate", {"stage1": v1, "stage2": v2},
       {"networks": {"stage1": stage1, "stage2": stage2}, "rule": rule}),
      ("classifier", {"main": v1}, {"networks": {"main": stage1}, "rule": None}),
      ("regressor", {"main": vr},
       {"networks": {"main": {"model": "cnn1d", "config": dict(TINY, num_classes=1),
                              "output": "regression", "targets": ["subtype"],
                              "scale": [[45.0, 10.0]]}}, "rule": None})):
    path = folder / f"tiny_{kind}.npz"
    checkpoint.save_bundle(path, trees, {"format": 2, "name": f"tiny_{kind}", "input": spectrum,
                                         **meta})
    out[kind] = path
  return out


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory):
  return _tiny_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
  """A 96-spectrum DR9-layout mirror with its catalog (astrotl.tools.make_mirror)."""
  from astrotl.tools import make_mirror
  out = tmp_path_factory.mktemp("mirror")
  return make_mirror.make(96, out, seed=1, level=1)
