"""Checkpoints (the only module that imports orbax).

A workdir holds `checkpoints/<step>/`, written by an orbax CheckpointManager:

    state/      the train state (params, batch_stats, opt_state, step, rng)
    best/       another tree of arrays kept with the state, when given (`train.fit`: the
                best variables so far, stored only while they are not the state's own)
    record/     a small JSON record (`train.fit`: best metrics, early-stopping counter,
                whether the run has stopped, config), the checkpoint format and the
                step's run fingerprint
    SHA256SUMS  sha256 of every other file of the step, as `sha256sum` writes them

and `checkpoints/RUN.json`, the fingerprint of the run that first wrote the workdir.  A
fingerprint (`fingerprint`) hashes what makes a run that run: its config (less the keys
in NOT_THE_RUN, which say how long and how often, not what), the seed, and the shapes of
the model's parameters.

Saves are synchronous.  Once orbax has committed a step on every process, process 0
hashes its files and moves SHA256SUMS into place atomically, so a step is complete
exactly when it has SHA256SUMS.  A process killed earlier leaves an unfinished temporary
directory, which orbax ignores, or a step without SHA256SUMS.

Restoring (`restore_latest`, `load_variables`, `load_record`) first checks every file
against SHA256SUMS, on each process.  In `restore_latest`, a checkpoint that fails the
check or does not restore is logged with the failing file, set aside as `<step>.corrupt`
and the next older one is tried; the other two raise CheckpointError instead.  A checkpoint
of an older astrotl (no SHA256SUMS, no format in its record) is restored unverified,
with a warning.  A step whose fingerprint differs from the workdir's run (a step folder
copied in from another run), or from the `config` `restore_latest` is given, is refused
with CheckpointError naming both runs and what differs in their configs; it is not set
aside, since nothing in it is damaged.
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from typing import Any

import jax
import numpy as np

_SUMS = "SHA256SUMS"
_RUN = "RUN.json"
_RUN_KEY = "astrotl_run"
_FORMAT_KEY = "astrotl_checkpoint_format"
# Config keys that change how long a run goes or how often it reports, not what it computes
# (a run stopped at step 40 and resumed with num_steps=80 is one run).
NOT_THE_RUN = ("num_steps", "progress", "log_every", "eval_every", "checkpoint_every",
               "keep_checkpoints")
_FORMAT = 2  # 2: SHA256SUMS, optional `best` item.  1 (no key): neither.


class CheckpointError(RuntimeError):
  pass


class ForeignStep(CheckpointError):
  """A checkpoint step of another run than the one restoring it."""


def fingerprint(config, params) -> dict:
  """{"id": 16 hex digits, "config": {...}} of a run: `config` (a dict or its JSON, e.g.
  the record's `config`; None for none) less NOT_THE_RUN, and the shapes of `params`."""
  if isinstance(config, str):
    config = json.loads(config)
  config = {k: v for k, v in (config or {}).items() if k not in NOT_THE_RUN}
  shapes = [[jax.tree_util.keystr(p), list(np.shape(v))]
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]]
  text = json.dumps({"config": config, "shapes": shapes}, sort_keys=True, default=str)
  return {"id": hashlib.sha256(text.encode()).hexdigest()[:16], "config": config}


def _differences(a: dict, b: dict, limit=4) -> str:
  """'learning_rate 0.01 vs 0.001, seed 1 vs 0' for the keys where two configs differ."""
  diff = [f"{k} {a.get(k, '(none)')!r:.40} vs {b.get(k, '(none)')!r:.40}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  more = f" and {len(diff) - limit} more" if len(diff) > limit else ""
  return ", ".join(diff[:limit]) + more if diff else "the parameter shapes"


def _orbax():
  """orbax.checkpoint, imported on first use: reading a model bundle (.npz) needs none of
  it, and its import is ~0.3 s of every scan's start."""
  import orbax.checkpoint  # pylint: disable=g-import-not-at-top
  return orbax.checkpoint


def _manager(directory, keep=None, read_only=False):
  ocp = _orbax()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                         create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def _abstract(tree):
  ocp = _orbax()
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  record: dict   # as saved ({} when none was)
  best: Any      # the `best` tree, or None when the step has none or no template was given


class Checkpointer:
  """Saves and restores train states under `workdir/checkpoints`."""

  def __init__(self, workdir, keep: int = 3):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self._mngr = _manager(self.directory, keep=keep)

  def steps(self) -> list[int]:
    self._mngr.reload()
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, record: dict | None = None, best=None) -> None:
    """Writes step `step` and returns once it is complete, checksums included.

    `best`: another tree of arrays to keep with the state (numpy leaves are written by
    process 0), read back by `restore_latest(..., best_template)`.
    """
    ocp = _orbax()
    run = fingerprint((record or {}).get("config"), getattr(state, "params", state))
    # The workdir's run is the one that writes its first step (again, if all were removed).
    if jax.process_index() == 0 and (not (self.directory / _RUN).exists() or not self.steps()):
      _write_text(self.directory / _RUN, json.dumps(run, indent=1))
    args = {"state": ocp.args.StandardSave(state),
            "record": ocp.args.JsonSave({**(record or {}), _FORMAT_KEY: _FORMAT,
                                         _RUN_KEY: run})}
    if best is not None:
      args["best"] = ocp.args.StandardSave(best)
    self._mngr.save(step, args=ocp.args.Composite(**args), force=True)
    self._mngr.wait_until_finished()
    # orbax has committed the step on every process: only now may its checksums appear.
    if jax.process_index() == 0:
      _write_sums(self.directory / str(step))
    ocp.multihost.sync_global_processes("astrotl_checkpoint_sums")

  def restore_latest(self, template, best_template=None, config=None) -> Restored | None:
    """The newest checkpoint that passes its checksums and restores, or None if there is none.

    `template`, `best_template`: trees of arrays with the shapes, dtypes and shardings to
    restore `state` and `best` to.  Damaged checkpoints are logged with the failing file
    and set aside.  A step of another run raises CheckpointError: one whose fingerprint
    differs from the workdir's RUN.json or, when `config` (this run's, as `save`'s record
    holds it) is given, from this run's.
    """
    errors = []
    want = None
    if config is not None:
      want = fingerprint(config, getattr(template, "params", template))
    elif (self.directory / _RUN).exists():
      try:
        want = json.loads((self.directory / _RUN).read_text())
      except (OSError, ValueError) as e:
        raise CheckpointError(f"{self.directory / _RUN}: unreadable ({e})") from None
    whose = "this run" if config is not None else f"the run in {self.directory / _RUN}"
    for step in reversed(self.steps()):
      path = self.directory / str(step)
      try:
        verify(path)
        run = _record(path).get(_RUN_KEY)
        if want is not None and isinstance(run, dict) and run.get("id") != want.get("id"):
          raise ForeignStep(
              f"{path} is a step of run {run.get('id')}, not of {whose} ({want.get('id')}): "
              f"they differ in {_differences(run.get('config') or {}, want.get('config') or {})}"
              "; move the step away, or resume in a new workdir")
        return self._restore(step, template, best_template)
      except ForeignStep:
        raise  # nothing in it is damaged: not set aside
      except Exception as e:  # orbax raises many types for damaged files
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

  def _restore(self, step, template, best_template):
    ocp = _orbax()
    args = {"state": ocp.args.StandardRestore(_abstract(template)),
            "record": ocp.args.JsonRestore()}
    if best_template is not None and (self.directory / str(step) / "best").is_dir():
      args["best"] = ocp.args.StandardRestore(_abstract(best_template))
    out = self._mngr.restore(step, args=ocp.args.Composite(**args))
    record = dict(out.get("record") or {})
    record.pop(_FORMAT_KEY, None)
    record.pop(_RUN_KEY, None)
    return Restored(step, out["state"], record, out.get("best"))

  def close(self):
    self._mngr.close()


def _sha256(path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _files(step_dir) -> dict:
  """{path relative to step_dir: path} of every file of a step but SHA256SUMS."""
  files = {f.relative_to(step_dir).as_posix(): f for f in step_dir.rglob("*") if f.is_file()}
  files.pop(_SUMS, None)
  files.pop(_SUMS + ".tmp", None)
  return files


def _write_sums(step_dir) -> None:
  text = "".join(f"{_sha256(f)}  {name}\n" for name, f in sorted(_files(step_dir).items()))
  _write_text(step_dir / _SUMS, text)


def _write_text(path, text) -> None:
  """Writes `text` to `path` atomically (a temporary file, fsync, rename)."""
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  tmp.replace(path)


def _read_sums(path) -> dict:
  sums = {}
  for line in path.read_text().splitlines():
    digest, sep, name = line.partition("  ")
    if not sep or len(digest) != 64:
      raise CheckpointError(f"{path}: malformed line {line!r}")
    sums[name] = digest
  return sums


def _record(step_dir) -> dict:
  """The JSON record of a step as saved ({} when it has none)."""
  if not (step_dir / "record").is_dir():
    return {}
  try:
    ocp = _orbax()
    record = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "record")
  except Exception as e:
    raise CheckpointError(f"{step_dir / 'record'}: unreadable ({type(e).__name__}: {e})") from e
  return dict(record or {})


def _format(step_dir) -> int:
  return int(_record(step_dir).get(_FORMAT_KEY, 1))


def verify(step_dir) -> bool:
  """Checks every file of a checkpoint step directory against its SHA256SUMS.

  True when they all match; False, with a warning, for a checkpoint of an older astrotl,
  which has no checksums.  Otherwise raises CheckpointError naming the first bad file.
  """
  step_dir = pathlib.Path(step_dir)
  sums = step_dir / _SUMS
  if not sums.exists():
    if _format(step_dir) >= 2:
      raise CheckpointError(f"{sums}: missing, so the save of this step never finished")
    logging.warning("checkpoint %s has no %s (written by an older astrotl); restoring it "
                    "unverified", step_dir, _SUMS)
    return False
  want, have = _read_sums(sums), _files(step_dir)
  missing, unlisted = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  if missing:
    raise CheckpointError(f"{step_dir / missing[0]}: missing (listed in {sums})")
  if unlisted:  # e.g. SHA256SUMS cut short
    raise CheckpointError(f"{step_dir / unlisted[0]}: not listed in {sums}")
  for name, digest in sorted(want.items()):
    if _sha256(step_dir / name) != digest:
      raise CheckpointError(f"{step_dir / name}: sha256 differs from {sums}; the file is damaged")
  return True


def _step_dir(path) -> pathlib.Path:
  """The step directory a workdir, its checkpoints/ directory (newest step) or a step
  directory names."""
  path = pathlib.Path(path).absolute()
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  if not path.exists():
    raise CheckpointError(f"{path}: no such checkpoint (init_from must be a workdir, its "
                          "checkpoints/ directory or a step directory)")
  if (path / "state").exists():
    return path
  mngr = _manager(path, read_only=True)
  steps = sorted(mngr.all_steps())
  if not steps:
    raise CheckpointError(f"{path}: no checkpoint steps found")
  return path / str(steps[-1])


def load_variables(path) -> dict:
  """{'params': ..., 'batch_stats': ...} as numpy from a checkpoint, for `init_from`.

  `path` may be a workdir, its `checkpoints/` directory (newest step is used) or one
  step directory.  No template is needed: the tree is read as saved.  The files are
  checked against the step's SHA256SUMS first; a mismatch raises CheckpointError naming
  the file (no fallback to an older step: `init_from` names what it wants).
  """
  step_dir = _step_dir(path)
  verify(step_dir)
  ocp = _orbax()
  checkpointer = ocp.StandardCheckpointer()
  try:
    # Numpy targets: the arrays come back on the host whatever devices wrote them (without
    # a target orbax insists on the saving topology, e.g. 8 GPUs).
    meta = checkpointer.metadata(step_dir / "state")
    meta = getattr(meta, "item_metadata", meta)
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)
    tree = checkpointer.restore(step_dir / "state", target)
  except Exception as e:
    raise CheckpointError(f"{step_dir}: cannot read checkpoint ({type(e).__name__}: {e})") from e
  tree = jax.tree.map(np.asarray, tree)
  return {k: tree[k] for k in ("params", "batch_stats") if k in tree and tree[k] is not None}


def load_record(path) -> dict:
  """The JSON record of the checkpoint `load_variables(path)` reads (`train.fit`: best
  metrics and `config`, the run's config as JSON); {} when the step has none."""
  step_dir = _step_dir(path)
  verify(step_dir)
  record = _record(step_dir)
  record.pop(_FORMAT_KEY, None)
  record.pop(_RUN_KEY, None)
  return record


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

  Read with astrotl.io.weights.read_npz (no pickle, array sizes and the number of arrays
  checked against limits before reading); the description's size and nesting are
  checked before it is decoded (`astrotl.schema.decode_meta`).  Anything that is not a
  well-formed bundle raises CheckpointError; what the description and arrays say is
  checked by `astrotl.validate.check_bundle` (`bundle.Model` calls it).
  """
  from astrotl import schema, surgery
  from astrotl.io import weights
  path = pathlib.Path(path)
  try:
    # The description's member is capped before it is read (header included).
    arrays = weights.read_npz(path, limits={_META_KEY: schema.MAX_META_BYTES + 4096})
  except (weights.WeightsError, OSError) as e:
    raise CheckpointError(f"{path}: cannot read model bundle ({type(e).__name__}: {e})") from None
  if _META_KEY not in arrays:
    raise CheckpointError(f"{path}: not an astrotl model bundle (no {_META_KEY} entry)")
  try:
    meta = schema.decode_meta(arrays[_META_KEY].tobytes(), path)
  except schema.BundleError as e:
    raise CheckpointError(str(e)) from None
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
