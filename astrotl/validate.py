"""Every check a model bundle passes before it is used: `bundle.load_model` (and so the
scan's and the light-curve command's `--model=`), fine-tuning sources and
`astrotl.similar` all read bundles through here, and every `bundle.Model` is checked
when it is built.

A bundle is refused with one BundleError naming the file, the field and what was
expected, unless:

- its description (the `__meta__` JSON) is at most `schema.MAX_META_BYTES` long and
  nests at most `schema.MAX_DEPTH` levels, both checked before it is decoded
  (`schema.decode_meta`, which `checkpoint.load_bundle` calls); the .npz holds at most
  `io.weights.MAX_MEMBERS` arrays (checked before any is read);
- the description fits the schema in `check_meta` (each value read through
  `schema.Field`, which names the field in the message): the types, required keys and value
  ranges of `input`, `networks` (model, config, output, class names or targets,
  temperature > 0, positive class, priors in (0, 1), regression scale and units), `rule` and
  `reference`; `about` is free-form;
- a classifier has at least two classes, and class names are non-empty and unique, also
  as column names ignoring case ('WD+M' and 'WD_M' would both be p_WD_M);
- every array is finite and within +-MAX_ABS (larger weights overflow float32
  activations), and no BatchNorm variance is negative;
- each network's weights have exactly the paths and shapes its model config builds for
  the bundle's input, found with `jax.eval_shape` of the model's init (nothing runs), or
  for the shipped architectures in a table that comes with the package
  (`astrotl.shapes`);
- a reference is (n, D), D the primary network's embedding width.

Below `bundle` and `rules` (it imports neither).
"""

import json
import math
import re
import warnings

import numpy as np

from astrotl import shapes
from astrotl.schema import MAX_INT, BundleError, Field, column_name

FORMAT = 2
MAX_NETWORKS = 16
MAX_REPEAT = 64            # a config's count of blocks or layers (tracing time grows with it)
MAX_ABS = 1e6              # any weight: trained networks hold |w| < 1e3
MAX_UNIT = 32              # a regression target's unit string ('K', 'dex', 'km/s')
INPUT_TYPES = ("spectrum", "lightcurve", "image")
RULE_TYPES = ("two_stage", "class", "range")



def check_kept(n_kept, errors, error, what):
  """What `predict` does with inputs it could not use ((path, reason) `errors`): if none
  was usable, raises `error(path, reason)` for the first (or ValueError for no inputs);
  else warns how many inputs `what` (they are in table.meta['errors'])."""
  if not n_kept:
    if errors:
      more = f" (and {len(errors) - 1} more inputs that {what})" if len(errors) > 1 else ""
      raise error(errors[0][0], errors[0][1] + more)
    raise ValueError("no inputs given")
  if errors:
    warnings.warn(f"{len(errors)} of {len(errors) + n_kept} inputs {what}; see "
                  "table.meta['errors']")


def check_meta(meta, source) -> dict:
  """`meta` (a bundle's description) in today's layout, every field checked; raises
  BundleError naming the first field that does not fit."""
  top = Field(source)
  top.dict(meta)
  meta = upgrade_meta(meta, source)
  fmt = meta.get("format", FORMAT)
  top["format"].int(fmt, 1, 10**6)
  if fmt > FORMAT:
    top["format"].fail(f"at most {FORMAT}: a bundle of a newer astrotl", fmt)
  if meta.get("name") is not None:
    top["name"].str(meta["name"])
  spec = top["input"].dict(meta.get("input"), optional=True)
  _check_input(spec, top["input"])
  nets = top["networks"].dict(meta.get("networks"))
  if not 1 <= len(nets) <= MAX_NETWORKS:
    top["networks"].fail(f"1 to {MAX_NETWORKS} networks", nets)
  for name, net in nets.items():
    if not name or "/" in name or name == "reference":
      top["networks"].fail("network names without '/', not 'reference'", name)
    _check_network(net, top["networks"][name])
  if meta.get("rule") is not None:
    _check_rule(meta["rule"], top["rule"])
  if meta.get("reference") is not None:
    ref = top["reference"].dict(meta["reference"])
    f = top["reference"]
    if f["network"].str(ref.get("network")) != next(iter(nets)):
      f["network"].fail(f"the primary (first) network {next(iter(nets))!r}", ref.get("network"))
    n = f["n"].int(ref.get("n"), 2)
    f["k"].int(ref.get("k"), 1, n - 1)
    f["scale"].number(ref.get("scale"), 0, open_lo=True)
    if ref.get("metric", "cosine") != "cosine":
      f["metric"].fail("'cosine'", ref.get("metric"))
  if meta.get("about") is not None:
    top["about"].dict(meta["about"])
  return meta


def _check_input(spec, f):
  kind = f["type"].str(spec.get("type", "spectrum"), INPUT_TYPES)
  if kind == "spectrum":
    from astrotl.preprocess import spectra
    norm = f["normalise"].str(spec.get("normalise", "tan"), spectra.INPUTS)
    width = spectra.NPIX
    if norm == "continuum":
      width //= f["bin"].int(spec.get("bin", 1), 1, 64)
      if spec.get("clip") is not None:
        lo, hi = f["clip"].list(spec["clip"], 2, 2)
        if f["clip"][0].number(lo) >= f["clip"][1].number(hi):
          f["clip"].fail("[lo, hi] with lo < hi", spec["clip"])
    if spec.get("pixels") is not None or norm != "continuum":
      f["pixels"].int(spec.get("pixels", spectra.TAN_NPIX), 1, width)
  elif kind == "lightcurve":
    from astrotl.preprocess import features
    f["features"].str(spec.get("features"), ("upsilon16",))
    pre = f["preprocess"].dict(spec.get("preprocess"))
    p = f["preprocess"]
    order = p["feature_order"].names(pre.get("feature_order"), 16, 16)
    unknown = [k for k in order if k not in features.FEATURES]
    if unknown:
      p["feature_order"].fail(f"names of {list(features.FEATURES)}", unknown)
    for i, v in enumerate(p["norm_median"].list(pre.get("norm_median"), 16, 16)):
      p["norm_median"][i].number(v)
    for i, v in enumerate(p["norm_std"].list(pre.get("norm_std"), 16, 16)):
      p["norm_std"][i].number(v, 0, open_lo=True)
    offsets = p["log10_min_offsets"].dict(pre.get("log10_min_offsets"))
    for k, v in offsets.items():
      if not isinstance(k, str) or k[len("min_"):] not in order:
        p["log10_min_offsets"].fail("keys min_<feature>", k)
      p["log10_min_offsets"][k].number(v)
    if pre.get("classes") is not None:
      p["classes"].names(pre["classes"])
  else:
    if spec.get("size") is not None:
      f["size"].int(spec["size"], 1, 4096)
    if spec.get("crop") is not None:
      f["crop"].int(spec["crop"], 1, 4096)
    if spec.get("scaling") is not None:
      f["scaling"].str(spec["scaling"], ("uint8", "arcsinh", "none"))


def _check_network(net, f):
  from astrotl import models
  net = f.dict(net)
  f["model"].str(net.get("model"), sorted(models.REGISTRY))
  config = f["config"].dict(net.get("config"), optional=True)
  for key, v in config.items():
    _check_setting(v, f["config"][key])
    if re.search(r"blocks|layers|depth|stages", key) and isinstance(v, int):
      f["config"][key].int(v, 0, MAX_REPEAT)
  output = f["output"].str(net.get("output", "classes"), ("classes", "regression"))
  if output == "classes":
    classes = f["classes"].names(net.get("classes"), 2)
    f["temperature"].number(net.get("temperature", 1.0), 1e-3, 1e3)
    if net.get("positive") is not None and f["positive"].str(net["positive"]) not in classes:
      f["positive"].fail(f"one of the classes {classes}", net["positive"])
    for key in ("prior", "survey_prior"):
      if net.get(key) is not None:
        f[key].number(net[key], 0, 1, open_lo=True, open_hi=True)
    if "num_classes" in config and config["num_classes"] != len(classes):
      f["config"]["num_classes"].fail(f"{len(classes)}, one output per class",
                                      config["num_classes"])
  else:
    targets = f["targets"].names(net.get("targets", ["value"]))
    if net.get("scale") is not None:
      for i, pair in enumerate(f["scale"].list(net["scale"], len(targets), len(targets))):
        mean, std = f["scale"][i].list(pair, 2, 2)
        f["scale"][i][0].number(mean)
        if f["scale"][i][1].number(std) == 0:
          f["scale"][i][1].fail("a non-zero std", std)
    units = net.get("units")
    if units is not None and (not isinstance(units, list) or len(units) != len(targets) or any(
        not isinstance(u, str) or len(u) > MAX_UNIT for u in units)):
      f["units"].fail(f"a list of {len(targets)} unit strings (at most {MAX_UNIT} characters, "
                      "'' for none), one per target", units)
    if "num_classes" in config and config["num_classes"] != len(targets):
      f["config"]["num_classes"].fail(f"{len(targets)}, one output per target",
                                      config["num_classes"])


def _check_setting(v, f):
  """A model config value: a number, a bool, a string or a short list of those."""
  if isinstance(v, list):
    for i, x in enumerate(f.list(v)):
      _check_setting(x, f[i]) if not isinstance(x, list) else f[i].fail("a scalar", x)
  elif isinstance(v, bool) or v is None:
    pass
  elif isinstance(v, int):
    f.int(v, -MAX_INT, MAX_INT)
  elif isinstance(v, float):
    f.number(v, -MAX_INT, MAX_INT)
  elif not isinstance(v, str) or len(v) > 64:
    f.fail("a number, a bool, a short string or a list of those", v)


def _check_rule(rule, f):
  rule = f.dict(rule)
  kind = f["type"].str(rule.get("type"), RULE_TYPES)
  f["score"].str(rule.get("score"))
  if kind in ("two_stage", "class"):
    f["threshold"].number(rule.get("threshold"))
  if kind == "two_stage":
    f["agree"].str(rule.get("agree"))
    f["classes"].names(rule.get("classes"))
  if kind == "range":
    lo = f["min"].number(rule.get("min", -math.inf), finite=False)
    hi = f["max"].number(rule.get("max", math.inf), finite=False)
    if lo > hi:
      f.fail(f"min <= max, got min {lo:g} and max {hi:g}", got=False)
  if rule.get("min_snr") is not None:
    f["min_snr"].number(rule["min_snr"], 0)
  if rule.get("veto") is not None:
    for i, v in enumerate(f["veto"].list(rule["veto"], 0, 16)):
      f["veto"][i].str(v)


def upgrade_meta(meta: dict, source="bundle") -> dict:
  """Format-1 bundles (stage1/stage2 at the top, from astrotl 0.1) in today's layout."""
  if meta.get("format", 1) != 1 or "networks" in meta:
    return meta
  f = Field(source)
  if "stage1" not in meta or "stage2" not in meta:
    raise BundleError(f"{source}: not an astrotl model bundle: no 'networks' and no "
                      "stage1/stage2")
  s1, s2 = dict(f["stage1"].dict(meta["stage1"])), dict(f["stage2"].dict(meta["stage2"]))
  f["stage1"]["classes"].names(s1.get("classes"))
  classes2 = f["stage2"]["classes"].names(s2.get("classes"), 2)
  s2["positive"] = classes2[f["stage2"]["positive_index"].int(
      s2.pop("positive_index", 1), 0, len(classes2) - 1)]
  wd = [c for c in s1["classes"] if str(c).upper().startswith("WD")]
  return {"format": FORMAT, "name": "wd_two_stage",
          "input": {"type": "spectrum", "normalise": "tan",
                    "pixels": f["input_pixels"].int(meta.get("input_pixels", 3700), 1)},
          "networks": {"stage1": s1, "stage2": s2},
          "rule": {"type": "two_stage", "score": "p_" + column_name(s2["positive"]).lower(),
                   "threshold": 0.5, "agree": "class1", "classes": wd or [s2["positive"]]},
          "about": {k: v for k, v in meta.items()
                    if k not in ("stage1", "stage2", "input_pixels")}}


# --- the arrays ---------------------------------------------------------------------------

def check_trees(trees: dict, meta: dict, source) -> None:
  """The arrays of a bundle (`meta` already checked): one tree per network and an
  optional reference, every leaf finite and within MAX_ABS, each network's paths and
  shapes those its model builds for the bundle's input."""
  from astrotl import surgery
  nets = meta["networks"]
  expected = set(nets) | ({"reference"} if meta.get("reference") else set())
  missing = [n for n in nets if n not in trees]
  if missing:
    raise BundleError(f"{source}: no weights for networks {missing}")
  extra = sorted(set(trees) - expected)
  if extra:
    raise BundleError(f"{source}: arrays {extra} belong to no network of the description")
  for name, tree in trees.items():
    if not isinstance(tree, dict):
      raise BundleError(f"{source}: {name} is one array, expected a tree of arrays")
    for leaf, v in surgery.flatten(tree).items():
      _check_array(v, f"{name}/{leaf}", source)
  for name, net in nets.items():
    check_shapes(trees[name], net, meta.get("input") or {}, f"{source}: network {name!r}")
  if meta.get("reference"):
    ref = trees.get("reference", {}).get("embedding")
    if ref is None or len(trees["reference"]) != 1 or np.ndim(ref) != 2:
      raise BundleError(f"{source}: the description names a reference, but the bundle "
                        "holds no (n, D) array reference/embedding")
    want = (meta["reference"]["n"], embedding_width(trees[meta["reference"]["network"]]))
    if np.shape(ref) != want:
      raise BundleError(f"{source}: reference/embedding has shape {np.shape(ref)}, expected "
                        f"{want}: n from the description, D the network's embedding width")


def embedding_width(variables) -> int:
  """D of a network's embedding: the input width of its `head` (every model names it so)."""
  from astrotl import surgery
  head = variables.get("params", {}).get("head", {})
  kernels = [v for v in surgery.flatten(head).values() if np.ndim(v) == 2]
  return int(np.shape(kernels[0])[0]) if kernels else 0


def _check_array(v, name, source):
  v = np.asarray(v)
  if v.dtype.kind != "f":
    raise BundleError(f"{source}: {name} has dtype {v.dtype}, expected floats")
  if "/batch_stats/" in name and name.endswith("/var") and (v < 0).any():
    raise BundleError(f"{source}: {name} holds {int((v < 0).sum())} negative BatchNorm "
                      "variances (its outputs would be NaN)")
  with np.errstate(invalid="ignore"):
    bad = ~(np.abs(v) <= MAX_ABS)  # NaN compares False
  if bad.any():
    first = v.flat[int(np.flatnonzero(bad.ravel())[0])]
    raise BundleError(f"{source}: {name} holds {int(bad.sum())} values that are not finite "
                      f"numbers within +-{MAX_ABS:g} (e.g. {first}); the file is damaged or "
                      "was not written by a finished training run")


def check_shapes(variables, net: dict, spec: dict, where) -> None:
  """Raises BundleError unless `variables` hold exactly the params and batch_stats paths and
  shapes that `net`'s model builds for input `spec` (`jax.eval_shape`: nothing runs)."""
  from astrotl import surgery
  config = net.get("config") or {}
  got = {p: tuple(np.shape(v)) for p, v in surgery.flatten(
      {c: variables[c] for c in ("params", "batch_stats") if c in variables}).items()}
  unknown = [c for c in variables if c not in ("params", "batch_stats")]
  shape = shapes.input_shape(spec, variables)
  try:
    want = shapes.built(net["model"], json.dumps(config, sort_keys=True), shape)
  except Exception as e:  # the model code is trusted, its config is not: any failure means no
    line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise BundleError(f"{where}: {net['model']} with config {config} does not build for "
                      f"input {shape} ({type(e).__name__}: {line[:200]})") from None
  missing = sorted(want.keys() - got.keys())
  extra = sorted(got.keys() - want.keys()) + unknown
  wrong = sorted(f"{p} {got[p]} (expected {want[p]})" for p in want.keys() & got.keys()
                 if got[p] != want[p])
  problems = [f"{label} {', '.join(items[:4])}" + (f" and {len(items) - 4} more"
                                                   if len(items) > 4 else "")
              for label, items in (("missing", missing), ("unexpected", extra),
                                   ("misshapen", wrong)) if items]
  if problems:
    raise BundleError(f"{where}: the weights do not fit {net['model']} {config} on input "
                      f"{shape}: {'; '.join(problems)}")


def check_bundle(trees: dict, meta: dict, source) -> dict:
  """`check_meta` and `check_trees`: the checked description, in today's layout."""
  meta = check_meta(meta, source)
  check_trees(trees, meta, source)
  return meta
