"""Fuzz model bundles and PyTorch .pt files: each mutated file is used correctly or refused
with one documented error (issue 24, "trust no file").

Run by hand (tests/test_validate.py runs a fixed-seed slice of a few dozen cases):
  PYTHONPATH=. python benchmarks/fuzz_bundles.py --n=5000 [--seed=0] [--workers=1]

Seeds are made here: small bundles of each kind (a two-stage model with a shared trunk and
an anomaly reference, a classifier, a regressor, the UPSILoN-T light-curve network) and
.pt files (a state dict and a pickled module tree, written opcode by opcode as torch.save
writes them).  Each case applies one to three mutations -- to the description (wrong
types, deleted and added keys, class names, temperatures, rules, inputs, configs,
nesting depth, size, the format-1 layout), to the arrays (NaN, inf, huge values, shapes,
dtypes, missing and extra arrays, thousands of members) or to the bytes (flips,
truncation) of a bundle; to the pickle (flips, truncation, thousands of distinct
globals, module trees thousands deep, BUILD on the loader's builders, megabytes of
objects, tensor records) or the zip of a .pt -- and loads the file in a worker process:

  bundle  `bundle.load_model(path)`; an accepted bundle runs every network (its model's
          apply and `Network.finish`) on real inputs (sample spectra through the bundle's
          own preprocessing, or feature vectors) and must give finite outputs, class
          probabilities that sum to 1 and a class name for every row;
  .pt     `io.weights.load_torch(path)`, and for one case in five
          `bundle.load_model('torch:path')`.

A failure is an exception other than BundleError / WeightsError (or one whose message
spans lines), an accepted bundle with wrong outputs, a load over 5 s of CPU (the load
alone: the output checks compile each new network once), or a case whose peak memory
grows by more than 1 GB over the memory it started with (VmHWM, reset before each
case, less VmRSS at its start; the summary also gives the worker's peak, its own
~0.5 GB of jax and caches included).  Writes
benchmarks/results/fuzz_bundles.json.
"""

import argparse
import collections
import io
import json
import multiprocessing
import os
import pathlib
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
import zipfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
MAX_SECONDS = 5.0
MAX_RSS_BYTES = 2**30
TINY = {"channels": [4, 4, 4, 4, 4, 4, 4, 4], "dense_width": 8}


# --- seeds ------------------------------------------------------------------------------------

def _random_variables(num_classes, seed):
  """Variables of the tiny cnn1d, random (no compilation: shapes from jax.eval_shape)."""
  from astrotl import shapes, surgery
  rng = np.random.default_rng(seed)
  built = shapes.built("cnn1d", json.dumps(dict(TINY, num_classes=num_classes),
                                           sort_keys=True), (1, 3700))
  flat = {p: (np.ones(s, np.float32) if p.endswith(("/var", "/scale")) else
              (0.3 * rng.normal(size=s)).astype(np.float32)) for p, s in built.items()}
  return surgery.unflatten(flat)


def seed_bundles():
  """{kind: (flat {member: array}, meta)}: one small bundle of each kind."""
  from astrotl import bundle, surgery
  v1, vr = _random_variables(7, 0), _random_variables(1, 2)
  v2 = _random_variables(2, 1)
  v2 = {c: {k: (v1[c][k] if k.startswith("block_") else v) for k, v in v2[c].items()}
        for c in v2}
  classes = ["A", "F", "G", "K", "M", "WD", "WD+M"]
  spectrum = {"type": "spectrum", "normalise": "tan", "pixels": 3700}
  stage1 = {"model": "cnn1d", "config": dict(TINY, num_classes=7), "output": "classes",
            "classes": classes, "temperature": 1.3}
  stage2 = {"model": "cnn1d", "config": dict(TINY, num_classes=2), "output": "classes",
            "classes": ["other", "WD"], "positive": "WD", "temperature": 0.7, "prior": 0.2,
            "survey_prior": 0.0005}
  rule = {"type": "two_stage", "score": "p_wd", "threshold": 0.5, "agree": "class1",
          "classes": ["WD", "WD+M"], "min_snr": 4.0, "veto": ["QSO", "GALAXY"]}
  ref = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
  ref /= np.linalg.norm(ref, axis=1, keepdims=True)
  ups = bundle.load_model("upsilont")
  out = {
      "two_stage": ({"stage1": v1, "stage2": v2, "reference": {"embedding": ref}},
                    {"format": 2, "name": "two_stage", "input": spectrum,
                     "networks": {"stage1": stage1, "stage2": stage2}, "rule": rule,
                     "reference": {"network": "stage1", "n": 20, "k": 3, "scale": 0.3,
                                   "metric": "cosine"},
                     "about": {"trained_by": "fuzz", "evaluation": {"accuracy": 0.9}}}),
      "classifier": ({"main": v1}, {"format": 2, "name": "classifier", "input": spectrum,
                                    "networks": {"main": stage1}, "rule": None}),
      "regressor": ({"main": vr}, {"format": 2, "name": "regressor",
                                   "input": {"type": "spectrum", "normalise": "continuum",
                                             "clip": [-0.5, 3.0], "bin": 1, "pixels": 3700},
                                   "networks": {"main": {
                                       "model": "cnn1d", "config": dict(TINY, num_classes=1),
                                       "output": "regression", "targets": ["subtype"],
                                       "scale": [[45.0, 10.0]]}},
                                   "rule": {"type": "range", "score": "subtype", "min": 20,
                                            "max": 30}}),
      "lightcurve": ({"main": ups.networks["main"].variables}, json.loads(json.dumps(
          {k: v for k, v in ups.meta.items() if k != "about"}))),
  }
  flat = {}
  for kind, (trees, meta) in out.items():
    arrays = {f"{n}/{p}": np.asarray(v, np.float32) for n, t in trees.items()
              for p, v in surgery.flatten(t).items()}
    flat[kind] = (arrays, meta)
  return flat


def _g(module, name):
  return b"c" + f"{module}\n{name}\n".encode()


def _s(text):
  b = text.encode()
  return b"X" + len(b).to_bytes(4, "little") + b


def _i(n):
  if -2**31 <= n < 2**31:
    return b"J" + n.to_bytes(4, "little", signed=True)
  b = n.to_bytes(16, "little", signed=True)
  return b"\x8a" + bytes([len(b)]) + b


MARK, TUPLE, REDUCE, BUILD, NEWOBJ, STOP = b"(", b"t", b"R", b"b", b"\x81", b"."
EMPTY_DICT, SETITEM, EMPTY_TUPLE, NEWFALSE, BINPERSID = b"}", b"s", b")", b"\x89", b"Q"
EMPTY_LIST, APPEND, POP = b"]", b"a", b"0"


def _tensor(key, size, stride, offset=0, numel=None, kind="FloatStorage"):
  """The pickle of torch._utils._rebuild_tensor_v2(storage `key`, offset, size, stride, ...)."""
  numel = int(np.prod(size)) if numel is None else numel
  ints = lambda xs: MARK + b"".join(_i(x) for x in xs) + TUPLE
  storage = MARK + _s("storage") + _g("torch", kind) + _s(key) + _s("cpu") + _i(numel) + TUPLE
  return (_g("torch._utils", "_rebuild_tensor_v2") + MARK + storage + BINPERSID + _i(offset)
          + ints(size) + ints(stride) + NEWFALSE + _g("collections", "OrderedDict")
          + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE)


SHAPES = [(4, 3), (4,), (2, 3, 5), (8,), (3, 3)]


def _strides(shape):
  return tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))


def seed_pts(rng):
  """{kind: (data.pkl bytes, {storage key: bytes})}: a state dict and a module tree."""
  storages = {str(i): rng.normal(size=int(np.prod(s))).astype("<f4").tobytes()
              for i, s in enumerate(SHAPES)}
  body = b"".join(_s(f"layer{i}.weight") + _tensor(str(i), s, _strides(s)) + SETITEM
                  for i, s in enumerate(SHAPES))
  state_dict = b"\x80\x02" + _g("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE \
      + MARK + body.replace(SETITEM, b"") + b"u" + STOP  # SETITEMS

  def module(i, depth):
    params = _g("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + MARK + _s("weight") \
        + _tensor(str(i), SHAPES[i], _strides(SHAPES[i])) + b"u"
    subs = EMPTY_DICT
    if depth:
      subs += _s(f"sub{depth}") + module(i + 1, depth - 1) + SETITEM
    state = EMPTY_DICT + _s("_parameters") + params + SETITEM + _s("_buffers") + EMPTY_DICT \
        + SETITEM + _s("_modules") + subs + SETITEM + _s("training") + NEWFALSE + SETITEM
    return _g("model", f"Net{depth}") + EMPTY_TUPLE + NEWOBJ + state + BUILD

  tree = b"\x80\x02" + module(0, 3) + STOP
  return {"state_dict": (state_dict, storages), "module": (tree, storages)}


def write_pt(path, pkl, storages, order="little", prefix="archive", extra=()):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{prefix}/data.pkl", pkl)
    z.writestr(f"{prefix}/byteorder", order)
    z.writestr(f"{prefix}/version", "3\n")
    for key, data in storages.items():
      z.writestr(f"{prefix}/data/{key}", data)
    for name, data in extra:
      z.writestr(name, data)


# --- bundle mutations ---------------------------------------------------------------------------

ODD_VALUES = [None, 0, -5, 1, 1.5, 1e308, float("nan"), float("inf"), -float("inf"), "", "x",
              "3700", True, False, [], [1], ["a", "a"], {}, {"a": 1}, 10**30, [[1, 2]],
              "Infinity", -1, 2**40, 0.0, 1e-300]


def _paths(node, prefix=()):
  """Every (path, value) of a JSON tree, `about` left out (it is free-form)."""
  out = []
  if isinstance(node, dict):
    for k, v in node.items():
      if prefix == () and k == "about":
        continue
      out.append((prefix + (k,), v))
      out += _paths(v, prefix + (k,))
  elif isinstance(node, list):
    for i, v in enumerate(node):
      out.append((prefix + (i,), v))
      out += _paths(v, prefix + (i,))
  return out


def _at(meta, path):
  node = meta
  for k in path[:-1]:
    node = node[k]
  return node


def _pick(rng, items):
  return items[int(rng.integers(len(items)))]


def mb_type(c, rng):
  paths = _paths(c["meta"])
  if not paths:
    return "type-none"
  path, _ = _pick(rng, paths)
  _at(c["meta"], path)[path[-1]] = _pick(rng, ODD_VALUES)
  return "type"


def mb_delete(c, rng):
  paths = [p for p, _ in _paths(c["meta"])]
  if not paths:
    return "delete-none"
  path = _pick(rng, paths)
  node = _at(c["meta"], path)
  if isinstance(node, dict):
    del node[path[-1]]
  else:
    node.pop(path[-1])
  return "delete"


def mb_add(c, rng):
  dicts = [c["meta"]] + [v for _, v in _paths(c["meta"]) if isinstance(v, dict)]
  _pick(rng, dicts)[_pick(rng, ["extra", "classes", "temperature", "config", "rule", "model",
                                 "positive", "prior", "scale", "targets", "reference",
                                 "network", "k"])] = _pick(rng, ODD_VALUES)
  return "add"


def _networks(c):
  nets = c["meta"].get("networks")
  return [n for n in nets.values() if isinstance(n, dict)] if isinstance(nets, dict) else []


def mb_classes(c, rng):
  nets = [n for n in _networks(c) if isinstance(n.get("classes"), list)]
  if not nets:
    return "classes-none"
  net = _pick(rng, nets)
  cl = net["classes"]
  how = int(rng.integers(7))
  if how == 0 and cl:
    net["classes"] = [cl[0]] * len(cl)
  elif how == 1 and cl:
    cl[int(rng.integers(len(cl)))] = ""
  elif how == 2 and len(cl) > 1:
    cl[1] = cl[0].lower() if cl[0] != cl[0].lower() else cl[0].upper()
  elif how == 3:
    net["classes"] = cl[:1]
  elif how == 4 and cl:
    cl[0] = 7
  elif how == 5:
    net["classes"] = [f"c{i}" for i in range(int(rng.choice([2, 20000])))]
  else:
    net["classes"] = list(reversed(cl))  # valid: another order
  return f"classes{how}"


def mb_temperature(c, rng):
  nets = _networks(c)
  if not nets:
    return "temperature-none"
  _pick(rng, nets)["temperature"] = _pick(rng, [0, -1.0, float("nan"), float("inf"), 1e-6,
                                                1e6, "1", 0.5, 2.0, None])
  return "temperature"


def mb_rule(c, rng):
  rules = [None, "p_wd>=0.5", {"type": "range", "min": 0},
           {"type": "class", "score": "p_A", "threshold": "0.5"},
           {"type": "class", "score": "p_A", "threshold": 0.5},
           {"type": "class", "score": "p1_A", "threshold": 0.5, "veto": ["QSO", "STARS"]},
           {"type": "two_stage", "score": "p_wd", "threshold": 0.5, "agree": "class1",
            "classes": "WD"},
           {"type": "range", "score": "subtype", "min": 30, "max": 20},
           {"type": "range", "score": "subtype", "min": -float("inf")},
           {"type": "nope", "score": "x"}, {"type": "class", "score": "snr", "threshold": 3,
                                            "min_snr": -1}]
  c["meta"]["rule"] = _pick(rng, rules)
  return "rule"


def mb_input(c, rng):
  spec = c["meta"].get("input")
  if not isinstance(spec, dict):
    c["meta"]["input"] = _pick(rng, ODD_VALUES)
    return "input-replaced"
  key = _pick(rng, ["pixels", "normalise", "type", "bin", "clip", "features", "preprocess"])
  spec[key] = _pick(rng, {"pixels": [-5, 0, 1, 100, 3700, 3909, 3910, 10**9, "3700", 2.5],
                          "normalise": ["tan", "tan_robust", "continuum", "zscore", 1],
                          "type": ["spectrum", "lightcurve", "image", "radio", None],
                          "bin": [0, 1, 2, 65, -1], "clip": [[0, 1], [1, 0], [0], "x"],
                          "features": ["upsilon16", "x"],
                          "preprocess": [{}, None, "x"]}[key])
  return f"input-{key}"


def mb_config(c, rng):
  nets = [n for n in _networks(c) if isinstance(n.get("config"), dict)]
  if not nets:
    return "config-none"
  config = _pick(rng, nets)["config"]
  key = _pick(rng, ["channels", "kernels", "pool_strides", "dense_width", "num_classes",
                    "dtype", "widths", "first_eps", "nope"])
  config[key] = _pick(rng, [[4] * 64, [4] * 65, [4, 4], list(range(1, 9)), 0, 1, 8, 2**23,
                            -3, "float16", "object", [0.5], None, 1e-5, [[1]]])
  return f"config-{key}"


def mb_format1(c, rng):
  nets = c["meta"].get("networks")
  if not isinstance(nets, dict) or set(nets) != {"stage1", "stage2"}:
    return "format1-none"
  m = c["meta"]
  m.pop("networks")
  m.pop("format", None)
  m["stage1"], m["stage2"] = nets["stage1"], dict(nets["stage2"])
  m["stage2"]["positive_index"] = _pick(rng, [0, 1, 2, -1, "1", None])
  return "format1"


def mb_deep(c, rng):
  depth = int(rng.choice([8, 31, 40, 1000, 200_000]))
  c["meta_raw"] = (b'{"about": ' + b"[" * depth + b"]" * depth + b", "
                   + json.dumps(c["meta"])[1:].encode())
  return f"deep{depth}"


def mb_big(c, rng):
  size = int(rng.choice([1 << 20, 5 << 20, 64 << 20]))
  c["meta_raw"] = b'{"about": "' + b" " * size + b'", ' + json.dumps(c["meta"])[1:].encode()
  return f"big{size >> 20}MB"


def _leaf(c, rng, net_only=True):
  names = [k for k in c["arrays"] if not net_only or not k.startswith("reference/")]
  return _pick(rng, names) if names else None


def mb_values(c, rng):
  k = _leaf(c, rng, net_only=False)
  a = np.array(c["arrays"][k], np.float32)
  value = _pick(rng, [np.nan, np.inf, -np.inf, 1e30, 1e7, -1e6, 65504.0])
  if a.size:
    a.flat[rng.integers(a.size, size=int(rng.integers(1, 4)))] = value
  c["arrays"][k] = a
  return f"values{value:g}"


def mb_scale(c, rng):
  k = _leaf(c, rng)
  c["arrays"][k] = np.asarray(c["arrays"][k], np.float32) * float(rng.choice([1e2, 1e3, 1e5]))
  return "scale"


def mb_shape(c, rng):
  k = _leaf(c, rng, net_only=False)
  a = np.asarray(c["arrays"][k])
  how = int(rng.integers(5))
  if how == 0 and a.ndim and a.shape[0] > 1:
    a = a[:-1]
  elif how == 1 and a.ndim > 1:
    a = a.T
  elif how == 2:
    a = a[None]
  elif how == 3:
    a = np.asarray(a.ravel()[:1].sum())
  else:
    a = np.zeros((0,) + a.shape[1:], a.dtype)
  c["arrays"][k] = a
  return f"shape{how}"


def mb_drop(c, rng):
  del c["arrays"][_leaf(c, rng, net_only=False)]
  return "drop"


def mb_extra(c, rng):
  name = _pick(rng, ["spare/w", "stage1/params/extra/kernel", "main/params/head/extra",
                     "reference/other", "main/other_collection/x"])
  c["arrays"][name] = np.zeros(3, np.float32)
  return "extra"


def mb_dtype(c, rng):
  k = _leaf(c, rng)
  c["arrays"][k] = np.asarray(c["arrays"][k]).astype(
      _pick(rng, [np.int32, np.float64, np.bool_, np.float16, np.int8]))
  return "dtype"


def mb_members(c, rng):
  n = int(rng.choice([10, 500, 4000, 4200, 20_000]))
  c["members"] = n
  return f"members{n}"


def mb_flip(c, rng):
  c.setdefault("raw", []).append(("flip", int(rng.integers(1, 20))))
  return "flip"


def mb_truncate(c, rng):
  c.setdefault("raw", []).append(("truncate", float(rng.random())))
  return "truncate"


BUNDLE_MUTATIONS = [mb_type, mb_type, mb_type, mb_delete, mb_add, mb_classes, mb_temperature,
                    mb_rule, mb_input, mb_config, mb_format1, mb_deep, mb_big, mb_values,
                    mb_values, mb_scale, mb_shape, mb_shape, mb_drop, mb_extra, mb_dtype,
                    mb_members, mb_flip, mb_truncate]


def write_bundle(path, c, rng):
  meta_raw = c.get("meta_raw") or json.dumps(c["meta"]).encode()
  members = {"__meta__": np.frombuffer(meta_raw, np.uint8), **c["arrays"]}
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
    for name, a in members.items():
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
      z.writestr(name + ".npy", buf.getvalue())
    empty = io.BytesIO()
    np.lib.format.write_array(empty, np.zeros(0, np.float32))
    for i in range(c.get("members", 0)):
      z.writestr(f"pad/m{i}.npy", empty.getvalue())
  for how, arg in c.get("raw", ()):
    data = bytearray(path.read_bytes())
    if how == "flip" and data:
      for _ in range(arg):
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    elif how == "truncate":
      data = data[:int(len(data) * arg)]
    path.write_bytes(bytes(data))


# --- .pt mutations --------------------------------------------------------------------------

def mp_flip(c, rng):
  p = bytearray(c["pkl"])
  for _ in range(int(rng.integers(1, 8))):
    p[int(rng.integers(2, len(p)))] ^= 1 << int(rng.integers(8))
  c["pkl"] = bytes(p)
  return "flip"


def mp_truncate(c, rng):
  c["pkl"] = c["pkl"][:int(rng.integers(1, len(c["pkl"])))]
  return "truncate"


def _prefix(c, ops):
  """Runs `ops` (leaving nothing on the stack) before the pickle's own objects."""
  c["pkl"] = c["pkl"][:2] + ops + c["pkl"][2:]


def mp_globals(c, rng):
  n = int(rng.choice([10, 999, 1001, 5000, 150_000]))
  _prefix(c, b"".join(_g("m", f"{i:x}") + POP for i in range(n)))
  return f"globals{n}"


def mp_deep(c, rng):
  depth = int(rng.choice([50, 101, 5000]))
  inner = None
  for _ in range(depth):
    subs = EMPTY_DICT + (_s("m") + inner + SETITEM if inner else b"")
    inner = _g("nn", "Module") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + _s("_parameters") \
        + EMPTY_DICT + SETITEM + _s("_modules") + subs + SETITEM + BUILD
  c["pkl"] = b"\x80\x02" + inner + STOP
  return f"deep{depth}"


def mp_build(c, rng):
  target = _pick(rng, [("builtins", "set"), ("torch", "Size"), ("torch", "device"),
                       ("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
                       ("torch", "FloatStorage"), ("torch._utils", "_rebuild_parameter")])
  _prefix(c, _g(*target) + EMPTY_DICT + _s("planted") + _i(1) + SETITEM + BUILD + POP)
  return "build"


def mp_objects(c, rng):
  n = int(rng.choice([1 << 16, 1 << 20, 2 << 20, 3 << 20]))
  op = _pick(rng, [EMPTY_LIST + APPEND, b"\x8f" + APPEND, EMPTY_DICT + APPEND])  # \x8f: set
  _prefix(c, EMPTY_LIST + op * (n // 2) + POP)
  return f"objects{n >> 10}k"


def mp_tensor(c, rng):
  size = tuple(int(v) for v in rng.choice([0, 1, 3, 4, 10**9, -1], size=int(rng.integers(1, 4))))
  stride = tuple(int(v) for v in rng.choice([0, 1, 3, -1, 2**62], size=len(size)))
  t = _tensor("0", size, stride, offset=int(rng.choice([0, 1, 11, 2**40])),
              numel=int(rng.choice([12, 0, 10**15])))
  c["pkl"] = b"\x80\x02" + EMPTY_DICT + _s("w") + t + SETITEM + STOP
  return "tensor"


def mp_storage(c, rng):
  key = _pick(rng, sorted(c["storages"]))
  how = int(rng.integers(3))
  if how == 0:
    del c["storages"][key]
  elif how == 1:
    c["storages"][key] = c["storages"][key][:3]
  else:
    c["order"] = _pick(rng, ["big", "middle", "", "little\x00"])
  return f"storage{how}"


def mp_zip(c, rng):
  c["extra"] = _pick(rng, [[("other/data.pkl", b"\x80\x02}.")], [("archive/x", b"")],
                          [("archive/data.pkl2", b"")]])
  return "zip"


PT_MUTATIONS = [mp_flip, mp_flip, mp_truncate, mp_globals, mp_deep, mp_build, mp_objects,
                mp_tensor, mp_storage, mp_zip]


# --- one case, in the worker ------------------------------------------------------------------

_WORKER = {}


def _inputs(spec, variables):
  """A batch of real network inputs for an input spec (cached): sample spectra through the
  bundle's own preprocessing (numpy: `inference.network_inputs` computes the same under jit)."""
  from astrotl import inference, data, shapes
  from astrotl.preprocess import spectra
  key = json.dumps(spec, sort_keys=True)
  if key not in _WORKER:
    kind = spec.get("type", "spectrum")
    if kind == "spectrum":
      if "raw" not in _WORKER:
        files = [str(r["path"]) for r in data.sample_index("spectra")][:6]
        raw = inference.spectrum_inputs(files)[1]
        _WORKER["raw"] = spectra.resample_pixels(raw["u"], raw["flux"], raw["ivar"],
                                                 raw["mask"])
      _WORKER[key] = np.asarray(spectra.network_input(*_WORKER["raw"], spec), np.float32)
    elif kind == "lightcurve":
      _WORKER[key] = np.random.default_rng(0).normal(size=(6, 16)).astype(np.float32)
    else:
      _WORKER[key] = np.random.default_rng(0).random(
          (6,) + shapes.input_shape(spec, variables)[1:]).astype(np.float32)
  return _WORKER[key]


def _forward(model):
  """'' if every network's outputs are what the bundle promises, else what is wrong.
  (Eager, op by op: compiling each mutated network would cost more than running it.)"""
  outs = {}
  for net in model.networks.values():
    x = _inputs(model.input, net.variables)
    out = np.asarray(net.finish(net.model.apply(net.variables, x)))
    if out.shape != (len(x), net.width):
      return f"{net.name}: outputs of shape {out.shape}, expected ({len(x)}, {net.width})"
    if not np.isfinite(out).all():
      return f"{net.name}: {int((~np.isfinite(out)).sum())} outputs are not finite"
    if net.output == "classes" and not np.allclose(out.sum(-1), 1, atol=1e-3):
      return f"{net.name}: probabilities sum to {out.sum(-1).min():.4g}..{out.sum(-1).max():.4g}"
    outs[net.name] = out
  cols = model.outputs_to_columns(outs)
  for c in ("class1", "pred_class"):
    if c in cols and not all(cols[c]):
      return f"{c} is empty for a row with finite probabilities"
  return ""


def _reset_peak():
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets VmHWM to the current RSS
  except OSError:
    pass


def peak_rss(field="VmHWM") -> int:
  """The worker's peak (VmHWM) or current (VmRSS) resident memory in bytes."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_case(kind, path, via_bundle=False):
  """{outcome: ok | refused | WRONG | EXCEPTION, reason, cpu_s, wall_s, rss}."""
  from astrotl import bundle
  from astrotl.io import weights
  _reset_peak()
  start_rss = peak_rss("VmRSS")
  t0, c0 = time.perf_counter(), time.process_time()
  out = {}
  try:
    if kind == "bundle":
      model = bundle.load_model(path)
      out = _took(t0, c0)  # the load alone: the checks below compile the networks
      wrong = _forward(model)
      out.update({"outcome": "WRONG", "reason": wrong} if wrong else {"outcome": "ok"})
    else:
      got = weights.load_torch(path)
      if not all(isinstance(v, np.ndarray) for v in got.values()):
        out = {"outcome": "WRONG", "reason": "entries that are not arrays"}
      elif via_bundle:
        bundle.load_model(f"torch:{path}")
        out = {"outcome": "WRONG", "reason": "a file that is no Tan et al. network loaded"}
      else:
        out = {"outcome": "ok"}
  except (bundle.BundleError, weights.WeightsError) as e:
    text = str(e)
    out.update(outcome="refused" if "\n" not in text else "MULTI-LINE",
               error=type(e).__name__, reason=text.replace(str(path), "<file>")[:160])
  except BaseException as e:  # noqa: B036 -- RecursionError, MemoryError, anything
    out.update(outcome="EXCEPTION", error=type(e).__name__,
               reason=traceback.format_exc(limit=-3)[-600:])
  if "load_cpu_s" not in out:
    out.update(_took(t0, c0))
  out.update(cpu_s=time.process_time() - c0, wall_s=time.perf_counter() - t0, rss=peak_rss(),
             rss_start=start_rss)
  return out


def _took(t0, c0):
  return {"load_cpu_s": time.process_time() - c0, "load_wall_s": time.perf_counter() - t0}


def run_batch(items):
  return [load_case(*item) for item in items]


def _worker_init(root):
  sys.path.insert(0, root)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import warnings
  warnings.simplefilter("ignore")


# --- driver -----------------------------------------------------------------------------------

def make_case(rng, bundles, pts, folder, i):
  """Writes case i into `folder`: (description, (kind, path, via_bundle))."""
  if rng.random() < 0.7:
    kind = _pick(rng, sorted(bundles))
    arrays, meta = bundles[kind]
    c = {"arrays": dict(arrays), "meta": json.loads(json.dumps(meta))}
    done = [_pick(rng, BUNDLE_MUTATIONS)(c, rng) for _ in range(int(rng.integers(1, 4)))]
    path = folder / f"case{i:06d}.npz"
    write_bundle(path, c, rng)
    return {"seed": f"bundle/{kind}", "mutations": done}, ("bundle", str(path), False)
  kind = _pick(rng, sorted(pts))
  pkl, storages = pts[kind]
  c = {"pkl": pkl, "storages": dict(storages), "order": "little", "extra": ()}
  done = [_pick(rng, PT_MUTATIONS)(c, rng) for _ in range(int(rng.integers(1, 3)))]
  path = folder / f"case{i:06d}.pt"
  write_pt(path, c["pkl"], c["storages"], c["order"], extra=c["extra"])
  return {"seed": f"pt/{kind}", "mutations": done}, ("pt", str(path), rng.random() < 0.2)


def run(n, seed, workers=1, batch=20, log=print):
  """Fuzzes `n` cases (loaded in `workers` processes; 0 = in this one); the summary."""
  rng = np.random.default_rng(seed)
  bundles = seed_bundles()
  pts = seed_pts(rng)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="fuzz_bundles_"))
  ctx = multiprocessing.get_context("spawn")
  root = str(HERE.parent)
  # A fresh worker now and then: its caches of compiled ops grow with every new network.
  new_pool = lambda: ctx.Pool(workers, initializer=_worker_init, initargs=(root,),
                              maxtasksperchild=25)
  pool = new_pool() if workers else None
  cases, outcomes = [], []
  t0 = time.time()
  try:
    for start in range(0, n, batch):
      items = []
      for i in range(start, min(start + batch, n)):
        case, item = make_case(rng, bundles, pts, tmp, i)
        case["bytes"] = os.path.getsize(item[1])
        cases.append(case)
        items.append(item)
      if pool is None:
        res = run_batch(items)
      else:
        try:
          res = pool.apply_async(run_batch, (items,)).get(MAX_SECONDS * 4 * len(items) + 120)
        except Exception as e:  # hung, or killed (for memory): each case alone
          log(f"batch from case {start} failed ({type(e).__name__}); one by one")
          pool.terminate()
          res = []
          for item in items:
            pool = new_pool()
            try:
              res += pool.apply_async(run_batch, ([item],)).get(120)
            except Exception as e1:
              res.append({"outcome": "EXCEPTION", "error": f"worker {type(e1).__name__}",
                          "reason": "the worker hung or died", "cpu_s": 120.0,
                          "wall_s": 120.0, "load_cpu_s": 120.0, "load_wall_s": 120.0,
                          "rss": 0, "rss_start": 0})
            pool.terminate()
          pool = new_pool()
      outcomes += res
      for _, path, _ in items:
        os.unlink(path)
      if (start // batch) % 25 == 0:
        log(f"{len(outcomes)}/{n} cases, {time.time() - t0:.0f} s")
  finally:
    if pool is not None:
      pool.terminate()
    shutil.rmtree(tmp, ignore_errors=True)
  return summarise(cases, outcomes, time.time() - t0, seed, workers)


def summarise(cases, outcomes, seconds, seed, workers):
  grew = lambda o: o["rss"] - o.get("rss_start", 0)
  bad = lambda o: (o["outcome"] not in ("ok", "refused") or o["load_cpu_s"] > MAX_SECONDS
                   or grew(o) > MAX_RSS_BYTES)
  failures = [dict(c, **o) for c, o in zip(cases, outcomes) if bad(o)]
  slowest = max(range(len(outcomes)), key=lambda i: outcomes[i]["load_cpu_s"], default=None)
  biggest = max(range(len(outcomes)), key=lambda i: outcomes[i]["rss"], default=None)
  checks = max(range(len(outcomes)), key=lambda i: outcomes[i]["cpu_s"] - outcomes[i][
      "load_cpu_s"], default=None)
  reasons = collections.Counter(
      o["reason"].split(":")[1].strip()[:50] if ":" in o["reason"] else o["reason"][:50]
      for o in outcomes if o["outcome"] == "refused")
  return {
      "what": "mutated model bundles and PyTorch .pt files through bundle.load_model and "
              "io.weights.load_torch; every accepted bundle's networks run on real inputs",
      "command": f"PYTHONPATH=. python benchmarks/fuzz_bundles.py --n={len(cases)} "
                 f"--seed={seed} --workers={workers}",
      "cases": len(cases),
      "bundle_cases": sum(1 for c in cases if c["seed"].startswith("bundle")),
      "pt_cases": sum(1 for c in cases if c["seed"].startswith("pt")),
      "seconds": round(seconds, 1),
      "exceptions_other_than_documented": sum(1 for o in outcomes
                                              if o["outcome"] in ("EXCEPTION", "MULTI-LINE")),
      "silently_wrong_outputs": sum(1 for o in outcomes if o["outcome"] == "WRONG"),
      "loads_over_5_cpu_s": sum(1 for o in outcomes if o["load_cpu_s"] > MAX_SECONDS),
      "loads_over_5_wall_s": sum(1 for o in outcomes if o["load_wall_s"] > MAX_SECONDS),
      "max_load_cpu_seconds": round(max((o["load_cpu_s"] for o in outcomes), default=0), 3),
      "max_load_wall_seconds": round(max((o["load_wall_s"] for o in outcomes), default=0), 3),
      "max_case_cpu_seconds_with_checks": round(max((o["cpu_s"] for o in outcomes),
                                                    default=0), 3),
      "cases_over_1_gb": sum(1 for o in outcomes if grew(o) > MAX_RSS_BYTES),
      "peak_case_rss_mb": round(max((o["rss"] for o in outcomes), default=0) / 2**20, 1),
      "peak_case_rss_increase_mb": round(max((o["rss"] - o.get("rss_start", o["rss"])
                                              for o in outcomes), default=0) / 2**20, 1),
      "outcomes": dict(collections.Counter(f"{c['seed'].split('/')[0]} {o['outcome']}"
                                           for c, o in zip(cases, outcomes))),
      "accepted_by_seed": dict(collections.Counter(c["seed"] for c, o in zip(cases, outcomes)
                                                   if o["outcome"] == "ok")),
      "mutations_applied": dict(sorted(collections.Counter(
          m.rstrip("0123456789.-kMB").rstrip("-") for c in cases for m in c["mutations"])
          .items())),
      "top_refusal_reasons": dict(reasons.most_common(30)),
      "slowest_case": dict(cases[slowest], **outcomes[slowest]) if slowest is not None else None,
      "largest_case": dict(cases[biggest], **outcomes[biggest]) if biggest is not None else None,
      "slowest_checks_case": dict(cases[checks], **outcomes[checks]) if checks is not None
      else None,
      "failures": failures[:50],
      "python": sys.version.split()[0], "numpy": np.__version__,
      "machine": platform.machine(), "cpus": os.cpu_count(),
      "date": time.strftime("%Y-%m-%d"),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=5000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=1)
  parser.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "fuzz_bundles.json")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  summary = run(args.n, args.seed, args.workers)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
  keys = ("cases", "exceptions_other_than_documented", "silently_wrong_outputs",
          "loads_over_5_cpu_s", "max_load_cpu_seconds", "max_load_wall_seconds",
          "cases_over_1_gb", "peak_case_rss_mb", "peak_case_rss_increase_mb")
  print(json.dumps({k: summary[k] for k in keys}), "->", args.out)


if __name__ == "__main__":
  main()
