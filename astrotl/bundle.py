"""Model bundles: the unit users pass around, and the model object that predicts with one.

A bundle is one `.npz` (no pickle; `checkpoint.save_bundle`) holding the weights of one
or more networks and a JSON description::

  {"format": 2, "name": "wd_two_stage",
   "input": {"type": "spectrum", "normalise": "tan", "pixels": 3700},
   "networks": {"stage1": {"model": "cnn1d", "config": {...}, "output": "classes",
                           "classes": ["A", ...], "temperature": 1.8},
                "stage2": {..., "classes": ["other", "WD"], "positive": "WD"}},
   "rule": {"type": "two_stage", ...} or null,      (astrotl.rules)
   "reference": {"network": "stage1", "n": ..., "k": ..., "scale": ...} (optional),
   "about": {"trained_by": ..., "training_data": ..., "evaluation": {...}}}

`input` says how a spectrum becomes the network input (`spectra.network_input`), or for
light curves the 16 UPSILoN features and their preprocessing.  A network's `output` is
"classes" (with class names and a calibration temperature) or "regression" (with target
names and optionally "scale": [[mean, std], ...]).  Everything that trains writes a
bundle (`Model.save`); everything that predicts reads one (`load_model`).  A `reference`
(embeddings of the training set, in the tree of that name) lets the scan score anomalies:
`astrotl.similar.reference` describes it, `astrotl.similar.add_reference` adds one.

Every bundle and every Model is checked before use (`astrotl.validate`: the schema of the
description, sizes, finite weights, each network's shapes); a bundle that fails is one
BundleError naming the file, the field and what was expected.

Bundled models, by name: `wd_two_stage` (the scan's default), `wd_stage1` (its stage 1
alone, a stellar classifier) and `upsilont` (Kim et al. 2021's variable-star classifier).
"""

import collections
import hashlib
import json
import os
import pathlib
import re

import numpy as np

from astrotl import rules, validate
# Re-exported: callers know these as bundle.BundleError etc.
from astrotl.validate import FORMAT, BundleError, check_kept, column_name  # noqa: F401

DEVICE_KEYS = ("u", "flux", "ivar", "mask")  # the raw arrays make_fn takes
BUNDLED = {
    "wd_two_stage": ("models/wd_two_stage.npz", None),
    "wd_stage1": ("models/wd_two_stage.npz", "stage1"),
    "upsilont": ("upsilont", None),
}


def to_prior(p, prior, new_prior):
  """Probabilities p, calibrated for a mix with a fraction `prior` of the positive class,
  moved to a mix with `new_prior` by Bayes' rule (the likelihood ratio is unchanged)."""
  p = np.asarray(p, np.float64)
  odds = p / np.maximum(1.0 - p, 1e-12) * (new_prior / (1 - new_prior)) / (prior / (1 - prior))
  return (odds / (1.0 + odds)).astype(np.float32)


class Network:
  """One network of a bundle: a registry model, its variables and what its outputs mean
  (its description checked by `validate.check_meta`)."""

  def __init__(self, name, meta, variables):
    from astrotl import models
    self.name = name
    self.meta = dict(meta)
    self.output = meta.get("output", "classes")
    self.classes = [str(c) for c in meta.get("classes", ())]
    self.targets = [str(t) for t in meta.get("targets", ())]
    if self.output == "regression" and not self.targets:
      self.targets = ["value"]
    self.temperature = float(meta.get("temperature", 1.0)) if self.output == "classes" else 1.0
    self.scale = np.asarray(meta.get("scale") or [[0.0, 1.0]] * len(self.targets), np.float32)
    self.model = models.get(meta["model"], **meta.get("config", {}))
    self.variables = variables

  @property
  def width(self):
    return len(self.classes) if self.output == "classes" else len(self.targets)

  def finish(self, z):
    """What the bundle promises from raw outputs z (jax, inside jit): calibrated
    probabilities (softmax of z / temperature) or regression values in target units."""
    import jax
    import jax.numpy as jnp
    if self.output == "classes":
      # An overflowed logit (inf) is clipped, so the probabilities still sum to 1.
      return jax.nn.softmax(jnp.clip(z / self.temperature, -1e30, 1e30), axis=-1)
    return z * self.scale[:, 1] + self.scale[:, 0]

  @property
  def embedding_width(self) -> int:
    """D of the network's embedding: what its `head` (every model names it so) sees."""
    return validate.embedding_width(self.variables)

  def survey_priors(self):
    """(training prior, survey prior) of the positive class when the bundle states both
    (a two-stage model's second network), else None."""
    prior, survey = self.meta.get("prior"), self.meta.get("survey_prior")
    return None if prior is None or survey is None else (float(prior), float(survey))

  def describe(self):
    return {**self.meta, "classes": self.classes} if self.output == "classes" else self.meta


class Model:
  """A trained model from a bundle: `.classes`, `.predict`, `.embed`, `.explain`, `.save`.

  Spectrum models take file paths, `astrotl.io.Spectrum` objects, (wavelength, flux[, ivar])
  tuples or flux arrays already on the common grid (`astrotl.preprocess.spectra`), alone or
  in lists; they run the exact jit-compiled function the scan runs.
  """

  def __init__(self, trees: dict, meta: dict, source=None):
    self.source = str(source) if source is not None else str(
        meta.get("name", "model") if isinstance(meta, dict) else "model")
    meta = validate.check_bundle(trees, meta, self.source)  # BundleError before anything runs
    self.meta = meta
    self.input = dict(meta.get("input") or {})
    self.networks = {n: Network(n, m, trees[n]) for n, m in meta["networks"].items()}
    self.reference = None  # (R, D) unit embeddings of the training set, or None
    if meta.get("reference"):
      self.reference = np.asarray(trees["reference"]["embedding"], np.float32)
    self.rule = meta.get("rule")
    names = [c for c, _ in self._columns()]
    seen = collections.Counter(c.lower() for c in names)  # tables ignore case
    twice = sorted(c for c, n in seen.items() if n > 1)
    if twice:
      raise BundleError(f"{self.source}: networks: two outputs would both be column "
                        f"{', '.join(twice)}; rename classes or targets")
    try:
      rules.check(self.rule, names + ["snr"])
    except rules.RuleError as e:
      raise BundleError(f"{self.source}: rule: {e}") from None
    self._fns = {}

  # --- what the model produces --------------------------------------------------------

  @property
  def name(self):
    return self.meta.get("name") or pathlib.Path(self.source).stem

  @property
  def kind(self):
    """'two_stage', 'classifier' or 'regressor'."""
    if self.rule and self.rule.get("type") == "two_stage":
      return "two_stage"
    return "regressor" if self.primary.output == "regression" else "classifier"

  @property
  def primary(self) -> Network:
    return next(iter(self.networks.values()))

  @property
  def classes(self) -> list:
    """Class names of the primary (first) network; [] for a regressor."""
    return list(self.primary.classes)

  def columns(self) -> dict:
    """{column: (description, unit)} of the outputs, in table order."""
    return dict(self._columns())

  def _columns(self) -> list:
    out = []
    two = self.kind == "two_stage"
    for i, net in enumerate(self.networks.values()):
      if net.output == "regression":
        for t in net.targets:
          out.append((column_name(t), (f"{t} predicted by network {net.name}", "")))
        continue
      if two and i == 1:
        pos = net.meta.get("positive", net.classes[-1])
        out.append((f"p_{column_name(pos).lower()}", (
            f"calibrated probability of {pos} from network {net.name}"
            + (f", for the training mix ({net.meta['prior']:.3g} {pos})"
               if net.survey_priors() else ""), "")))
        if net.survey_priors():
          out.append((f"p_{column_name(pos).lower()}_survey", (
              f"probability of {pos} for a survey with {net.meta['survey_prior']:.3g} {pos} "
              "(Bayes' rule from the training mix)", "")))
        continue
      prefix = "p1_" if two else "p_"
      for c in net.classes:
        out.append((prefix + column_name(c), (f"calibrated probability of class {c} "
                                              f"(network {net.name})", "")))
      out.append(("class1" if two else "pred_class",
                  (f"most probable class of network {net.name}", "")))
    return out

  def numeric_columns(self):
    cols = self.columns()
    return [c for c in cols if c not in ("class1", "pred_class")] + ["snr"]

  def outputs_to_columns(self, outs: dict) -> dict:
    """Columns (numpy) from the arrays `make_fn` returns for some rows.

    A network missing from `outs` (a cascade skipped it) gives NaN columns; `snr` is
    copied when present (spectra)."""
    n = len(next(iter(outs.values())))
    cols = {}
    two = self.kind == "two_stage"
    for i, net in enumerate(self.networks.values()):
      values = outs.get(net.name)
      if values is None:
        values = np.full((n, net.width), np.nan, np.float32)
      values = np.asarray(values, np.float32)
      if net.output == "regression":
        for j, t in enumerate(net.targets):
          cols[column_name(t)] = values[:, j]
      elif two and i == 1:
        pos = net.meta.get("positive", net.classes[-1])
        p = values[:, net.classes.index(pos)]
        cols[f"p_{column_name(pos).lower()}"] = p
        if net.survey_priors():
          cols[f"p_{column_name(pos).lower()}_survey"] = to_prior(p, *net.survey_priors())
      else:
        prefix = "p1_" if two else "p_"
        for j, c in enumerate(net.classes):
          cols[prefix + column_name(c)] = values[:, j]
        best = np.asarray(net.classes, dtype=object)[values.argmax(-1)] if n else []
        # No class for a row without probabilities (a cascade skipped it, or NaN outputs).
        best = np.where(np.isfinite(values).all(-1), best, "") if n else best
        cols["class1" if two else "pred_class"] = np.asarray(best, dtype=str)
    if "snr" in outs:
      cols["snr"] = np.asarray(outs["snr"], np.float32)
    return cols

  def identity(self) -> str:
    """Hash of the weights and description, so a resumed scan cannot mix two models."""
    from astrotl import surgery
    h = hashlib.sha256(json.dumps({"input": self.input, "networks": self.meta["networks"]},
                                  sort_keys=True, default=str).encode())
    for name, net in self.networks.items():
      for leaf, v in surgery.flatten(net.variables).items():
        h.update(f"{name}/{leaf}".encode())
        h.update(np.ascontiguousarray(np.asarray(v, np.float32)).tobytes())
    return h.hexdigest()[:16]

  # --- spectra through the device ---------------------------------------------------------

  def shared_trunk(self, a: str, b: str) -> bool:
    """True when networks a and b are cnn1d's with identical conv blocks (a frozen trunk),
    so the blocks need to run only once for both."""
    na, nb = self.networks[a], self.networks[b]
    if na.meta["model"] != "cnn1d" or nb.meta["model"] != "cnn1d":
      return False
    if {k: v for k, v in na.meta.get("config", {}).items() if k not in ("num_classes", "dense_width")} != \
       {k: v for k, v in nb.meta.get("config", {}).items() if k not in ("num_classes", "dense_width")}:
      return False
    from astrotl import surgery
    fa, fb = surgery.flatten(na.variables), surgery.flatten(nb.variables)
    blocks = [k for k in fa if re.match(r"(params|batch_stats)/block_\d+/", k)]
    return bool(blocks) and all(k in fb and np.array_equal(fa[k], fb[k]) for k in blocks) and \
        len(blocks) == len([k for k in fb if re.match(r"(params|batch_stats)/block_\d+/", k)])

  def make_fn(self, mesh, networks=None, embed=False, share=True):
    """jit-compiled (variables, u, flux, ivar, mask) -> {network: probabilities or values,
    "embedding": (B, D) and, for a bundle with a reference, "anomaly": (B,) if embed}, on
    raw batches from `astrotl.io.batch` (whose "snr" the host keeps: see
    `outputs_to_columns`).

    Resampling, normalisation, every network and the anomaly score run in one function on
    the device.  `networks`: names to run (default all); `share`: run a shared conv trunk
    once.
    """
    import functools
    import jax
    import jax.numpy as jnp
    from astrotl import parallel
    from astrotl.preprocess import spectra
    from astrotl.similar import metric

    if self.input.get("type", "spectrum") != "spectrum":
      raise BundleError(f"{self.source}: a {self.input.get('type')} model, not a spectrum model")
    names = list(networks or self.networks)
    nets = [self.networks[n] for n in names]
    primary = self.primary
    spec = self.input
    trunk = share and len(nets) > 1 and all(self.shared_trunk(names[0], n) for n in names[1:])
    if embed and primary.name not in names:
      raise BundleError("embed needs the primary network")
    ref = self.meta["reference"] if embed and self.reference is not None else None

    def fn(variables, reference, u, flux, ivar, mask):
      f, iv, bad = spectra.resample_pixels(u, flux, ivar, mask, xp=jnp)
      x = spectra.network_input(f, iv, bad, spec, xp=jnp)
      out = {}
      feats = None
      if trunk:
        feats = nets[0].model.apply(variables[names[0]], x, output="features")
      for net in nets:
        v = variables[net.name]
        z = (net.model.apply(v, feats, from_features=True) if feats is not None
             else net.model.apply(v, x))
        out[net.name] = net.finish(z)
        if embed and net is primary:
          e = (net.model.apply(v, feats, from_features=True, output="embedding")
               if feats is not None else net.model.apply(v, x, output="embedding"))
          out["embedding"] = e
          if ref is not None:
            out["anomaly"] = metric.knn_score(e, reference, ref["k"], ref["scale"], xp=jnp)
      return out

    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    jitted = jax.jit(fn, in_shardings=(repl, repl, data, data, data, data), out_shardings=data)
    # The reference is bound here, placed once: it belongs to the model, not to a network.
    reference = parallel.replicate(self.reference, mesh) if ref is not None else None
    return functools.partial(_bind_second, jitted, reference)

  def variables(self, names=None) -> dict:
    return {n: self.networks[n].variables for n in (names or self.networks)}

  def _run(self, raw: dict, batch_size: int, embed: bool) -> dict:
    """make_fn's outputs for host raw arrays (any number of rows) on the local devices."""
    import jax
    from astrotl import parallel
    n = len(raw["u"])
    key = ("run", embed)
    if key not in self._fns:
      mesh = parallel.make_mesh(jax.local_devices())
      self._fns[key] = (mesh, self.make_fn(mesh, embed=embed),
                        parallel.replicate(self.variables(), mesh))
    mesh, fn, variables = self._fns[key]
    n_dev = mesh.devices.size
    size = min(batch_size, max(8, 1 << max(n - 1, 0).bit_length()))  # few compiled sizes
    size = max(n_dev, size // n_dev * n_dev)
    outs = []
    for start in range(0, n, size):
      part, _ = parallel.pad_rows({k: v[start:start + size] for k, v in raw.items()}, size)
      arrays = parallel.shard_batch({k: part[k] for k in DEVICE_KEYS}, mesh, size)
      res = fn(variables, *(arrays[k] for k in DEVICE_KEYS))
      m = min(size, n - start)
      outs.append({"snr": part["snr"][:m], **{k: np.asarray(v)[:m] for k, v in res.items()}})
    if not outs:
      return {}
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  # --- the user's calls ---------------------------------------------------------------------

  def predict(self, inputs, batch_size: int = 256):
    """Class probabilities (or regression values) as an astropy Table, one row per input.

    Columns: `name` (the file, or the input's index), the model's output columns (see
    `columns()`), `snr`, and `candidate` when the bundle has a candidate rule.  Inputs
    that cannot be read are listed in `table.meta["errors"]`; if none can, the error is
    raised.
    """
    if self.input.get("type") == "lightcurve":
      from astrotl import lightcurves
      return lightcurves.predict(self, inputs, batch_size)
    names, raw, metas, errors = spectrum_inputs(inputs)
    outs = self._run(raw, batch_size, embed=False)
    return self._table(names, outs, metas, errors)

  def _table(self, names, outs, metas, errors):
    from astropy.table import Table
    cols = self.outputs_to_columns(outs) if outs else {c: np.zeros(0) for c in self.columns()}
    t = Table({"name": np.asarray(names, dtype=str)})
    for k, v in cols.items():
      t[k] = v
    t["snr"].description = "median flux * sqrt(ivar) over 4000-5500 A"
    for k, (desc, unit) in self.columns().items():
      t[k].description = desc
    if self.rule and len(t):
      survey = [(m or {}).get("class") or "" for m in metas]
      t["candidate"] = rules.select(self.rule, {**cols, "survey_class": np.asarray(survey)})
      t["candidate"].description = rules.describe(self.rule)
    t.meta["errors"] = errors
    t.meta["model"] = self.source
    return t

  def embed(self, inputs, batch_size: int = 256, names: bool = False):
    """The primary network's penultimate features (what its head sees), (n, D) float32;
    with `names`, (the names of the inputs that could be read, the features)."""
    if self.input.get("type") == "lightcurve":
      from astrotl import lightcurves
      return lightcurves.embed(self, inputs, batch_size)
    got, raw, metas, errors = spectrum_inputs(inputs)
    e = np.asarray(self._run(raw, batch_size, embed=True)["embedding"], np.float32)
    return (got, e) if names else e

  def network_inputs(self, inputs) -> tuple[list, np.ndarray]:
    """(names, the networks' input x) for spectra, exactly as the device computes it."""
    names, raw, _, _ = spectrum_inputs(inputs)
    return names, network_inputs(raw, self.input)

  def explain(self, inputs, target=None, network=None):
    """Grad-CAM maps (n, pixels) of `network` (default the primary) for `target` (a class
    name or index; None = each spectrum's predicted class), on the network's input grid."""
    from astrotl import explain
    net = self.networks[network] if network else self.primary
    _, x = self.network_inputs(inputs)
    if isinstance(target, str):
      if target not in net.classes:
        raise ValueError(f"explain: {target!r} is not one of {net.classes}")
      target = net.classes.index(target)
    return explain.cam(net.model, net.variables, x, target=target)

  def subset(self, network: str, name=None) -> "Model":
    """A Model of one network of this one (e.g. stage 1 of the two-stage bundle)."""
    meta = dict(self.meta, name=name or f"{self.name}:{network}",
                networks={network: self.meta["networks"][network]}, rule=None)
    trees = {network: self.networks[network].variables}
    if self.reference is not None and self.meta["reference"].get("network") == network:
      trees["reference"] = {"embedding": self.reference}
    else:
      meta["reference"] = None
    return Model(trees, meta, source=self.source)

  def with_meta(self, **updates) -> "Model":
    """A copy with `updates` in its description (e.g. about=...); same networks."""
    trees = {n: net.variables for n, net in self.networks.items()}
    if self.reference is not None:
      trees["reference"] = {"embedding": self.reference}
    return Model(trees, dict(self.meta, **updates), source=self.source)

  def save(self, path, int8=(), dtype=np.float16) -> pathlib.Path:
    """Writes the bundle (`.npz`); int8: regexes of 2-D kernels to store as int8."""
    from astrotl import checkpoint
    meta = dict(self.meta, format=FORMAT)
    trees = {n: net.variables for n, net in self.networks.items()}
    if self.reference is not None:
      trees["reference"] = {"embedding": self.reference}
    checkpoint.save_bundle(path, trees, meta, dtype=dtype, int8=int8)
    return pathlib.Path(path)

  def __repr__(self):
    nets = ", ".join(f"{n}: {net.meta['model']} -> {net.classes or net.targets}"
                     for n, net in self.networks.items())
    return f"<astrotl Model {self.name} ({self.kind}; {nets})>"


_INPUT_FNS = {}


def network_inputs(raw: dict, spec: dict, batch_size: int = 256) -> np.ndarray:
  """Network inputs x for raw arrays from `astrotl.io.batch` (any number of rows), as
  `Model.make_fn` computes them on the device: resampling, then `spectra.network_input`
  per the input `spec`, jit-compiled.  Rows go through in padded batches of one size, so
  a long list (a labelled catalog) compiles once."""
  import jax
  import jax.numpy as jnp
  from astrotl import parallel
  from astrotl.preprocess import spectra
  key = json.dumps(spec, sort_keys=True)
  if key not in _INPUT_FNS:
    frozen_spec = json.loads(key)  # a caller changing its dict later must not change this
    _INPUT_FNS[key] = jax.jit(lambda u, f, v, m: spectra.network_input(
        *spectra.resample_pixels(u, f, v, m, xp=jnp), frozen_spec, xp=jnp))
  fn = _INPUT_FNS[key]
  n = len(raw["u"])
  size = min(batch_size, max(8, 1 << max(n - 1, 0).bit_length()))  # few compiled sizes
  outs = []
  for start in range(0, n, size):
    part, _ = parallel.pad_rows({k: v[start:start + size] for k, v in raw.items()}, size)
    x = fn(part["u"], part["flux"], part["ivar"], part["mask"])
    outs.append(np.asarray(x)[:min(size, n - start)])
  return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _bind_second(fn, second, first, *rest):
  return fn(first, second, *rest)


# --- loading ----------------------------------------------------------------------------

def _resource(rel):
  from astrotl import data
  return pathlib.Path(str(data.sample_dir(rel.split("/")[0]))).joinpath(*rel.split("/")[1:])


def load_model(name_or_path) -> Model:
  """A Model from a bundled name (`wd_two_stage`, `wd_stage1`, `upsilont`), a bundle path
  (.npz), or 'torch:stage1.pt,stage2.pt' (Tan et al.'s published PyTorch weights;
  'torch:stage1.pt' alone gives their 7-class stage 1)."""
  from astrotl import checkpoint
  spec = os.fspath(name_or_path) if name_or_path is not None else "wd_two_stage"
  if spec.startswith("torch:"):
    from astrotl.io import weights
    try:
      return from_torch(*spec[len("torch:"):].split(","))
    except weights.WeightsError as e:
      raise BundleError(str(e)) from None
  only = None
  if spec in BUNDLED:
    rel, only = BUNDLED[spec]
    path = _resource(rel)
    if spec == "upsilont":
      return _upsilont(path)
    if not path.exists():
      raise FileNotFoundError(f"{path}: the bundled model {spec!r} is missing from this "
                              "installation")
  else:
    path = pathlib.Path(spec)
    if not path.exists():
      raise FileNotFoundError(f"{spec}: no such model bundle; give a bundle path or one of "
                              f"{', '.join(BUNDLED)}")
    if path.is_dir():
      raise BundleError(f"{spec}: a folder, not a model bundle (.npz); to start from a "
                        "training workdir use astrotl.finetune(source=...)")
  try:
    trees, meta = checkpoint.load_bundle(path)
  except checkpoint.CheckpointError as e:
    raise BundleError(str(e)) from None
  model = Model(trees, meta, source=path)
  if only:
    model = model.subset(only, name=spec)
  return model


def from_torch(stage1_pt, stage2_pt=None) -> Model:
  """Tan et al.'s published PyTorch networks (7_cnn_model.pt, 2_cnn_model.pt) as a
  two-stage model with their 7 classes (no calibration); stage 1 alone (a 7-class
  classifier) when `stage2_pt` is None."""
  from astrotl.io import weights
  from astrotl.preprocess.spectra import DEFAULT_CLASSES
  classes = list(DEFAULT_CLASSES)
  stages = (("stage1", stage1_pt, classes), ("stage2", stage2_pt, ["other", "WD"]))
  trees, nets = {}, {}
  for key, path, names in stages[:1 if stage2_pt is None else 2]:
    trees[key] = weights.tan_cnn1d(weights.load_torch(path), num_classes=len(names))
    nets[key] = {"model": "cnn1d", "config": {"num_classes": len(names)}, "output": "classes",
                 "classes": names, "temperature": 1.0}
  source = f"torch:{stage1_pt}" + (f",{stage2_pt}" if stage2_pt is not None else "")
  rule = None
  if stage2_pt is not None:
    nets["stage2"]["positive"] = "WD"
    rule = {"type": "two_stage", "score": "p_wd", "threshold": 0.5, "agree": "class1",
            "classes": ["WD"]}
  meta = {"format": FORMAT, "name": "tan2023_torch" if stage2_pt is not None else
          "tan2023_torch_stage1",
          "input": {"type": "spectrum", "normalise": "tan", "pixels": 3700},
          "networks": nets, "rule": rule, "about": {"source": source}}
  return Model(trees, meta, source=source)


def _upsilont(folder) -> Model:
  from astrotl.io import weights
  variables, pre = weights.upsilont(folder)
  meta = {"format": FORMAT, "name": "upsilont",
          "input": {"type": "lightcurve", "features": "upsilon16", "preprocess": pre},
          "networks": {"main": {"model": "mlp",
                                "config": {"num_classes": len(pre["classes"]),
                                           "first_eps": weights.UPSILONT_FIRST_EPS},
                                "output": "classes", "classes": list(pre["classes"]),
                                "temperature": 1.0}},
          "rule": None,
          "about": {"trained_by": "Kim et al. 2021 (UPSILoN-T), OGLE + EROS-2",
                    "source": str(folder)}}
  return Model({"main": variables}, meta, source="upsilont")


# --- inputs -----------------------------------------------------------------------------

def spectrum_inputs(inputs):
  """(names, raw arrays, metas, errors) for files, Spectrum objects, (wavelength, flux[,
  ivar[, mask]]) tuples or flux arrays on the common grid, alone or in a list."""
  from astrotl import io as aio
  from astrotl.io import batch as io_batch
  from astrotl.preprocess import spectra
  if isinstance(inputs, np.ndarray) and inputs.ndim == 2 and inputs.dtype.kind == "f":
    inputs = list(inputs)
  elif isinstance(inputs, (str, os.PathLike, aio.Spectrum, np.ndarray)) or (
      isinstance(inputs, tuple) and len(inputs) in (2, 3, 4) and np.ndim(inputs[0]) == 1
      and np.ndim(inputs[1]) == 1 and len(inputs[0]) == len(inputs[1]) > 4):
    inputs = [inputs]
  names, arrays, metas, errors = [], [], [], []
  grid = spectra.wavelength_grid()
  for i, item in enumerate(inputs):
    try:
      if isinstance(item, (str, os.PathLike)):
        a, m = io_batch.decode(item)
        name = os.fspath(item)
      else:
        if isinstance(item, np.ndarray):
          if item.shape[-1] != len(grid):
            raise aio.SpectrumError(f"input {i}", f"a flux array must have the common grid's "
                                    f"{len(grid)} pixels (got {item.shape[-1]}); pass "
                                    "(wavelength, flux, ivar) instead")
          item = (grid, item)
        if isinstance(item, tuple):
          wave, flux = np.asarray(item[0], np.float64), np.asarray(item[1], np.float32)
          ivar = np.asarray(item[2], np.float32) if len(item) > 2 else np.ones_like(flux)
          mask = (np.asarray(item[3], bool) if len(item) > 3 else np.zeros(flux.shape, bool))
          mask = mask | ~np.isfinite(flux) | ~(ivar > 0)
          item = aio.Spectrum(wave, flux, ivar, mask, {})
        a, m = io_batch.raw_arrays(item, path=f"input {i}")
        name = str(i)
    except aio.SpectrumError as e:
      errors.append((str(e.path), e.reason))
      continue
    names.append(name)
    arrays.append(a)
    metas.append(m)
  check_kept(len(arrays), errors, aio.SpectrumError, "could not be read")
  raw = {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}
  return names, raw, metas, errors
