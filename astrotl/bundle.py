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
names and optionally "scale": [[mean, std], ...], raw output * std + mean, and "units",
one string per target, e.g. ["K", "dex", "dex"], which the output columns carry).
Everything that trains writes a bundle (`Model.save`); everything that predicts reads
one (`load_model`).  A `reference` (embeddings of the training set, in the tree of that
name) lets the scan score anomalies: `astrotl.similar.reference` describes it,
`astrotl.similar.add_reference` adds one.

Every bundle and every Model is checked before use (`astrotl.validate`: the schema of the
description, sizes, finite weights, each network's shapes); a bundle that fails is one
BundleError naming the file, the field and what was expected.  How a Model runs (its
device function, batching, preprocessing) is `astrotl.inference`.

Bundled models, by name: `wd_two_stage` (the scan's default), `wd_stage1` (its stage 1
alone, a stellar classifier) and `upsilont` (Kim et al. 2021's variable-star classifier).
"""

import collections
import hashlib
import json
import os
import pathlib

import numpy as np

from astrotl import inference, rules, shapes, validate
# Re-exported: callers know these as bundle.BundleError etc.
from astrotl.schema import BundleError, column_name  # noqa: F401
from astrotl.validate import FORMAT  # noqa: F401

BUNDLED = {
    "wd_two_stage": ("models/wd_two_stage.npz", None),
    "wd_stage1": ("models/wd_two_stage.npz", "stage1"),
    "lamost_params": ("models/lamost_params.npz", None),
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
    self.units = [str(u) for u in meta.get("units") or [""] * len(self.targets)]
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
        for t, unit in zip(net.targets, net.units):
          # The unit is in the description too: FITS keeps only units it knows ('dex' is not).
          out.append((column_name(t), (f"{t}{f' ({unit})' if unit else ''} predicted by "
                                       f"network {net.name}", unit)))
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

  # --- spectra through the device (astrotl.inference) -------------------------------------

  def shared_trunk(self, a: str, b: str) -> bool:
    return inference.shared_trunk(self, a, b)

  def make_fn(self, mesh, networks=None, embed=False, share=True):
    return inference.make_fn(self, mesh, networks, embed, share)
  make_fn.__doc__ = inference.make_fn.__doc__

  def variables(self, names=None) -> dict:
    return {n: self.networks[n].variables for n in (names or self.networks)}

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
    names, raw, metas, errors = inference.spectrum_inputs(inputs)
    outs = inference.run(self, raw, batch_size, embed=False)
    return inference.table(self, names, outs, metas, errors)

  def embed(self, inputs, batch_size: int = 256, names: bool = False):
    """The primary network's penultimate features (what its head sees), (n, D) float32;
    with `names`, (the names of the inputs that could be read, the features)."""
    if self.input.get("type") == "lightcurve":
      from astrotl import lightcurves
      return lightcurves.embed(self, inputs, batch_size)
    got, raw, metas, errors = inference.spectrum_inputs(inputs)
    e = np.asarray(inference.run(self, raw, batch_size, embed=True)["embedding"], np.float32)
    return (got, e) if names else e

  def network_inputs(self, inputs) -> tuple[list, np.ndarray]:
    """(names, the networks' input x) for spectra, exactly as the device computes it."""
    names, raw, _, _ = inference.spectrum_inputs(inputs)
    return names, inference.network_inputs(raw, self.input)

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


# --- loading ----------------------------------------------------------------------------

def _resource(rel):
  from astrotl import data
  return pathlib.Path(str(data.sample_dir(rel.split("/")[0]))).joinpath(*rel.split("/")[1:])


def load_model(name_or_path) -> Model:
  """A Model from a bundled name (`wd_two_stage`, `wd_stage1`, `lamost_params`: Teff, log g
  and [Fe/H] of LAMOST A/F/G stars, `upsilont`), a bundle path (.npz), or
  'torch:stage1.pt,stage2.pt' (Tan et al.'s published PyTorch weights; 'torch:stage1.pt'
  alone gives their 7-class stage 1)."""
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


def shipped_architectures() -> list:
  """[(model, config JSON, input shape)] of every network of the bundled models: the keys
  of shapes.KNOWN_SHAPES (rewrite it with `shapes.write_known(...)` of this
  when a shipped bundle or a model's code changes; a test says when)."""
  out = []
  for name in BUNDLED:
    m = load_model(name)
    for net in m.networks.values():
      arch = (net.meta["model"], json.dumps(net.meta.get("config") or {}, sort_keys=True),
              shapes.input_shape(m.input, net.variables))
      if arch not in out:
        out.append(arch)
  return out


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
