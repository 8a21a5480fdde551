"""Foreign weights into astrotl variable pytrees, without pickle.

A PyTorch state dict, given as a mapping name -> numpy array (from an `.npz` read with
`np.load(path, allow_pickle=False)`, or from `load_torch`), is mapped onto Flax paths by
rules `(pattern, target, layout)`:

- pattern: regex that must fully match a PyTorch module name (the tensor name without
  its last `.weight` / `.bias` / ... part); first matching rule wins;
- target: the Flax module path, `/`-joined; `\\1`-style references to the pattern's
  groups are expanded (e.g. `(r"conv(\\d+)\\.0", r"block_\\1/conv")`);
- layout: how the tensors change shape (LAYOUTS); "auto" picks it from the tensors.

    dense       Linear   weight [out, in]          -> params kernel [in, out], bias
    conv1d      Conv1d   weight [out, in, k]       -> kernel [k, in, out]
    conv2d      Conv2d   weight [out, in, kh, kw]  -> kernel [kh, kw, in, out]
    conv2d_1xk  Conv2d with a (1, k) kernel used as a 1-D conv -> kernel [k, in, out]
    batchnorm   weight, bias -> params scale, bias; running_mean, running_var ->
                batch_stats mean, var; num_batches_tracked is dropped

Every problem (names no rule matches, rules that match nothing, unknown tensor kinds,
bad ranks, two tensors for one path, and with `like` missing / unexpected / misshapen
paths) is collected and raised as one WeightsError listing all of them.
"""

import importlib.resources
import json
import pathlib
import re

import numpy as np

LAYOUTS = ("auto", "dense", "conv1d", "conv2d", "conv2d_1xk", "batchnorm")
UPSILONT_FIRST_EPS = 64.0   # UPSILoN-T's first BatchNorm was built as BatchNorm1d(16, 64)
UPSILONT_RULES = (
    ("bn1", "block_0/bn"), ("fc1", "block_0/dense"),
    ("bn2", "block_1/bn"), ("fc2", "block_1/dense"),
    ("bn3", "block_2/bn"), ("fc3", "block_2/dense"),
    ("bn4", "block_3/bn"), ("fc4", "head/dense"),
    ("bn5", "head/bn"),
)
TAN_CNN1D_RULES = (
    (r"conv(\d+)\.0", r"block_\1/conv", "conv2d_1xk"),
    (r"conv(\d+)\.1", r"block_\1/bn", "batchnorm"),
    (r"dense1\.1", "dense", "dense"),
    (r"dense2\.0", "head", "dense"),
)
_KERNEL = {  # torch weight axes -> flax kernel axes
    "dense": ((2,), (1, 0)),
    "conv1d": ((3,), (2, 1, 0)),
    "conv2d": ((4,), (2, 3, 1, 0)),
}


class WeightsError(ValueError):
  """Foreign weights that do not fit; the message lists every problem."""


def _layout(tensors):
  if "running_mean" in tensors or "running_var" in tensors:
    return "batchnorm"
  weight = tensors.get("weight")
  rank = None if weight is None else np.ndim(weight)
  return {2: "dense", 3: "conv1d", 4: "conv2d"}.get(rank)


def _convert(module, layout, tensors, problems):
  """{(collection, leaf): array} for one PyTorch module."""
  out = {}
  if layout == "batchnorm":
    names = {"weight": ("params", "scale"), "bias": ("params", "bias"),
             "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
    for leaf, value in tensors.items():
      if leaf == "num_batches_tracked":
        continue
      if leaf not in names:
        problems.append(f"{module}.{leaf}: not a BatchNorm tensor")
      elif np.ndim(value) != 1:
        problems.append(f"{module}.{leaf}: BatchNorm tensor must be 1-D, got {np.shape(value)}")
      else:
        out[names[leaf]] = np.asarray(value)
    return out
  for leaf, value in tensors.items():
    value = np.asarray(value)
    if leaf == "bias":
      out[("params", "bias")] = value
    elif leaf != "weight":
      problems.append(f"{module}.{leaf}: a {layout} layer has only weight and bias")
    elif layout == "conv2d_1xk":
      if value.ndim != 4 or value.shape[2] != 1:
        problems.append(f"{module}.weight: conv2d_1xk needs [out, in, 1, k], got {value.shape}")
      else:
        out[("params", "kernel")] = value[:, :, 0, :].transpose(2, 1, 0)
    else:
      (rank,), axes = _KERNEL[layout]
      if value.ndim != rank:
        problems.append(f"{module}.weight: {layout} needs a {rank}-D weight, got {value.shape}")
      else:
        out[("params", "kernel")] = value.transpose(axes)
  return out


def _compare(variables, like):
  from astrotl import surgery
  want = {p: tuple(np.shape(v)) for p, v in surgery.flatten(
      {c: like[c] for c in ("params", "batch_stats") if c in like}).items()}
  got = {p: tuple(np.shape(v)) for p, v in surgery.flatten(
      {c: variables[c] for c in ("params", "batch_stats") if c in variables}).items()}
  missing = sorted(want.keys() - got.keys())
  extra = sorted(got.keys() - want.keys())
  shapes = sorted(f"{p}: {got[p]} vs expected {want[p]}"
                  for p in want.keys() & got.keys() if got[p] != want[p])
  return [f"{label}: {items}" for label, items in
          (("missing", missing), ("unexpected", extra), ("shape mismatch", shapes)) if items]


def check_like(variables, like):
  """Raises WeightsError listing params / batch_stats paths missing, extra or misshapen."""
  problems = _compare(variables, like)
  if problems:
    raise WeightsError("variables do not fit the model:\n  " + "\n  ".join(problems))


def import_state_dict(state_dict, rules, like=None) -> dict:
  """{"params": ..., "batch_stats": ...} nested dicts of numpy arrays from `state_dict`.

  Args:
    state_dict: mapping PyTorch tensor name -> numpy array (or anything np.asarray takes).
    rules: sequence of (pattern, target) or (pattern, target, layout); see module doc.
    like: optional variables (or `jax.eval_shape` of them) to check the result against:
      every params / batch_stats path must be produced, with the same shape.
  """
  rules = [tuple(r) + ("auto",) * (3 - len(r)) for r in rules]
  for pattern, _, layout in rules:
    if layout not in LAYOUTS:
      raise WeightsError(f"rule {pattern!r}: unknown layout {layout!r}; known: {LAYOUTS}")
  problems, unmatched = [], []
  modules, targets, used = {}, {}, set()
  for name, value in state_dict.items():
    module, _, leaf = name.rpartition(".")
    for i, (pattern, target, layout) in enumerate(rules):
      match = re.fullmatch(pattern, module)
      if match:
        modules.setdefault(module, {})[leaf] = value
        targets[module] = (match.expand(target), layout)
        used.add(i)
        break
    else:
      unmatched.append(name)
  if unmatched:
    problems.append(f"no rule matches {sorted(unmatched)}")
  unused = [rules[i][0] for i in range(len(rules)) if i not in used]
  if unused:
    problems.append(f"rules that matched nothing: {unused}")

  flat = {}
  owner = {}
  for module, tensors in modules.items():
    target, layout = targets[module]
    if layout == "auto":
      layout = _layout(tensors)
      if layout is None:
        problems.append(f"{module}: cannot tell its layout from {sorted(tensors)}; name one")
        continue
    for (collection, leaf), value in _convert(module, layout, tensors, problems).items():
      path = (collection, *target.split("/"), leaf)
      if path in owner:
        problems.append(f"{'/'.join(path)}: written by both {owner[path]} and {module}")
      owner[path] = module
      flat["/".join(path)] = value

  from astrotl import surgery
  out = {"params": {}, "batch_stats": {}, **surgery.unflatten(flat)}
  if like is not None:
    problems += _compare(out, like)
  if problems:
    raise WeightsError("cannot import state dict:\n  " + "\n  ".join(problems))
  return out


def load_npz(path) -> dict:
  """name -> array from an `.npz` (no pickle)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such weights file")
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def load_torch(path) -> dict:
  """name -> numpy array from a PyTorch `.pt` file (needs torch; tensors only).

  Takes a saved state dict, or a whole pickled module (`torch.save(model)`, as Tan et
  al. published their networks).  A module pickle is read without running its code:
  every class other than torch's tensor rebuilders is replaced by an inert stand-in,
  and the parameters and buffers are collected from the stand-ins' `_parameters`,
  `_buffers` and `_modules`, named as `model.state_dict()` would name them.
  """
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch: pip install astrotl[torch]") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError:
    raise
  except Exception as e:  # weights_only refuses module pickles; read those inertly
    try:
      obj = _module_state(torch.load(path, map_location="cpu", weights_only=False,
                                     pickle_module=_inert_pickle()))
    except Exception as e2:
      raise WeightsError(f"{path}: not a readable PyTorch state dict or module "
                         f"({type(e).__name__}: {e}; {type(e2).__name__}: {e2})") from e2
  if hasattr(obj, "state_dict"):
    obj = obj.state_dict()
  if not isinstance(obj, dict):
    raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")
  bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
  if bad:
    raise WeightsError(f"{path}: entries that are not tensors: {bad}")
  return {k: v.detach().cpu().numpy() for k, v in obj.items()}


class _Inert:
  """Stands in for any pickled class: keeps its state, runs nothing."""

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
      state = {**(state[0] or {}), **state[1]}
    self.__dict__.update(state if isinstance(state, dict) else {"_state": state})


_ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
            ("torch", "Size"), ("torch", "device"), ("builtins", "set"), ("builtins", "dict"),
            ("builtins", "list"), ("builtins", "tuple")}


def _inert_pickle():
  import pickle
  import types
  import torch

  class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
      if (module, name) in _ALLOWED or (module == "torch" and name.endswith("Storage")):
        return super().find_class(module, name)
      if module == "torch" and name in ("float32", "float16", "bfloat16", "float64", "int64"):
        return getattr(torch, name)
      return type(name, (_Inert,), {"__module__": module})

  mod = types.ModuleType("astrotl_inert_pickle")
  mod.Unpickler = Unpickler
  mod.load = pickle.load
  mod.__name__ = "astrotl_inert_pickle"
  return mod


def _module_state(obj, prefix="", out=None):
  """state_dict-style names -> tensors from an inertly unpickled nn.Module tree."""
  out = {} if out is None else out
  d = getattr(obj, "__dict__", {})
  if "_parameters" not in d and "_modules" not in d:
    if isinstance(obj, dict):
      return obj
    raise WeightsError("the pickle holds neither a state dict nor a torch module")
  skip = d.get("_non_persistent_buffers_set")
  skip = set(skip) if isinstance(skip, (set, frozenset, list, tuple)) else set()
  for group in ("_parameters", "_buffers"):
    for name, t in (d.get(group) or {}).items():
      if t is not None and name not in skip:
        out[prefix + name] = t
  for name, sub in (d.get("_modules") or {}).items():
    if sub is not None:
      _module_state(sub, f"{prefix}{name}.", out)
  return out


def _upsilont_files(model_dir):
  if model_dir is not None:
    base = pathlib.Path(model_dir)
    return base / "upsilont_state_dict.npz", base / "upsilont_preprocess.json"
  base = importlib.resources.files("astrotl").joinpath("data", "upsilont")
  return base.joinpath("upsilont_state_dict.npz"), base.joinpath("upsilont_preprocess.json")


def _check_preprocess(pre, where):
  need = {"classes": None, "feature_order": 16, "log10_min_offsets": None,
          "norm_median": 16, "norm_std": 16}
  for key, size in need.items():
    if key not in pre:
      raise WeightsError(f"{where}: field {key!r} is missing")
    if size is not None and len(pre[key]) != size:
      raise WeightsError(f"{where}: field {key!r} has {len(pre[key])} entries, expected {size}")
  unknown = sorted(k for k in pre["log10_min_offsets"]
                   if k[len("min_"):] not in pre["feature_order"])
  if unknown:
    raise WeightsError(f"{where}: log10_min_offsets names unknown features {unknown}")
  if "n_final" in pre and pre["n_final"] != len(pre["classes"]):
    raise WeightsError(f"{where}: n_final = {pre['n_final']} but {len(pre['classes'])} classes")


def upsilont(model_dir=None):
  """(variables, preprocess) of the pre-trained UPSILoN-T network (Kim et al. 2021).

  model_dir: a folder with `upsilont_state_dict.npz` and `upsilont_preprocess.json`;
  None = the copy bundled in astrotl/data/upsilont (see its PROVENANCE.md).
  The variables fit `astrotl.models.get("mlp", num_classes=len(preprocess["classes"]),
  first_eps=UPSILONT_FIRST_EPS)`; inputs come from
  `astrotl.preprocess.features.upsilont_inputs(features, preprocess)`.
  """
  import jax
  import jax.numpy as jnp

  from astrotl import models

  npz, js = _upsilont_files(model_dir)
  for f in (npz, js):
    if not f.is_file():
      raise FileNotFoundError(f"{f}: missing; pass model_dir= a folder holding "
                              "upsilont_state_dict.npz and upsilont_preprocess.json")
  with npz.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
    state = {k: z[k] for k in z.files}
  try:
    pre = json.loads(js.read_text())
  except json.JSONDecodeError as e:
    raise WeightsError(f"{js}: not valid JSON ({e})") from e
  _check_preprocess(pre, js)
  model = models.get("mlp", num_classes=len(pre["classes"]), first_eps=UPSILONT_FIRST_EPS)
  like = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16))))
  try:
    variables = import_state_dict(state, UPSILONT_RULES, like=like)
  except WeightsError as e:
    raise WeightsError(f"{npz}: {e}") from None
  return variables, pre


def tan_cnn1d(state_dict, num_classes, input_length=3700) -> dict:
  """Variables of astrotl's `cnn1d` from Tan et al. (2023)'s PyTorch `CNN_Model1`.

  Names: conv{i}.0 (Conv2d, 1 x k kernels), conv{i}.1 (BatchNorm2d), dense1.1
  (Linear(C * W, 1024) after a channel-major flatten), dense2.0 (Linear(1024, classes)).
  PyTorch flattens (C, 1, W) as c * W + w; Flax flattens (W, C) as w * C + c, so the rows
  of dense/kernel are permuted accordingly.
  """
  import jax
  import jax.numpy as jnp

  from astrotl import models

  model = models.get("cnn1d", num_classes=num_classes)
  like = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, input_length))))
  _, width, channels = like["perturbations"]["features"].shape    # (1, W, C) before flatten
  where = f"Tan et al. CNN_Model1 -> cnn1d(num_classes={num_classes})"
  try:
    out = import_state_dict(state_dict, TAN_CNN1D_RULES)
    kernel = out["params"].get("dense", {}).get("kernel")
    if kernel is not None and kernel.shape[0] == width * channels:
      out["params"]["dense"]["kernel"] = (
          kernel.reshape(channels, width, -1).transpose(1, 0, 2).reshape(width * channels, -1))
    check_like(out, like)
  except WeightsError as e:
    raise WeightsError(f"{where}: {e}") from None
  return out
