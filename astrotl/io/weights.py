"""Foreign weights into astrotl variable pytrees, without running any code from the file.

A PyTorch state dict, given as a mapping name -> numpy array (from an `.npz` read by
`load_npz`, or from a `.pt` file read by `load_torch`), is mapped onto Flax paths by
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
paths) is collected and raised as one WeightsError listing all of them on one line.
"""

import collections
import importlib.resources
import io
import json
import math
import os
import pathlib
import pickle
import re
import stat
import zipfile
import zlib

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


MAX_WEIGHTS_BYTES = 2 * 2**30   # all arrays of one weights file (Tan et al.'s are ~60 MB)
MAX_MEMBERS = 4096              # arrays of one .npz (the bundled model has 108)
MAX_PT_MEMBERS = 20_000         # members of a .pt zip (one per tensor storage)
# A .pt file's data.pkl (the tensors are stored beside it).  Tan et al.'s are 30 kB; a
# state dict of 10,000 tensors is about 2 MB.  A pickle's objects take up to ~100 times
# its bytes in memory (one opcode byte can make one empty list), so this bounds memory.
MAX_PICKLE_BYTES = 2 * 2**20
MAX_GLOBALS = 1000              # distinct classes and functions a .pt pickle names
MAX_MODULE_DEPTH = 100          # nesting of a pickled module tree


class WeightsError(ValueError):
  """Foreign weights that do not fit, or a file that is not safe weights; the message
  lists every problem."""


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
    raise WeightsError("variables do not fit the model: " + "; ".join(problems))


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
    raise WeightsError("cannot import state dict: " + "; ".join(problems))
  return out


def _weights_file(path) -> pathlib.Path:
  """`path` if it is a regular file; FileNotFoundError if absent, WeightsError if it is
  a FIFO, device, directory or larger than MAX_WEIGHTS_BYTES (nothing is opened)."""
  path = pathlib.Path(path)
  try:
    st = os.stat(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no such weights file") from None
  except OSError as e:
    raise WeightsError(f"{path}: cannot read weights file ({e.strerror or e})") from None
  if not stat.S_ISREG(st.st_mode):
    raise WeightsError(f"{path}: not a regular file")
  if st.st_size > MAX_WEIGHTS_BYTES + MAX_PICKLE_BYTES:
    raise WeightsError(f"{path}: {st.st_size} bytes, more than a weights file may hold")
  return path


def read_npz(source, where=None, limits=None) -> dict:
  """name -> array from an `.npz` (a path or a binary file object), reading no pickle.

  Checks every member's .npy header before reading its data: object arrays (pickle),
  non-numeric dtypes, and arrays that promise more data than the member holds or than
  MAX_WEIGHTS_BYTES in all raise WeightsError, as do more than MAX_MEMBERS members and
  files that are not .npz at all.  `limits`: {name: most bytes} for single members,
  checked before they are read.  Shared by load_npz, upsilont and
  astrotl.checkpoint.load_bundle.
  """
  where = where or source
  if isinstance(source, (str, os.PathLike)):
    source = _weights_file(source)  # never open a FIFO or a device
  try:
    with zipfile.ZipFile(_counted(source, where, MAX_MEMBERS, "arrays")) as z:
      infos = z.infolist()
      if len(infos) > MAX_MEMBERS:
        raise WeightsError(f"{where}: {len(infos)} arrays, more than {MAX_MEMBERS}")
      total = sum(i.file_size for i in infos)
      if total > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{where}: {total} bytes of arrays, more than {MAX_WEIGHTS_BYTES}")
      out = {}
      for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if limits and name in limits and info.file_size > limits[name]:
          raise WeightsError(f"{where}: {name} is {info.file_size} bytes, more than "
                             f"{limits[name]}")
        with z.open(info) as f:
          version = np.lib.format.read_magic(f)
          reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
          shape, fortran, dtype = reader(f)
          if dtype.hasobject:
            raise WeightsError(f"{where}: {name} is an object array, which needs pickle "
                               "(np.load with allow_pickle=True); refused")
          if dtype.kind not in "biuf" or dtype.fields is not None:
            raise WeightsError(f"{where}: {name} has dtype {dtype}, not a numeric array")
          if math.prod(shape) * dtype.itemsize > info.file_size:
            raise WeightsError(f"{where}: {name} declares shape {shape} of {dtype}, more data "
                               "than the file holds")
        with z.open(info) as f:  # read_array reads the header again
          out[name] = np.lib.format.read_array(f, allow_pickle=False)
      return out
  except WeightsError:
    raise
  except (zipfile.BadZipFile, zlib.error, NotImplementedError, ValueError, EOFError, OSError,
          SyntaxError) as e:  # NotImplementedError: a compression or zip version zipfile lacks
    raise WeightsError(f"{where}: not a readable .npz file ({_one_line(e)})") from None


def _counted(source, where, most, what):
  """`source` (a path or a binary file object), refused with WeightsError when its zip
  directory lists more than `most` members or is larger than they need: zipfile parses
  the whole directory on opening (200,000 members: seconds and 300 MB)."""
  f = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
  try:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - (1 << 16) - 22))
    tail = f.read()
  finally:
    if f is not source:
      f.close()
    else:
      f.seek(0)
  end = tail.rfind(b"PK\x05\x06")  # the end of central directory record
  if end >= 0 and len(tail) - end >= 22:
    n = int.from_bytes(tail[end + 10:end + 12], "little")
    directory = int.from_bytes(tail[end + 12:end + 16], "little")
    locator = tail.rfind(b"PK\x06\x07", 0, end)  # zip64 (np.savez past 65,535 members)
    if locator >= 0 and (n == 0xFFFF or directory == 0xFFFFFFFF):
      raise WeightsError(f"{where}: over 65,535 {what} (a zip64 directory), more than {most}")
    if n > most or directory > most * 1024:
      raise WeightsError(f"{where}: {n} {what} ({directory} bytes of zip directory), more "
                         f"than {most}")
  return source


def load_npz(path) -> dict:
  """name -> array from an `.npz` (no pickle; see read_npz)."""
  return read_npz(path)


# --- PyTorch .pt files ------------------------------------------------------------------------

_REFUSED = ("re-save it in PyTorch >= 1.6 with torch.save(model.state_dict(), path) "
            "(whole modules work too), which writes the zip format read here")


def load_torch(path) -> dict:
  """name -> numpy array from a PyTorch `.pt` file, without PyTorch and without running
  any code the file holds.

  Reads the zip format of `torch.save` (PyTorch >= 1.6): `<archive>/data.pkl`, with each
  tensor's bytes in `<archive>/data/<key>`.  The pickle is read by `_Unpickler`, which
  never imports a module or calls anything but an explicit allowlist of harmless
  builders: every other class becomes an inert stand-in that only keeps its state.
  So a saved state dict and a whole pickled module (`torch.save(model)`, as Tan et al.
  published their networks) both load; for a module the parameters and buffers are
  collected from the stand-ins' `_parameters`, `_buffers` and `_modules`, named as
  `model.state_dict()` would name them.  data.pkl is at most MAX_PICKLE_BYTES, names at
  most MAX_GLOBALS distinct classes, and a module tree nests at most MAX_MODULE_DEPTH
  levels (each a WeightsError beyond).  Legacy (non-zip pickle) and tar `.pt` files can
  only be read by running their pickle, so they raise WeightsError saying how to
  re-save them.
  """
  path = _weights_file(path)
  with open(path, "rb") as f:
    head = f.read(512)
  if zipfile.is_zipfile(path):
    obj = _read_torch_zip(path)
  elif len(head) > 262 and head[257:262] == b"ustar":
    raise WeightsError(f"{path}: a tar-format PyTorch file (PyTorch < 0.4), which can only "
                       f"be read by running its pickle; {_REFUSED}")
  elif head[:1] == b"\x80" or head[:1] in (b"(", b"c", b"}", b"]"):
    raise WeightsError(f"{path}: a legacy PyTorch file (a plain pickle, from PyTorch < 1.6 or "
                       f"_use_new_zipfile_serialization=False), which can only be read by "
                       f"running its pickle; {_REFUSED}")
  else:
    raise WeightsError(f"{path}: not a PyTorch .pt file (neither the zip format of "
                       "torch.save nor a pickle)")
  if isinstance(obj, _Inert):
    obj = _module_state(obj, path)
  if not isinstance(obj, dict):
    raise WeightsError(f"{path}: expected a state dict or a torch module, got "
                       f"{type(obj).__name__}")
  bad = sorted(str(k) for k, v in obj.items()
               if not (isinstance(k, str) and isinstance(v, _Tensor)))
  if bad:
    raise WeightsError(f"{path}: entries that are not tensors: {bad}")
  return {k: v.array for k, v in obj.items()}


def _read_torch_zip(path):
  try:
    with zipfile.ZipFile(_counted(path, path, MAX_PT_MEMBERS, "members")) as z:
      infos = z.infolist()
      pickles = [i for i in infos if i.filename.endswith("/data.pkl")
                 and i.filename.count("/") == 1]
      if len(pickles) != 1:
        raise WeightsError(f"{path}: a zip file without one <archive>/data.pkl: not a "
                           "PyTorch .pt file")
      prefix = pickles[0].filename[:-len("data.pkl")]
      members = {i.filename[len(prefix):]: i for i in infos if i.filename.startswith(prefix)}
      total = sum(i.file_size for i in infos)
      if pickles[0].file_size > MAX_PICKLE_BYTES:
        raise WeightsError(f"{path}: data.pkl is {pickles[0].file_size} bytes, more than "
                           f"{MAX_PICKLE_BYTES} (a state dict of 10,000 tensors is about 2 MB)")
      if total > MAX_WEIGHTS_BYTES + MAX_PICKLE_BYTES:
        raise WeightsError(f"{path}: members of {total} bytes, more than a weights file may hold")
      order = "little"
      if "byteorder" in members:
        with z.open(members["byteorder"]) as f:
          order = f.read(16).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
          raise WeightsError(f"{path}: unknown byteorder {order!r}")
      data = z.read(pickles[0])
      unpickler = _Unpickler(io.BytesIO(data), z, prefix, members, order, path)
      return unpickler.load()
  except WeightsError as e:
    if str(path) in str(e):
      raise
    raise WeightsError(f"{path}: {e}") from None
  except RecursionError:
    raise WeightsError(f"{path}: data.pkl nests too deeply") from None
  except (pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, NotImplementedError,
          ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, OSError,
          MemoryError, OverflowError) as e:
    raise WeightsError(f"{path}: not a readable PyTorch .pt file ({_one_line(e)})") from None


def _one_line(e) -> str:
  """'Type: message' on one line, at most 300 characters (the message may quote the file)."""
  text = " ".join(f"{type(e).__name__}: {e}".split())
  return text if len(text) <= 300 else text[:297] + "..."


class _Inert:
  """Stands in for any pickled class: keeps its state, runs nothing."""

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
      state = {**(state[0] if isinstance(state[0], dict) else {}), **state[1]}
    if not isinstance(state, dict):
      state = {"_state": state}
    # Dunder names would shadow methods of the stand-in (a second BUILD on the same
    # object looks __setstate__ up on the instance first).
    self.__dict__.update({k: v for k, v in state.items()
                          if isinstance(k, str) and not k.startswith("__")})


class _Frozen:
  """Base of the loader's own objects: a pickle may not BUILD (set state on) them."""

  __slots__ = ()

  def __setstate__(self, state):
    raise WeightsError(f"the pickle sets state on a {type(self).__name__[1:]}")


class _Builder(_Frozen):
  """One of the loader's builders as the pickle sees it.  A plain function would let BUILD
  set attributes on it, for the rest of the process; this refuses."""

  __slots__ = ("fn",)

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, *args):
    return self.fn(*args)


class _Tensor(_Frozen):
  """A rebuilt tensor: its values as a native-endian numpy array."""

  __slots__ = ("array",)

  def __init__(self, array):
    self.array = array


class _Storage(_Frozen):
  """One tensor storage: a flat numpy array over the bytes of `data/<key>`."""

  __slots__ = ("array",)

  def __init__(self, array):
    self.array = array


class _StorageType(_Frozen):
  """What `torch.FloatStorage` and friends unpickle to: the dtype of a storage."""

  __slots__ = ("dtype",)

  def __init__(self, dtype):
    self.dtype = dtype


class _OrderedDict(collections.OrderedDict):
  """collections.OrderedDict for the pickle (state dicts, _parameters, _modules): built
  only from plain containers, and its pickled state (a state dict's `_metadata`) is
  dropped."""

  def __init__(self, items=()):
    super().__init__(items if type(items) in (dict, _OrderedDict) else _items(items))

  def __setstate__(self, state):
    pass


_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8",
    "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?", "UntypedStorage": "u1",
}
_MAX_DIMS = 64  # torch's limit


def _ints(value, what):
  if not (isinstance(value, tuple) and len(value) <= _MAX_DIMS
          and all(type(v) is int and v >= 0 for v in value)):
    raise WeightsError(f"tensor {what} {value!r} is not a tuple of non-negative integers")
  return value


class _Unpickler(pickle.Unpickler):
  """Reads a `.pt` file's data.pkl without importing or calling anything unsafe.

  find_class never imports: it maps the few names a state dict or module pickle needs
  to this module's own builders (which check their arguments and only build numpy
  arrays, tuples, strings and dicts) and everything else to an inert class.  So
  REDUCE, NEWOBJ, INST and OBJ can only ever call those builders or an inert class,
  and BUILD only ever reaches _Inert.__setstate__ (which stores data), _OrderedDict's
  (which drops it) or a _Frozen object, the builders themselves included (which
  refuses).  At most MAX_GLOBALS distinct names make stand-ins.  persistent_load maps
  storage records to numpy buffers read from the zip, checked against the member sizes.
  """

  def __init__(self, file, zf, prefix, members, order, path):
    super().__init__(file)
    self._zip, self._prefix, self._members = zf, prefix, members
    self._order = "<" if order == "little" else ">"
    self._path = path
    self._storages = {}
    self._bytes = 0
    self._inert = {}
    self._rebuild = _Builder(self._rebuild_tensor)
    self._safe = {
        ("collections", "OrderedDict"): _OrderedDict,
        ("builtins", "set"): _Builder(_set),
        ("builtins", "frozenset"): _Builder(_frozenset),
        ("torch._utils", "_rebuild_tensor"): self._rebuild,
        ("torch._utils", "_rebuild_tensor_v2"): self._rebuild,
        ("torch._utils", "_rebuild_parameter"): _Builder(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Builder(_rebuild_parameter),
        ("torch._tensor", "_rebuild_from_type_v2"): _Builder(self._rebuild_from_type),
        ("torch", "Size"): _Builder(_size),
        ("torch", "device"): _Builder(_device),
    }

  def find_class(self, module, name):
    module = {"__builtin__": "builtins"}.get(module, module)
    safe = self._safe.get((module, name))
    if safe is not None:
      return safe
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(np.dtype(_STORAGE_DTYPES[name]).newbyteorder(self._order))
    key = (str(module), str(name))
    if key not in self._inert:
      # Each stand-in is a new class (~1 kB, slow to make): a real module names a few dozen.
      if len(self._inert) >= MAX_GLOBALS:
        raise WeightsError(f"{self._path}: data.pkl names more than {MAX_GLOBALS} distinct "
                           "classes or functions")
      self._inert[key] = type(re.sub(r"\W", "_", key[1]) or "_", (_Inert,),
                              {"__module__": re.sub(r"[^\w.]", "_", key[0])})
    return self._inert[key]

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
            and type(pid[4]) is int and pid[4] >= 0):
      raise WeightsError(f"{self._path}: unexpected persistent id {pid!r:.200}")
    _, kind, key, _, numel = pid
    if key in self._storages:
      storage = self._storages[key]
      if storage.array.dtype != kind.dtype or storage.array.size < numel:
        raise WeightsError(f"{self._path}: storage {key} is used with two dtypes or sizes")
      return storage
    info = self._members.get(f"data/{key}")
    nbytes = numel * kind.dtype.itemsize
    if info is None or info.file_size < nbytes:
      raise WeightsError(f"{self._path}: storage {key} of {nbytes} bytes is missing or short")
    self._bytes += nbytes
    if self._bytes > MAX_WEIGHTS_BYTES:
      raise WeightsError(f"{self._path}: tensors of more than {MAX_WEIGHTS_BYTES} bytes")
    with self._zip.open(info) as f:
      data = f.read(nbytes)
    if len(data) != nbytes:
      raise WeightsError(f"{self._path}: storage {key} is short")
    storage = self._storages[key] = _Storage(np.frombuffer(data, kind.dtype, numel))
    return storage

  def _rebuild_tensor(self, storage, offset, size, stride, *rest):
    """torch._utils._rebuild_tensor_v2: a strided view of a storage, as a numpy copy."""
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
      raise WeightsError(f"{self._path}: a tensor without a valid storage and offset")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
      raise WeightsError(f"{self._path}: tensor size {size} and stride {stride} differ in rank")
    flat = storage.array
    numel = math.prod(size)
    if numel == 0:
      return _Tensor(np.zeros(size, flat.dtype.newbyteorder("=")))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    # numel <= storage size also bounds expanded (stride 0) views: memory follows the file.
    self._bytes += numel * flat.dtype.itemsize
    if last >= flat.size or numel > flat.size or self._bytes > MAX_WEIGHTS_BYTES:
      raise WeightsError(f"{self._path}: tensor of size {size}, stride {stride} at offset "
                         f"{offset} does not fit its storage of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], size, [s * flat.dtype.itemsize for s in stride], writeable=False)
    return _Tensor(view.astype(flat.dtype.newbyteorder("=")))

  def _rebuild_from_type(self, func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2 (tensor subclasses): the plain tensor."""
    if func is not self._rebuild or not isinstance(args, tuple):
      raise WeightsError(f"{self._path}: a tensor subclass built by {func!r:.100}")
    return func(*args)


def _rebuild_parameter(data, *rest):
  """torch._utils._rebuild_parameter[_with_state]: the parameter's tensor."""
  if not isinstance(data, _Tensor):
    raise WeightsError("a parameter that is not a tensor")
  return data


def _set(items=()):
  return set(_items(items))


def _frozenset(items=()):
  return frozenset(_items(items))


def _items(items):
  # Only plain containers: iterating anything else could be asked to run its code.
  if not isinstance(items, (list, tuple)):
    raise WeightsError(f"a set of {type(items).__name__}")
  return items


def _size(items=()):
  return _ints(tuple(_items(items)), "size")


def _device(*args):
  return str(args[0]) if args else "cpu"


def _module_state(root, path):
  """state_dict-style names -> tensors from an inertly unpickled nn.Module tree (walked
  with a stack, not recursion: a pickle may nest modules arbitrarily deep)."""
  out, seen = {}, set()
  todo = [(root, "", 0)]
  while todo:
    obj, prefix, depth = todo.pop()
    if depth > MAX_MODULE_DEPTH:
      raise WeightsError(f"{path}: the module tree nests more than {MAX_MODULE_DEPTH} "
                         "levels deep")
    if id(obj) in seen or len(seen) > 100_000:
      raise WeightsError(f"{path}: the module tree has a cycle or is too large")
    seen.add(id(obj))
    d = getattr(obj, "__dict__", {})
    if "_parameters" not in d and "_modules" not in d:
      raise WeightsError(f"{path}: the pickle holds neither a state dict nor a torch module")
    skip = d.get("_non_persistent_buffers_set")
    skip = set(skip) if isinstance(skip, (set, frozenset, list, tuple)) else set()
    for group in ("_parameters", "_buffers"):
      tensors = d.get(group) or {}
      if not isinstance(tensors, dict):
        raise WeightsError(f"{path}: {prefix}{group} is not a dict")
      for name, t in tensors.items():
        if t is not None and name not in skip:
          out[f"{prefix}{name}"] = t
    modules = d.get("_modules") or {}
    if not isinstance(modules, dict):
      raise WeightsError(f"{path}: {prefix}_modules is not a dict")
    # Reversed onto the stack, so modules are visited (and named) in their own order.
    todo += [(sub, f"{prefix}{name}.", depth + 1)
             for name, sub in reversed(list(modules.items())) if sub is not None]
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
  with npz.open("rb") as fh:
    state = read_npz(fh, npz)
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
