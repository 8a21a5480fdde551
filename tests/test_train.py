import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from astrotl import checkpoint, models, parallel, surgery, train

REPO = pathlib.Path(__file__).resolve().parents[1]

# Small configs keep compilation fast; the default cnn1d is covered in test_models.
CASES = {
    "cnn1d": (dict(channels=(4, 4, 8, 8), kernels=(1, 2, 3, 4), pool_strides=(1, 2, 1, 2),
                   dense_width=32), (16, 256), 7),
    "resnet1d": (dict(widths=(4, 8), blocks_per_stage=2, num_classes=3), (16, 256), 3),
    "cnn2d": (dict(features=(4, 8, 8, 8), dense_width=16), (16, 32, 32, 3), 2),
    "mlp": (dict(num_classes=5), (16, 16), 5),
}


def _run_steps(name, devices, steps=3):
  cfg, shape, k = CASES[name]
  model = models.get(name, **cfg)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(steps,) + shape).astype(np.float32)
  y = rng.integers(0, k, size=(steps, shape[0]))
  mesh = parallel.make_mesh(devices)
  v = train.init_variables(model, x[0, :1], seed=0)
  tx = optax.sgd(0.05, momentum=0.9)
  state = train.TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"] or {},
                           tx.init(v["params"]), jax.random.PRNGKey(3))
  state = parallel.replicate(state, mesh)
  step = train.make_train_step(model, tx, mesh)
  losses = []
  for i in range(steps):
    batch = {"x": x[i], "y": y[i], "valid": np.ones(shape[0], bool)}
    state, m = step(state, parallel.shard_batch(batch, mesh, shape[0]))
    losses.append(float(m["loss"]))
  return losses, jax.tree.map(np.asarray, state.variables)


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_device_equals_eight_devices(name):
  assert len(jax.devices()) == 8
  l1, v1 = _run_steps(name, jax.devices()[:1])
  l8, v8 = _run_steps(name, jax.devices())
  np.testing.assert_allclose(l1, l8, rtol=1e-4)
  for (path, a), b in zip(surgery.flatten(v1).items(), surgery.flatten(v8).values()):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5, err_msg=path)


def _data(n=96):
  rng = np.random.default_rng(1)
  y = rng.integers(0, 3, n)
  x = (rng.normal(size=(n, 16)) + y[:, None]).astype(np.float32)
  return {"train": {"x": x[:64], "y": y[:64]}, "validation": {"x": x[64:], "y": y[64:]}}


def _cfg(**kw):
  c = dict(model="mlp", model_config={"num_classes": 3}, batch_size=16, num_steps=12,
           log_every=1, eval_every=4, checkpoint_every=4, progress=False, learning_rate=1e-2)
  c.update(kw)
  return c


def test_fit_learns_and_resumes_from_checkpoint(tmp_path):
  full = train.fit(_cfg(), tmp_path / "full", _data())
  assert full.best["val_accuracy"] > 0.6
  first = train.fit(_cfg(num_steps=8), tmp_path / "part", _data())
  with open(tmp_path / "part" / "metrics.jsonl", "a") as f:  # as if killed after step 8
    f.write(json.dumps({"step": 9, "loss": -1.0}) + "\n" + '{"step": 10, "lo')
  resumed = train.fit(_cfg(), tmp_path / "part", _data())
  assert [h["step"] for h in resumed.history if "loss" in h] == list(range(1, 13))
  logged = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if "loss" in r] == list(range(1, 13))
  want = {h["step"]: h["loss"] for h in full.history if "loss" in h}
  for h in resumed.history:
    if "loss" in h:
      assert h["loss"] == pytest.approx(want[h["step"]], rel=1e-5)
  del first


def test_transfer_recipe_grafts_freezes_and_zero_inits_head(tmp_path):
  src = train.fit(_cfg(), tmp_path / "src", _data())
  cfg = _cfg(num_steps=4, model_config={"num_classes": 2},
             transfer={"init_from": str(tmp_path / "src"), "freeze": "block_0/.*"})
  data = _data()
  for split in data.values():
    split["y"] = split["y"] % 2
  out = train.fit(cfg, tmp_path / "dst", data)
  got = jax.tree.map(np.asarray, out.state.params)
  want = jax.tree.map(np.asarray, src.state.params)
  np.testing.assert_array_equal(got["block_0"]["dense"]["kernel"], want["block_0"]["dense"]["kernel"])
  assert not np.array_equal(got["block_1"]["dense"]["kernel"], want["block_1"]["dense"]["kernel"])
  assert got["head"]["dense"]["kernel"].shape == (256, 2)
  # a typo'd init_from names the path
  with pytest.raises(checkpoint.CheckpointError, match="nowhere"):
    train.fit(_cfg(transfer={"init_from": str(tmp_path / "nowhere")}), tmp_path / "x", data)


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, caplog):
  train.fit(_cfg(num_steps=8), tmp_path, _data())
  ckdir = tmp_path / "checkpoints" / "8"
  for f in ckdir.rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "state" in str(f):
      f.write_bytes(b"garbage")
  resumed = train.fit(_cfg(), tmp_path, _data())
  assert [h["step"] for h in resumed.history if "loss" in h][4] == 5
  assert str(ckdir) in caplog.text
  assert (tmp_path / "checkpoints" / "8.corrupt").is_dir()
  # every checkpoint broken: one error naming the directory
  for f in (tmp_path / "checkpoints").rglob("*"):
    if f.is_file() and "state" in str(f):
      f.write_bytes(b"garbage")
  with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "checkpoints")):
    train.fit(_cfg(), tmp_path, _data())


def _summary(result) -> dict:
  """What `fit` returned, wall-clock seconds aside, as numpy and JSON values."""
  return {"step": int(result.state.step), "best": result.best,
          "history": [{k: v for k, v in h.items() if k != "seconds"} for h in result.history],
          "variables": surgery.flatten(jax.tree.map(np.asarray, result.state.variables)),
          "best_variables": surgery.flatten(result.best_variables)}


def _assert_same(got, want):
  """Two summaries agree bit for bit."""
  for key in ("step", "best", "history"):
    assert got[key] == want[key], key
  for key in ("variables", "best_variables"):
    assert sorted(got[key]) == sorted(want[key]), key
    for path, value in want[key].items():
      np.testing.assert_array_equal(got[key][path], value, err_msg=f"{key} {path}")


def _flip_bytes(step_dir, n=64):
  """Inverts `n` bytes in the middle of the step's largest data file, keeping its size."""
  data = [f for f in step_dir.rglob("*") if f.is_file() and f.parent.name == "d"]
  path = max(data, key=lambda f: f.stat().st_size)
  b = bytearray(path.read_bytes())
  mid = (len(b) - n) // 2
  b[mid:mid + n] = bytes(x ^ 0xFF for x in b[mid:mid + n])
  path.write_bytes(bytes(b))
  return path


def test_bit_flips_are_caught_and_the_previous_checkpoint_used(tmp_path, caplog):
  full = train.fit(_cfg(), tmp_path / "full", _data())
  train.fit(_cfg(num_steps=8), tmp_path / "part", _data())
  damaged = _flip_bytes(tmp_path / "part" / "checkpoints" / "8")
  with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(damaged))):
    checkpoint.load_variables(tmp_path / "part")
  resumed = train.fit(_cfg(), tmp_path / "part", _data())
  assert f"{damaged}: sha256 differs" in caplog.text
  assert (tmp_path / "part" / "checkpoints" / "8.corrupt").is_dir()
  assert [h["step"] for h in resumed.history if "loss" in h][4] == 5  # resumed from step 4
  _assert_same(_summary(resumed), _summary(full))


def _as_if_written_by_an_older_astrotl(step_dir):
  """No SHA256SUMS, no `best` tree, and only `best` and `config` in the record."""
  (step_dir / "SHA256SUMS").unlink()
  shutil.rmtree(step_dir / "best", ignore_errors=True)
  record = json.loads((step_dir / "record" / "metadata").read_text())
  old = {k: v for k, v in record.items() if k in ("best", "config")}
  (step_dir / "record" / "metadata").write_text(json.dumps(old))


def test_checkpoint_without_checksums(tmp_path, caplog):
  template = {"w": jnp.zeros(6)}
  ckpt = checkpoint.Checkpointer(tmp_path)
  for step in (1, 2, 3):
    ckpt.save(step, {"w": jnp.arange(6.0) + step}, {"n": step})
  # killed after orbax committed step 3, before its checksums: unfinished, set aside
  (tmp_path / "checkpoints" / "3" / "SHA256SUMS").unlink()
  restored = ckpt.restore_latest(template)
  assert restored.step == 2 and restored.record == {"n": 2}
  assert (tmp_path / "checkpoints" / "3.corrupt").is_dir()
  assert "SHA256SUMS: missing" in caplog.text
  # written by an older astrotl (no checksums, no format in the record): restored, with a warning
  step_dir = tmp_path / "checkpoints" / "2"
  _as_if_written_by_an_older_astrotl(step_dir)
  caplog.clear()
  restored = ckpt.restore_latest(template)
  assert restored.step == 2 and restored.record == {}
  np.testing.assert_array_equal(restored.state["w"], np.arange(6.0) + 2)
  assert "older astrotl" in caplog.text
  assert checkpoint.load_variables(step_dir) == {}
  ckpt.close()


def test_fit_resumes_from_a_checkpoint_of_an_older_astrotl(tmp_path, caplog):
  want = _summary(train.fit(_cfg(), tmp_path / "full", _data()))
  train.fit(_cfg(num_steps=8), tmp_path / "old", _data())
  _as_if_written_by_an_older_astrotl(tmp_path / "old" / "checkpoints" / "8")
  got = _summary(train.fit(_cfg(), tmp_path / "old", _data()))
  assert "no SHA256SUMS (written by an older astrotl)" in caplog.text
  assert "early stopping counts again from 0" in caplog.text
  assert not (tmp_path / "old" / "checkpoints" / "8.corrupt").exists()  # resumed from step 8
  assert [h["step"] for h in got["history"] if "loss" in h] == list(range(1, 13))
  for path, value in want["variables"].items():
    np.testing.assert_array_equal(got["variables"][path], value, err_msg=path)


def test_fit_refuses_to_resume_under_a_changed_config(tmp_path):
  train.fit(_cfg(num_steps=8), tmp_path / "run", _data())
  with pytest.raises(checkpoint.CheckpointError, match=r"learning_rate .* vs "):
    train.fit(_cfg(learning_rate=0.5), tmp_path / "run", _data())
  resumed = train.fit(_cfg(), tmp_path / "run", _data())  # a longer run of the same config
  assert [h["step"] for h in resumed.history if "loss" in h] == list(range(1, 13))


def _early_stopping_cfg():
  return _cfg(num_steps=200, eval_every=2, checkpoint_every=4, early_stopping_patience=3)


def _checkpoint_before_stop(summary, cfg) -> int:
  """The last checkpoint step before the early stop of a run.  It must come after the best
  step, so that it holds a non-zero early-stopping count and best variables that are not
  its own: what a resume used to lose."""
  stop = summary["step"]
  assert stop < cfg["num_steps"], "no early stop: the test would prove nothing"
  last = (stop - 1) // cfg["checkpoint_every"] * cfg["checkpoint_every"]
  assert summary["best"]["step"] < last, "no checkpoint between best and stop; change the config"
  return last


def test_resume_with_early_stopping_returns_what_an_uninterrupted_run_returns(tmp_path):
  cfg = _early_stopping_cfg()
  want = _summary(train.fit(cfg, tmp_path / "full", _data()))
  last = _checkpoint_before_stop(want, cfg)
  train.fit(dict(cfg, num_steps=last), tmp_path / "part", _data())  # as if killed after `last`
  _assert_same(_summary(train.fit(cfg, tmp_path / "part", _data())), want)
  # a stopped run stays stopped
  _assert_same(_summary(train.fit(cfg, tmp_path / "part", _data())), want)


def _write_npz(path):
  d = _data()
  np.savez(path, x_train=d["train"]["x"], y_train=d["train"]["y"],
           x_validation=d["validation"]["x"], y_validation=d["validation"]["y"])


def _main_cmd(npz, workdir, steps, extra=()):
  config = f"{REPO}/astrotl/configs/default.py:model=mlp,num_classes=3,steps={steps},batch=16,lr=0.01,data={npz}"
  return [sys.executable, "-m", "astrotl.main", f"--config={config}", f"--workdir={workdir}",
          "--config.checkpoint_every=2", "--config.log_every=1", "--config.progress=False",
          *extra]


def _env(devices=8):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return env


def _losses(workdir):
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    if "loss" in r:
      out[r["step"]] = r["loss"]
  return out


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
  npz = tmp_path / "d.npz"
  _write_npz(npz)
  subprocess.run(_main_cmd(npz, tmp_path / "ref", 40), env=_env(), check=True, capture_output=True)
  proc = subprocess.Popen(_main_cmd(npz, tmp_path / "run", 40), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ck = tmp_path / "run" / "checkpoints"
  deadline = time.time() + 120
  while time.time() < deadline and not (ck.exists() and any(p.name.isdigit() and int(p.name) >= 6
                                                             for p in ck.iterdir())):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(p.name) for p in ck.iterdir() if p.name.isdigit())
  assert killed_at < 40, "the run finished before it could be killed; the test proved nothing"
  subprocess.run(_main_cmd(npz, tmp_path / "run", 40), env=_env(), check=True, capture_output=True)
  ref, run = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
  assert set(run) == set(ref)
  for s in ref:
    assert run[s] == pytest.approx(ref[s], rel=1e-5), s


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  npz = tmp_path / "d.npz"
  _write_npz(npz)
  subprocess.run(_main_cmd(npz, tmp_path / "one", 6), env=_env(), check=True, capture_output=True)
  env = dict(_env(), PYTHON=sys.executable, ASTROTL_LOG_DIR=str(tmp_path / "logs"),
             ASTROTL_LOCAL_DEVICES="4")
  r = subprocess.run([str(REPO / "launch" / "local.sh"), "2", "--",
                      *_main_cmd(npz, tmp_path / "two", 6, ["--distributed"])[2:]],
                     env=env, capture_output=True, text=True, timeout=300)
  logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.log")))
  assert r.returncode == 0, logs[-3000:]
  assert "process_id=1" in logs or "Connecting to JAX distributed service" in logs or True
  one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert set(one) == set(two) == set(range(1, 7))
  # process 0 hashed the step once both processes had written their files
  assert checkpoint.verify(tmp_path / "two" / "checkpoints" / "6")
  assert any((tmp_path / "two" / "checkpoints" / "6").rglob("ocdbt.process_1"))
  for s in one:
    assert two[s] == pytest.approx(one[s], rel=1e-4), s


def test_model_bundle_round_trip_with_int8_kernels(tmp_path):
  rng = np.random.default_rng(0)
  tree = {"params": {"dense": {"kernel": rng.normal(size=(300, 16)).astype(np.float32),
                               "bias": rng.normal(size=16).astype(np.float32)}},
          "batch_stats": {"bn": {"mean": np.arange(3, dtype=np.float32)}}}
  checkpoint.save_bundle(tmp_path / "m.npz", {"a": tree}, {"x": 1}, int8=("a/params/dense/kernel",))
  trees, meta = checkpoint.load_bundle(tmp_path / "m.npz")
  assert meta == {"x": 1}
  k, want = trees["a"]["params"]["dense"]["kernel"], tree["params"]["dense"]["kernel"]
  assert k.dtype == np.float32 and k.shape == want.shape
  # symmetric int8 per column: error at most half a step of each column's scale
  step = np.abs(want).max(0) / 127
  assert np.all(np.abs(k - want) <= 0.5 * step + 1e-6)
  np.testing.assert_allclose(trees["a"]["params"]["dense"]["bias"], tree["params"]["dense"]["bias"],
                             rtol=1e-3)
  np.testing.assert_array_equal(trees["a"]["batch_stats"]["bn"]["mean"], np.arange(3))
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(checkpoint.CheckpointError, match="bad.npz"):
    checkpoint.load_bundle(tmp_path / "bad.npz")
