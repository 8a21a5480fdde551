"""Training: train state, one jit-compiled data-parallel step, and the `fit` loop.

`fit(config, workdir, data)` trains a registry model on numpy arrays with an optax
optimizer, writing `metrics.jsonl` and orbax checkpoints into `workdir`; re-running it
with the same workdir resumes from the newest checkpoint that passes its checksums and
continues with exactly the batches an uninterrupted run would have seen (batch order is
a pure function of seed and step).  Besides the train state, each checkpoint holds what
else decides the run's future: the best metrics and variables, the early-stopping count
and whether the run has stopped (see `astrotl.checkpoint`), so a resumed run returns
bit for bit what an uninterrupted one does.  Transfer learning is configuration
(`config.transfer`): init_from (a checkpoint, a model bundle or a bundled model), skip,
reinit, zero_init, freeze, n_blocks, lr_decay, from_scratch.
"""

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from astrotl import checkpoint, losses, metrics, models, parallel, surgery


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  @property
  def variables(self):
    v = {"params": self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v


def default_config() -> ml_collections.ConfigDict:
  """Every key `fit` reads, with defaults.  Experiment configs override a copy."""
  c = ml_collections.ConfigDict()
  c.model = "cnn1d"
  c.model_config = ml_collections.ConfigDict()
  c.loss = "xent"                 # xent | logcosh | mse
  c.class_weights = ml_collections.config_dict.placeholder(tuple)
  c.optimizer = "adam"            # adam | adamw | sgd
  c.learning_rate = 1e-3
  c.momentum = 0.9
  c.weight_decay = 0.0
  c.schedule = "constant"         # constant | cosine
  c.warmup_steps = 0
  c.batch_size = 64
  c.num_steps = 1000
  c.log_every = 10
  c.eval_every = 100
  c.eval_batch_size = 256
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  c.seed = 0
  c.early_stopping_patience = 0   # evaluations without improvement; 0 = off
  c.early_stopping_metric = "val_loss"
  c.progress = True
  c.transfer = ml_collections.ConfigDict()
  c.transfer.init_from = ""       # workdir / step dir, bundle (x.npz[:net]), wd_stage1, ...
  c.transfer.skip = ("head/.*",)  # not loaded from the pretrained tree
  c.transfer.reinit = ""          # loaded, then re-initialised anyway
  c.transfer.zero_init = "head/(.*/)?(kernel|bias)"  # a new head starts at zero
  c.transfer.freeze = ""          # frozen params (and their BatchNorm statistics)
  c.transfer.n_blocks = ml_collections.config_dict.placeholder(int)  # Zoobot: top blocks trained
  c.transfer.lr_decay = ml_collections.config_dict.placeholder(float)  # Zoobot: per-block lr decay
  c.transfer.from_scratch = False
  return c


def merged_config(overrides) -> ml_collections.ConfigDict:
  """default_config() updated with `overrides` (ConfigDict or dict, nested allowed)."""
  def plain(x):
    if isinstance(x, ml_collections.ConfigDict):
      x = x.to_dict()
    return {k: plain(v) for k, v in x.items()} if isinstance(x, dict) else x

  c = default_config()
  c.update(plain(overrides))
  return c


def build_model(config):
  return models.get(config.model, **dict(config.model_config))


def init_variables(model, sample_x, seed: int) -> dict:
  """Fresh {'params', 'batch_stats'} as numpy for one example batch `sample_x`."""
  rngs = {"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 1)}
  v = jax.jit(lambda x: model.init(rngs, x, train=False))(jnp.asarray(sample_x))
  return {"params": jax.tree.map(np.asarray, v["params"]),
          "batch_stats": jax.tree.map(np.asarray, v.get("batch_stats", {}))}


def transfer_variables(config, fresh: dict, pretrained: dict | None = None) -> dict:
  """Applies the transfer recipe in `config.transfer` to fresh variables."""
  t = config.transfer
  if t.from_scratch or (pretrained is None and not t.init_from):
    return fresh
  if pretrained is None:
    pretrained = load_pretrained(t.init_from)
  out = {}
  for col in ("params", "batch_stats"):
    if not fresh.get(col):
      continue
    v = surgery.merge(pretrained.get(col, {}), fresh[col], skip=tuple(t.skip or ()))
    if t.reinit:
      v = surgery.reinit(v, fresh[col], t.reinit)
    if col == "params" and t.zero_init:
      v = surgery.zeros(v, t.zero_init)
    out[col] = jax.tree.map(np.asarray, v)
  return out


def load_pretrained(spec) -> dict:
  """Variables for `transfer.init_from`: an orbax checkpoint (a workdir, its checkpoints/
  or a step directory), or a model bundle ('x.npz', 'x.npz:stage1'), a bundled model
  ('wd_stage1') or 'torch:7_cnn_model.pt' (one network, see `sources.load_source`)."""
  from astrotl import sources  # on first use: a source needs bundle, training does not
  if sources.is_model(spec):
    return sources.load_source(spec).primary.variables
  return checkpoint.load_variables(spec)  # an error names a missing path as a checkpoint


def frozen_pattern(config, params):
  """The union of `transfer.freeze` and Zoobot's n_blocks, or None."""
  t = config.transfer
  if t.from_scratch:
    return None
  pats = [p for p in (t.freeze, surgery.zoobot_rules(params, n_blocks=t.n_blocks)[0]) if p]
  return "|".join(f"(?:{p})" for p in pats) if pats else None


def make_optimizer(config, params) -> optax.GradientTransformation:
  lr = config.learning_rate
  if config.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, lr, max(config.warmup_steps, 1), config.num_steps)
  elif config.warmup_steps:
    lr = optax.linear_schedule(0.0, lr, config.warmup_steps)
  if config.optimizer == "adam":
    tx = optax.adam(lr)
  elif config.optimizer == "adamw":
    tx = optax.adamw(lr, weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    tx = optax.sgd(lr, momentum=config.momentum or None)
  else:
    raise ValueError(f"config.optimizer={config.optimizer!r}: use adam, adamw or sgd")
  t = config.transfer
  if t.lr_decay is not None and not t.from_scratch:
    _, rules = surgery.zoobot_rules(params, lr_decay=t.lr_decay)
    tx = optax.chain(tx, surgery.lr_multipliers(params, rules))
  frozen = frozen_pattern(config, params)
  if frozen:
    tx = surgery.freeze(tx, params, frozen)
  return tx


def _loss_fn(name, class_weights):
  if name not in losses.LOSSES:
    raise ValueError(f"config.loss={name!r}: use one of {sorted(losses.LOSSES)}")
  fn = losses.LOSSES[name]
  if name == "xent":
    return lambda out, y: fn(out, y, class_weights)

  def regression(out, y):
    per = fn(out[..., 0] if out.ndim == 2 and out.shape[-1] == 1 else out, y)
    return per.mean(-1) if per.ndim == 2 else per  # several targets: their mean per example

  return regression


def frozen_blocks(params, frozen_re) -> tuple:
  """Top-level blocks whose every parameter is frozen."""
  if not frozen_re:
    return ()
  out = []
  for block, sub in params.items():
    leaves = [f"{block}/{n}" for n in surgery.names(sub)] if isinstance(sub, dict) else [block]
    if leaves and all(surgery._matches(n, frozen_re) for n in leaves):
      out.append(block)
  return tuple(out)


def _with_frozen_blocks(model, params, frozen_re):
  # A frozen block must compute in training what it computes at test time: BatchNorm
  # on its running statistics (not the batch's), no dropout.
  blocks = frozen_blocks(params, frozen_re)
  if blocks and hasattr(model, "frozen"):
    return model.clone(frozen=tuple(sorted(set(model.frozen) | set(blocks))))
  return model


def make_train_step(model, tx, mesh, loss="xent", class_weights=None, frozen=None, augment=None):
  """jit-compiled (state, batch) -> (state, metrics); batch = {'x', 'y', 'valid'} on `data`.

  `augment(rng, x) -> x`, when given, transforms batch['x'] inside the step with a key
  derived from the step's rng (e.g. `astrotl.preprocess.images.augmenter()`).
  Blocks whose parameters all match `frozen` run in inference mode (models' `frozen`
  field), and every frozen BatchNorm statistic is kept as it was.
  """
  loss_fn = _loss_fn(loss, class_weights)
  frozen_re = surgery._compile(frozen or ())

  def keep_frozen_stats(old, new):
    return jax.tree_util.tree_map_with_path(
        lambda p, o, n: o if surgery._matches(surgery.path_name(p), frozen_re) else n, old, new)

  def step(state, batch):
    net = _with_frozen_blocks(model, state.params, frozen_re)
    rng = jax.random.fold_in(state.rng, state.step)
    valid = batch["valid"].astype(jnp.float32)
    x = batch["x"] if augment is None else augment(jax.random.fold_in(rng, 1), batch["x"])

    def objective(params):
      variables = {"params": params}
      mutable = []
      if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
        mutable = ["batch_stats"]
      out, updates = net.apply(variables, x, train=True, mutable=mutable, rngs={"dropout": rng})
      per_example = loss_fn(out.astype(jnp.float32), batch["y"])
      value = jnp.sum(per_example * valid) / jnp.maximum(jnp.sum(valid), 1.0)
      return value, (out, updates.get("batch_stats", state.batch_stats))

    (value, (out, new_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if frozen and state.batch_stats:
      new_stats = keep_frozen_stats(state.batch_stats, new_stats)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    m = {"loss": value, "grad_norm": optax.tree.norm(grads)}
    if loss == "xent":
      hit = (jnp.argmax(out, -1) == batch["y"]).astype(jnp.float32)
      m["accuracy"] = jnp.sum(hit * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    return new_state, m

  repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)


def make_predict_fn(model, mesh):
  """jit-compiled (variables, x) -> model outputs, x sharded on `data`."""
  repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(lambda v, x: model.apply(v, x, train=False), in_shardings=(repl, data),
                 out_shardings=data)


def predict(model, variables, x, mesh=None, batch_size: int = 256, predict_fn=None) -> np.ndarray:
  """Model outputs for every row of numpy `x` (same on every process)."""
  mesh = mesh or parallel.make_mesh()
  n_dev = mesh.devices.size
  batch_size = max(n_dev, batch_size // n_dev * n_dev)
  predict_fn = predict_fn or make_predict_fn(model, mesh)
  variables = parallel.replicate(variables, mesh)
  rows = parallel.process_rows(batch_size, mesh)
  outs = []
  for start in range(0, len(x), batch_size):
    chunk, _ = parallel.pad_rows({"x": x[start:start + batch_size]}, batch_size)
    xb = parallel.shard_batch(chunk["x"][rows], mesh, batch_size)
    outs.append(parallel.to_host(predict_fn(variables, xb))[:min(batch_size, len(x) - start)])
  return np.concatenate(outs) if outs else np.zeros((0,))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Indices of the global batch for `step`: epoch-wise permutations, a pure function of
  (n, batch_size, step, seed), so resumed and multi-process runs see the same batches."""
  steps_per_epoch = max(1, n // batch_size)
  epoch, i = divmod(step, steps_per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[(i * batch_size + np.arange(batch_size)) % n]


def _evaluate(model, variables, split, config, mesh, predict_fn):
  out = predict(model, variables, split["x"], mesh, config.eval_batch_size, predict_fn)
  y = np.asarray(split["y"])
  loss = np.asarray(_loss_fn(config.loss, config.class_weights)(jnp.asarray(out), jnp.asarray(y)))
  result = {"val_loss": float(np.mean(loss))}
  if config.loss == "xent":
    result["val_accuracy"] = metrics.accuracy(y, out.argmax(-1))
  else:
    pred = out.reshape(len(y), -1)[:, 0] if y.ndim == 1 else out.reshape(y.shape)
    result["val_mae"] = metrics.regression(y, pred)["mae"]  # over every target
  return result


def _resume_metrics(path, step, is_main) -> list:
  """Records of an earlier run up to the restored `step`.  Lines a killed run wrote after
  its last checkpoint are dropped from the file, since those steps will run again."""
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by the kill
      continue
    if r.get("step", 0) <= step:
      records.append(r)
  if is_main:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
  return records


def _num_rows(split) -> int:
  return len(split["x"]) if isinstance(split, dict) else len(split)


def _take(split, idx) -> dict:
  """Rows `idx` of a split: a dict of arrays, or an object with `take(idx)` that reads
  them on demand (e.g. `astrotl.datasets.Rows` over an array_record dataset), so each
  process reads only its own rows and a big dataset never has to fit in memory."""
  if isinstance(split, dict):
    return {"x": np.asarray(split["x"][idx]), "y": np.asarray(split["y"][idx])}
  return split.take(idx)


@dataclasses.dataclass
class _Progress:
  """What decides a run's future besides the train state; every checkpoint holds it."""
  best: dict = dataclasses.field(default_factory=lambda: {"step": -1})  # metrics, step
  best_variables: Any = None  # numpy variables at best['step'] (None: no best yet)
  bad_evals: int = 0          # evaluations since the last improvement
  stopped: bool = False       # early stopping has ended the run

  def update(self, ev: dict, step: int, variables, config) -> None:
    """Takes in the evaluation `ev` of `variables` at `step`."""
    monitor = config.early_stopping_metric
    sign = 1.0 if monitor.endswith("loss") or monitor.endswith("mae") else -1.0
    if monitor in ev and (self.best["step"] < 0 or sign * ev[monitor] < sign * self.best[monitor]):
      self.best = {"step": step, **ev}
      self.best_variables = jax.tree.map(parallel.to_host, variables)
      self.bad_evals = 0
    else:
      self.bad_evals += 1
      patience = config.early_stopping_patience
      self.stopped = bool(patience) and self.bad_evals >= patience


def _save(ckpt, step, state, progress, config) -> None:
  record = {"best": progress.best, "bad_evals": progress.bad_evals,
            "stopped": progress.stopped, "config": config.to_json()}
  # The best variables go in as a second tree only while they differ from the state's,
  # so each step directory is complete on its own (the older-step fallback and
  # keep_checkpoints need no cross-step references) at the cost of at most one copy of
  # params + batch_stats, a third of an Adam state.
  best = progress.best_variables if progress.best["step"] not in (-1, step) else None
  ckpt.save(step, state, record, best=best)


def _resumed_progress(restored) -> _Progress:
  record, step = restored.record, restored.step
  best = record.get("best", {"step": -1})
  if best["step"] == step:
    best_variables = restored.state.variables
  else:
    best_variables = restored.best
  if "bad_evals" not in record:
    logging.warning("checkpoint of step %d was written by an older astrotl: early stopping "
                    "counts again from 0, and best_variables will be the last ones unless "
                    "validation improves", step)
  if best_variables is not None:
    best_variables = jax.tree.map(parallel.to_host, best_variables)
  return _Progress(best, best_variables, record.get("bad_evals", 0), record.get("stopped", False))


@dataclasses.dataclass
class FitResult:
  state: TrainState
  history: list            # dicts written to metrics.jsonl
  best: dict               # best validation metrics and their step
  best_variables: dict     # numpy variables at the best validation step (or the last step)
  seconds: float


def fit(config, workdir, data: dict, pretrained: dict | None = None, mesh=None,
        augment=None) -> FitResult:
  """Trains `config.model` on `data['train']`, validating on `data['validation']`.

  A split is {'x', 'y'} numpy arrays, or (train only) an object with `__len__` and
  `take(indices) -> {'x', 'y'}` such as `astrotl.datasets.Rows`.  Resumes from `workdir`
  if it has checkpoints and returns what an uninterrupted run returns (seconds aside):
  a checkpoint holds the train state, the best metrics and variables, the early-stopping
  counter and whether the run has stopped; the history up to the checkpoint is read back
  from metrics.jsonl; the data position needs no saving, because the batch of step s is
  a pure function of (seed, s).  `augment(rng, x)` is applied to training batches inside
  the jit-compiled step.
  """
  config = merged_config(config)
  mesh = mesh or parallel.make_mesh()
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  train = data["train"]
  n_train = _num_rows(train)
  if n_train == 0:
    raise ValueError("fit: the training split is empty")
  if config.batch_size % mesh.devices.size:
    raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of the "
                     f"{mesh.devices.size} devices")

  model = build_model(config)
  fresh = init_variables(model, _take(train, np.arange(1))["x"], config.seed)
  variables = transfer_variables(config, fresh, pretrained)
  tx = make_optimizer(config, variables["params"])
  frozen = frozen_pattern(config, variables["params"])
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                     batch_stats=variables.get("batch_stats") or {},
                     opt_state=tx.init(variables["params"]),
                     rng=jax.random.PRNGKey(config.seed + 2))
  state = parallel.replicate(state, mesh)

  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  # config: a step of this workdir written under another config is refused, naming what changed.
  restored = ckpt.restore_latest(state, best_template=state.variables, config=config.to_json())
  progress = _Progress()
  if restored is not None:
    state = restored.state
    progress = _resumed_progress(restored)
    logging.info("resumed from %s at step %d", ckpt.directory / str(restored.step), restored.step)

  step_fn = make_train_step(model, tx, mesh, config.loss, config.class_weights, frozen, augment)
  predict_fn = make_predict_fn(model, mesh)
  rows = parallel.process_rows(config.batch_size, mesh)
  metrics_path = workdir / "metrics.jsonl"
  history = _resume_metrics(metrics_path, int(state.step), is_main)
  t0 = time.time()
  first = int(state.step)

  bar = None
  if config.progress and is_main:
    from tqdm import tqdm
    bar = tqdm(total=config.num_steps, initial=first, unit="step", dynamic_ncols=True)

  def log(record):
    history.append(record)
    if is_main:
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  for step in range(first, config.num_steps):
    if progress.stopped:
      break
    idx = batch_indices(n_train, config.batch_size, step, config.seed)[rows]
    local = dict(_take(train, idx), valid=np.ones(len(idx), bool))
    state, m = step_fn(state, parallel.shard_batch(local, mesh, config.batch_size))
    done = step + 1
    if done % config.log_every == 0 or done == config.num_steps:
      record = {"step": done, **{k: float(v) for k, v in m.items()},
                "seconds": time.time() - t0}
      log(record)
      if bar is not None:
        bar.set_postfix(loss=f"{record['loss']:.4f}")
    if "validation" in data and (done % config.eval_every == 0 or done == config.num_steps):
      ev = _evaluate(model, state.variables, data["validation"], config, mesh, predict_fn)
      log({"step": done, **ev, "seconds": time.time() - t0})
      progress.update(ev, done, state.variables, config)
    if done % config.checkpoint_every == 0 or done == config.num_steps or progress.stopped:
      _save(ckpt, done, state, progress, config)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  ckpt.close()
  if progress.stopped:
    logging.info("early stopping at step %d (best %s at %d)", int(state.step),
                 config.early_stopping_metric, progress.best["step"])
  best_variables = progress.best_variables
  if best_variables is None:
    best_variables = jax.tree.map(parallel.to_host, state.variables)
  return FitResult(state, history, progress.best, best_variables, time.time() - t0)
