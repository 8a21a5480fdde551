"""Fine-tune a trained network on your own labels: `astrotl.finetune(...)` or
`python -m astrotl.finetune --catalog=... --source=... --out=...`.

    import astrotl
    model = astrotl.finetune("labels.csv", source="wd_stage1", out="model.npz",
                             label_column="subclass", label_transform="letter",
                             classes="A,F,G,K,M", freeze="block_.*")

The source is a bundled model (`wd_stage1`, `upsilont`, `wd_two_stage:stage2`), a model
bundle (`x.npz`, or `x.npz:stage1` for one of its networks), an orbax training workdir
(`train.fit`, `python -m astrotl.main`), or Tan et al.'s PyTorch stage 1
(`torch:7_cnn_model.pt`), as `astrotl.sources` resolves them.  The catalog is read with
the scan's readers and the source's preprocessing and split by object and class
(`astrotl.labelled`).  Training is `train.fit` with the transfer recipe as
configuration: a new head for the new classes (zero-initialised), `freeze=` and `skip=`
regexes over parameter names, Zoobot's `n_blocks` and `lr_decay`, and `from_scratch=True`
for the baseline.  The best weights on the validation split are kept, a temperature is
fitted on that split, and accuracy and per-class completeness / purity are printed for
validation and test.

The output is a model bundle that `astrotl.load_model` and `python -m astrotl.scan
--model=` take as they are: class names, the source's input spec, the temperature, and
in `about` the command, the training data (catalog, counts per class and split,
unreadable files) and the evaluation.  The returned Model is the bundle read back.
"""

import datetime
import json
import math
import os
import pathlib
import sys
import tempfile
import types

import numpy as np

from astrotl import cli

PROG = "astrotl.finetune"


# --- fine-tuning --------------------------------------------------------------------------

def finetune(catalog, source="wd_stage1", out="model.npz", *, root=None, label_column=None,
             label_transform=None, classes=None, path_column=None, group_column=None,
             split=(0.7, 0.15, 0.15), seed=0, steps=200, batch_size=32, learning_rate=1e-3,
             freeze="", skip=("head/.*",), n_blocks=None, lr_decay=None, from_scratch=False,
             balanced=False, input=None, config=None, workdir=None, allow_outside_root=False,
             progress=True, command=None, log=print):
  """Fine-tunes `source` on the labelled `catalog`, writes the bundle `out`, returns its Model.

  catalog, root, label_column, label_transform, classes, path_column, group_column, split,
    seed, allow_outside_root: the labelled data (`astrotl.labelled.load`).
  steps, batch_size, learning_rate: the training run (`train.fit`); `config`: a dict of
    any other `train.default_config()` keys.
  freeze: regex of parameter names not trained (with their BatchNorm statistics), e.g.
    'block_.*' (the convolutional trunk); skip: names not taken from the source (the
    old head); n_blocks, lr_decay: Zoobot's knobs; from_scratch: same model and data, no
    transfer (the baseline).  balanced: class weights inverse to the training counts.
    Every regex (and the label transform's name) is checked before anything is read: a
    ValueError naming the flag, the pattern and re's message (`check_patterns`).
  input: an input spec replacing the source's.  workdir: keep checkpoints and
    metrics.jsonl there (re-running resumes); default a temporary folder.
  command: the command to record in the bundle (the CLI passes its own).
  The evaluation (validation and test accuracy, per-class completeness / purity,
  confusion) is printed and kept in the returned model's `meta["about"]["evaluation"]`.
  """
  arguments = {k: v for k, v in locals().items() if k not in ("log", "command")}
  check_patterns(freeze, skip, config, label_transform)  # before anything is read
  from astrotl import bundle, labelled, parallel, sources, train
  t0 = datetime.datetime.now(datetime.timezone.utc)
  src = sources.load_source(source, input)
  net = src.primary
  kind = src.input.get("type", "spectrum")
  data = labelled.load(catalog, kind, src.input, root=root, label_column=label_column,
                       label_transform=label_transform, classes=classes,
                       path_column=path_column, group_column=group_column, split=split,
                       seed=seed, allow_outside_root=allow_outside_root, progress=progress,
                       log=log)
  check_classes(data, split)  # before training: a 1-class model would score accuracy 1
  spec = dict(src.input)
  if kind == "lightcurve":
    spec = _standardise_features(data, spec)
  splits, classes = data.splits, data.classes

  c = _train_config(net, classes, splits["train"]["y"], steps, batch_size, learning_rate,
                    seed, freeze, skip, n_blocks, lr_decay, from_scratch, balanced, progress,
                    config)
  fit_data = {"train": {"x": splits["train"]["x"], "y": splits["train"]["y"]}}
  if len(splits["validation"]["y"]):
    fit_data["validation"] = {"x": splits["validation"]["x"], "y": splits["validation"]["y"]}
  with tempfile.TemporaryDirectory(prefix="astrotl-finetune-") as tmp:
    result = train.fit(c, workdir or tmp, fit_data,
                       pretrained=None if from_scratch else net.variables)
  variables = result.best_variables

  # Calibrate and evaluate the weights as the bundle stores them.
  frozen = train.frozen_pattern(c, variables["params"])
  dtype = _storage_dtype(variables, frozen)
  variables = _stored(variables, dtype)
  model = train.build_model(c)
  mesh = parallel.make_mesh()
  predict_fn = train.make_predict_fn(model, mesh)  # one compilation for both splits
  logits = {s: train.predict(model, variables, splits[s]["x"], mesh, predict_fn=predict_fn)
            if len(splits[s]["y"]) else None for s in ("validation", "test")}
  temperature = 1.0
  if logits["validation"] is not None:
    from astrotl import metrics
    temperature = metrics.fit_temperature(logits["validation"], splits["validation"]["y"])
  evaluation = {s: evaluate(logits[s], splits[s]["y"], classes, temperature)
                for s in ("validation", "test")}
  evaluation.update(temperature=temperature, best=result.best)

  name = pathlib.Path(out).stem
  meta = {"format": bundle.FORMAT, "name": name, "input": spec,
          "networks": {"main": {"model": c.model, "config": dict(c.model_config),
                                "output": "classes", "classes": classes,
                                "temperature": temperature}},
          "rule": None,
          "about": _about(arguments, command, src, net, data, c, evaluation, result, t0)}
  bundle.Model({"main": variables}, meta, source=out).save(out, dtype=dtype)
  if log:
    for s in ("validation", "test"):
      log(report(s, evaluation[s], classes))
    log(f"temperature {temperature:.3g}; wrote {out}")
  return bundle.load_model(out)


def check_classes(data, split):
  """Refuses a labelled catalog a classifier cannot be fitted and calibrated on, with a
  one-line ValueError: fewer than two classes with training examples, a class without
  any, or (when the split has a validation part) a class missing from validation, where
  the temperature and the best step are chosen."""
  counts = data.counts()
  train = [c for c in data.classes if counts["train"][c]]
  total = {c: sum(counts[s][c] for s in counts) for c in data.classes}
  if len(train) < 2:
    raise ValueError(f"{data.catalog}: {len(train)} class{'es' if len(train) != 1 else ''} "
                     f"with training examples ({', '.join(train) or 'none'}); a classifier "
                     "needs at least two: label more classes (check --label_column, "
                     "--label_transform and --classes)")
  for c in data.classes:
    if not counts["train"][c]:
      raise ValueError(f"{data.catalog}: class {c!r} has no training examples ({total[c]} in "
                       "all); label more of it or leave it out of --classes")
  if len(split) > 1 and float(split[1]) > 0:
    for c in data.classes:
      if not counts["validation"][c]:
        raise ValueError(f"{data.catalog}: class {c!r} has no examples in the validation "
                         f"split ({total[c]} in all; a class needs 3 or more objects, one "
                         f"per split): label more {c} objects, leave it out of --classes, "
                         "or give --split no validation part (e.g. 0.85,0,0.15)")


def check_patterns(freeze="", skip=(), config=None, label_transform=None):
  """Compiles every regex of the recipe (freeze, each skip, and those in `config`'s
  transfer) and checks the label transform's name, so that a typo fails at once, not
  after the spectra are read: ValueError naming the flag, the pattern and re's message."""
  import re
  transfer = (config or {}).get("transfer") or {}
  patterns = [("--freeze", freeze)] + [("--skip", p) for p in skip or ()]
  patterns += [("config transfer.freeze", transfer.get("freeze"))]
  patterns += [("config transfer.skip", p) for p in transfer.get("skip") or ()]
  for flag, pattern in patterns:
    if not pattern:
      continue
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise ValueError(f"{flag}={pattern!r}: not a regular expression ({e})") from None
  if isinstance(label_transform, str) and label_transform:
    from astrotl import labelled
    if label_transform not in labelled.TRANSFORMS:
      raise ValueError(f"--label_transform={label_transform!r}: use one of "
                       f"{', '.join(labelled.TRANSFORMS)} (or, from Python, a function)")


def _train_config(net, classes, y_train, steps, batch_size, learning_rate, seed, freeze, skip,
                  n_blocks, lr_decay, from_scratch, balanced, progress, config):
  import jax
  from astrotl import losses, train
  n_dev = jax.device_count()
  c = train.default_config()
  c.model = net.meta["model"]
  c.model_config = dict(net.meta.get("config", {}), num_classes=len(classes))
  c.num_steps = int(steps)
  c.batch_size = int(math.ceil(batch_size / n_dev) * n_dev)  # fit needs whole per-device rows
  c.learning_rate = float(learning_rate)
  c.seed = int(seed)
  c.eval_every = c.log_every = max(1, c.num_steps // 10)
  c.checkpoint_every = c.num_steps
  c.keep_checkpoints = 1
  c.progress = bool(progress)
  c.transfer.skip = tuple(skip or ())
  c.transfer.freeze = freeze or ""
  c.transfer.n_blocks = n_blocks
  c.transfer.lr_decay = lr_decay
  c.transfer.from_scratch = bool(from_scratch)
  if balanced:
    c.class_weights = losses.balanced_weights(y_train, len(classes))
  if config:
    c.update(dict(config))
  return c


def _standardise_features(data, spec):
  """Light curves: UPSILoN-T's feature preprocessing re-fitted on the training split (as
  Kim et al. 2021 transfer to a new survey), applied to every split; returns the input
  spec the new bundle needs."""
  from astrotl.preprocess import features

  def named(x):  # labelled gives the features in FEATURES order
    return {k: x[:, i] for i, k in enumerate(features.FEATURES)}

  pre = features.fit_preprocess(named(data.splits["train"]["x"]), spec["preprocess"])
  pre = {k: v for k, v in pre.items() if k != "n_final"}
  pre["classes"] = list(data.classes)
  for d in data.splits.values():
    d["x"] = (features.upsilont_inputs(named(d["x"]), pre).astype(np.float32) if len(d["y"])
              else np.zeros((0, len(features.FEATURES)), np.float32))
  return dict(spec, preprocess=pre)


def _storage_dtype(variables, frozen):
  """float16, as the bundled models are stored, unless a frozen leaf would change in it
  (e.g. a frozen dense kernel the source held as int8): frozen must stay frozen."""
  from astrotl import surgery
  if not frozen:
    return np.float16
  for col in ("params", "batch_stats"):
    tree = variables.get(col) or {}
    is_frozen = surgery.flatten(surgery.mask(tree, frozen))
    for name, v in surgery.flatten(tree).items():
      v = np.asarray(v)
      if is_frozen[name] and v.dtype.kind == "f" and \
          not np.array_equal(v.astype(np.float16).astype(v.dtype), v):
        return np.float32
  return np.float16


def _stored(variables, dtype):
  import jax
  return jax.tree.map(lambda v: np.asarray(v).astype(dtype).astype(np.float32)
                      if np.asarray(v).dtype.kind == "f" else np.asarray(v), variables)


def evaluate(logits, y, classes, temperature=1.0) -> dict:
  """Accuracy, per-class completeness / purity / support and the confusion matrix
  (rows true, columns predicted) of calibrated predictions; {'n': 0} without examples."""
  from astrotl import metrics
  if logits is None or not len(y):
    return {"n": 0}
  pred = metrics.softmax(logits, temperature).argmax(-1)
  pc = metrics.per_class(y, pred, len(classes))
  return {"n": int(len(y)), "accuracy": metrics.accuracy(y, pred),
          "nll": metrics.nll(logits, y, temperature),
          "per_class": {c: {"completeness": _num(pc["completeness"][i]),
                            "purity": _num(pc["purity"][i]), "support": int(pc["support"][i])}
                        for i, c in enumerate(classes)},
          "confusion": metrics.confusion(y, pred, len(classes)).tolist()}


def _num(v):
  return None if not np.isfinite(v) else float(v)


def report(split, ev, classes) -> str:
  """A printable table of `evaluate`'s result."""
  if not ev.get("n"):
    return f"{split}: no examples"
  lines = [f"{split}: accuracy {ev['accuracy']:.3f} on {ev['n']} examples",
           f"  {'class':<10} {'completeness':>12} {'purity':>8} {'n':>6}"]
  for c in classes:
    pc = ev["per_class"][c]
    fmt = [("-" if pc[k] is None else f"{pc[k]:.3f}") for k in ("completeness", "purity")]
    lines.append(f"  {c:<10} {fmt[0]:>12} {fmt[1]:>8} {pc['support']:>6}")
  return "\n".join(lines)


def _about(arguments, command, src, net, data, c, evaluation, result, t0):
  import astrotl
  args = {k: _plain(v) for k, v in arguments.items()}
  if command is None:
    shown = {k: v for k, v in args.items() if v not in (None, "", (), [], False) or k == "source"}
    command = "astrotl.finetune(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
  return {
      "trained_by": command,
      "arguments": args,
      "source": {"spec": os.fspath(arguments["source"]), "model": src.name, "network": net.name,
                 "classes": net.classes or net.targets,
                 "trained_by": (src.meta.get("about") or {}).get("trained_by")},
      "recipe": {"transfer": c.transfer.to_dict(), "num_steps": c.num_steps,
                 "batch_size": c.batch_size, "learning_rate": c.learning_rate,
                 "class_weights": c.class_weights, "seed": c.seed,
                 "best_step": result.best.get("step")},
      "training_data": {"catalog": os.path.abspath(data.catalog), "kind": data.kind,
                        "classes": data.classes, "group_by": data.group_by,
                        "counts": data.counts(), "n_unreadable": len(data.errors),
                        "unreadable": [list(e) for e in data.errors[:100]],
                        "n_skipped": len(data.skipped),
                        "skipped": [list(e) for e in data.skipped[:100]]},
      "evaluation": evaluation,
      "astrotl_version": astrotl.__version__,
      "date": t0.isoformat(timespec="seconds"),
      "seconds": (datetime.datetime.now(datetime.timezone.utc) - t0).total_seconds(),
  }


def _plain(v):
  """A JSON-friendly form of an argument (paths as text, functions by name)."""
  if isinstance(v, os.PathLike):
    return os.fspath(v)
  if callable(v):
    return getattr(v, "__name__", repr(v))
  if isinstance(v, (tuple, list)):
    return [_plain(x) for x in v]
  if isinstance(v, dict):
    return {str(k): _plain(x) for k, x in v.items()}
  return v


# --- the command line ---------------------------------------------------------------------

def _define_flags():
  import inspect
  from absl import flags
  f = flags
  d = {k: v.default for k, v in inspect.signature(finetune).parameters.items()}  # one default
  f.DEFINE_string("catalog", None, "Labelled catalog (CSV/FITS): a file column (or LAMOST "
                  "obsdate/planid/lmjd/spid/fiberid) and a label column.", required=True)
  f.DEFINE_string("source", d["source"], "Model to start from: a bundled name (wd_stage1, "
                  "upsilont, wd_two_stage:stage2), a bundle (x.npz, x.npz:stage1), an orbax "
                  "training workdir, or torch:7_cnn_model.pt.")
  f.DEFINE_string("out", d["out"], "The model bundle to write.")
  cli.define_catalog_flags("Read", max_missing=False)
  flags.adopt_module_key_flags(cli)  # so that --help lists them
  f.DEFINE_string("label_column", None, "Column of labels (default: label).")
  f.DEFINE_string("label_transform", None, "Applied to each label: 'letter' (MK letter of a "
                  "subclass, G7 -> G).")
  f.DEFINE_list("classes", None, "Classes to learn, in order (default: every label found); "
                "rows with other labels are skipped.")
  f.DEFINE_string("group_column", None, "Column naming the object of each row (default: "
                  "group or designation, and obsid, and sky position).")
  f.DEFINE_list("split", [str(v) for v in d["split"]], "Fractions of objects per class for "
                "train, validation, test.")
  f.DEFINE_integer("seed", d["seed"], "Seed of the split, initialisation and batch order.")
  f.DEFINE_integer("steps", d["steps"], "Training steps.")
  f.DEFINE_integer("batch_size", d["batch_size"], "Examples per step.")
  f.DEFINE_float("learning_rate", d["learning_rate"], "Learning rate (Adam).")
  f.DEFINE_string("freeze", "", "Regex of parameter names to freeze, e.g. 'block_.*' (the "
                  "convolutional trunk; BatchNorm statistics stay frozen too).  Checked "
                  "before anything is read.")
  f.DEFINE_list("skip", list(d["skip"]), "Regexes of parameters not taken from the source.")
  f.DEFINE_integer("n_blocks", None, "Zoobot: train only the top N blocks below the head.")
  f.DEFINE_float("lr_decay", None, "Zoobot: learning-rate factor per block below the head.")
  f.DEFINE_bool("from_scratch", False, "Train the same model from random weights (baseline).")
  f.DEFINE_bool("balanced", False, "Class weights inverse to the training counts.")
  f.DEFINE_string("input", None, "Input spec as JSON, replacing the source's (a workdir "
                  "of a model other than cnn1d needs one).")
  f.DEFINE_string("workdir", None, "Keep checkpoints and metrics.jsonl here (re-running "
                  "resumes).")
  f.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv):
  import shlex
  from absl import flags
  from astrotl import bundle, checkpoint
  from astrotl.io import SpectrumError
  F = flags.FLAGS
  cli.start(PROG, argv)
  try:
    finetune(F.catalog, source=F.source, out=F.out, root=F.root, label_column=F.label_column,
             label_transform=F.label_transform, classes=F.classes, path_column=F.path_column,
             group_column=F.group_column, split=[float(v) for v in F.split], seed=F.seed,
             steps=F.steps, batch_size=F.batch_size, learning_rate=F.learning_rate,
             freeze=F.freeze, skip=tuple(F.skip or ()), n_blocks=F.n_blocks,
             lr_decay=F.lr_decay, from_scratch=F.from_scratch, balanced=F.balanced,
             input=json.loads(F.input) if F.input else None, workdir=F.workdir,
             allow_outside_root=F.allow_outside_root, progress=F.progress,
             command="python -m astrotl.finetune " + " ".join(map(shlex.quote, sys.argv[1:])))
  except (ValueError, FileNotFoundError, ImportError, SpectrumError, bundle.BundleError,
          checkpoint.CheckpointError) as e:
    cli.fail(PROG, str(e))


# `astrotl.finetune(...)` calls the function even where `astrotl.finetune` is this module
# (any `import astrotl.finetune` makes it so).
class _CallableModule(types.ModuleType):
  def __call__(self, *args, **kwargs):
    return finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
  cli.run(_define_flags, main, __doc__)
