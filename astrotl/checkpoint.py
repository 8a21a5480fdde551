"""Checkpoints (the only module that imports orbax).

A workdir holds `checkpoints/<step>/` written by an orbax CheckpointManager: the train
state (params, batch_stats, opt_state, step, rng) plus a small JSON record.  Saves are
synchronous, so a process killed with SIGKILL leaves at worst an unfinished temporary
directory, which orbax ignores.  A checkpoint that fails to restore is reported by
path and the next older one is tried.
"""

import json
import logging
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  pass


def _manager(directory, keep=None, read_only=False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                         create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


class Checkpointer:
  """Saves and restores train states under `workdir/checkpoints`."""

  def __init__(self, workdir, keep: int = 3):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self._mngr = _manager(self.directory, keep=keep)

  def steps(self) -> list[int]:
    self._mngr.reload()
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, record: dict | None = None) -> None:
    args = {"state": ocp.args.StandardSave(state)}
    if record is not None:
      args["record"] = ocp.args.JsonSave(record)
    self._mngr.save(step, args=ocp.args.Composite(**args), force=True)
    self._mngr.wait_until_finished()

  def restore_latest(self, template):
    """(step, state, record) of the newest restorable checkpoint, or None if there is none.

    Corrupt or truncated checkpoints are logged with their path and skipped.
    """
    errors = []
    for step in reversed(self.steps()):
      try:
        return (step,) + self._restore(step, template)
      except Exception as e:  # orbax raises many types for damaged files
        path = self.directory / str(step)
        logging.warning("checkpoint %s is unreadable (%s: %s); moved to %s.corrupt, trying an "
                        "older one", path, type(e).__name__, e, path)
        errors.append(f"{path}: {type(e).__name__}: {e}")
        self._set_aside(path)
    if errors:
      raise CheckpointError("no restorable checkpoint in %s:\n  %s" % (self.directory, "\n  ".join(errors)))
    return None

  def _set_aside(self, path):
    # Keep the damaged files for inspection, out of the way of the step that will be
    # written again when training passes that step.
    if jax.process_index() == 0 and path.exists():
      target = path.with_name(path.name + ".corrupt")
      n = 1
      while target.exists():
        target = path.with_name(f"{path.name}.corrupt{n}")
        n += 1
      path.rename(target)
    self._mngr.reload()

  def _restore(self, step, template):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
    return out["state"], out.get("record")

  def close(self):
    self._mngr.close()


def load_variables(path) -> dict:
  """{'params': ..., 'batch_stats': ...} as numpy from a checkpoint, for `init_from`.

  `path` may be a workdir, its `checkpoints/` directory (newest step is used) or one
  step directory.  No template is needed: the tree is read as saved.
  """
  path = pathlib.Path(path).absolute()
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  if not path.exists():
    raise CheckpointError(f"{path}: no such checkpoint (init_from must be a workdir, its "
                          "checkpoints/ directory or a step directory)")
  step_dir = path
  if not (path / "state").exists():
    mngr = _manager(path, read_only=True)
    steps = sorted(mngr.all_steps())
    if not steps:
      raise CheckpointError(f"{path}: no checkpoint steps found")
    step_dir = path / str(steps[-1])
  try:
    tree = ocp.StandardCheckpointer().restore(step_dir / "state")
  except Exception as e:
    raise CheckpointError(f"{step_dir}: cannot read checkpoint ({type(e).__name__}: {e})") from e
  tree = jax.tree.map(np.asarray, tree)
  return {k: tree[k] for k in ("params", "batch_stats") if k in tree and tree[k] is not None}


# --- portable model bundles -----------------------------------------------------------
# A single .npz holding one or more named variable trees plus a JSON description, for
# models shipped inside the package (no orbax needed to read it; np.load without pickle).

_META_KEY = "__meta__"


def save_bundle(path, trees: dict, meta: dict, dtype=np.float16, int8=()) -> None:
  """Writes {name: variables} and `meta` to `path` (.npz); float leaves stored as `dtype`.

  `int8`: regexes over `name/leaf/path`; matching 2-D kernels are stored as int8 with
  one float32 scale per output column (symmetric, max-abs), a quarter of float32.
  float16 and int8 keep the bundled model small; `load_bundle` returns float32.
  """
  import re
  from astrotl import surgery
  quantized = [re.compile(p) for p in int8]
  arrays = {}
  for name, tree in trees.items():
    for leaf_path, value in surgery.flatten(tree).items():
      key = f"{name}/{leaf_path}"
      value = np.asarray(value)
      if value.ndim == 2 and value.dtype.kind == "f" and any(q.fullmatch(key) for q in quantized):
        scale = np.maximum(np.abs(value).max(axis=0), 1e-30) / 127.0
        arrays[key + _INT8] = np.round(value / scale).astype(np.int8)
        arrays[key + _SCALE] = scale.astype(np.float32)
        continue
      arrays[key] = value.astype(dtype) if value.dtype.kind == "f" else value
  arrays[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez_compressed(tmp, **arrays)
  tmp.replace(path)


_INT8, _SCALE = "@int8", "@scale"


def load_bundle(path) -> tuple[dict, dict]:
  """({name: variables as float32 numpy}, meta) from a `save_bundle` file.

  Read with astrotl.io.weights.read_npz (no pickle, array sizes checked against the
  file); anything that is not a well-formed bundle raises CheckpointError.
  """
  from astrotl import surgery
  from astrotl.io import weights
  path = pathlib.Path(path)
  try:
    arrays = weights.read_npz(path)
  except (weights.WeightsError, OSError) as e:
    raise CheckpointError(f"{path}: cannot read model bundle ({type(e).__name__}: {e})") from None
  if _META_KEY not in arrays:
    raise CheckpointError(f"{path}: not an astrotl model bundle (no {_META_KEY} entry)")
  try:
    meta = json.loads(arrays[_META_KEY].tobytes().decode())
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise CheckpointError(f"{path}: unreadable {_META_KEY} entry ({e})") from None
  if not isinstance(meta, dict):
    raise CheckpointError(f"{path}: {_META_KEY} is not a JSON object")
  flat = {}
  for k, v in arrays.items():
    if k == _META_KEY or k.endswith(_SCALE):
      continue
    if k.endswith(_INT8):
      base = k[:-len(_INT8)]
      scale = arrays.get(base + _SCALE)
      if scale is None or scale.shape != v.shape[-1:]:
        raise CheckpointError(f"{path}: int8 array {base} lacks a matching {_SCALE} array")
      flat[base] = v.astype(np.float32) * scale.astype(np.float32)
    else:
      flat[k] = v.astype(np.float32) if v.dtype.kind == "f" else v
  try:
    return surgery.unflatten(flat), meta
  except (TypeError, ValueError, KeyError, IndexError) as e:  # both "a/b" and "a/b/c"
    raise CheckpointError(f"{path}: inconsistent array names ({type(e).__name__}: {e})") from None
