"""Weight files that try to run code: no format, no load path may ever execute it.

Every payload would create `marker` if any of its code ran.  Each is tried as a plain
pickle, a protocol-0 pickle and inside the zip format of torch.save, through
weights.load_torch, bundle.from_torch / load_model('torch:...') and `python -m astrotl.scan --model=torch:`,
and .npz files holding pickled object arrays through load_npz and load_bundle.
"""

import io
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from astrotl import bundle, checkpoint
from astrotl.io import weights as W

REPO = pathlib.Path(__file__).resolve().parents[1]


# --- pickle opcodes, by hand (pickle itself refuses to write most of these) -------------

sys.path.insert(0, str(REPO / "benchmarks"))
try:  # one copy of the hand-written opcodes, shared with the bundle fuzz
  from fuzz_bundles import _g, _i, _s  # noqa: E402  pylint: disable=g-import-not-at-top
finally:
  sys.path.remove(str(REPO / "benchmarks"))


def _p2(*ops):
  return b"\x80\x02" + b"".join(ops) + b"."


MARK, TUPLE, REDUCE, BUILD, NEWOBJ = b"(", b"t", b"R", b"b", b"\x81"
EMPTY_DICT, SETITEM = b"}", b"s"
EMPTY_TUPLE, NEWFALSE, BINPERSID, TUPLE1 = b")", b"\x89", b"Q", b"\x85"


class _Evil:
  """Pickles as os.system(cmd): what the QA's evil.pt held."""

  def __init__(self, cmd):
    self.cmd = cmd

  def __reduce__(self):
    return (os.system, (self.cmd,))


class _EvilSetstate:
  """A class whose own __setstate__ would run a command (unpickling must not call it)."""

  def __setstate__(self, state):
    os.system(state["cmd"])


def payloads(marker):
  """name -> pickle bytes, each of which creates `marker` if its code runs."""
  cmd = f"touch {marker}"
  nested = _EvilSetstate()
  nested.__dict__["cmd"] = cmd
  return {
      "os.system": pickle.dumps(_Evil(cmd), protocol=2),
      "os.system-protocol-0": pickle.dumps(_Evil(cmd), protocol=0),
      "builtins.eval": _p2(_g("builtins", "eval"), MARK,
                           _s(f"__import__('os').system({cmd!r})"), TUPLE, REDUCE),
      "builtins.exec": _p2(_g("__builtin__", "exec"), MARK,
                           _s(f"import os; os.system({cmd!r})"), TUPLE, REDUCE),
      "subprocess.Popen": _p2(_g("subprocess", "Popen"), MARK, MARK, _s("touch"), _s(str(marker)),
                              b"l", TUPLE, REDUCE),
      "getattr(__import__('os'), 'system')": _p2(
          _g("builtins", "getattr"), MARK, _g("builtins", "__import__"), MARK, _s("os"), TUPLE,
          REDUCE, _s("system"), TUPLE, REDUCE, MARK, _s(cmd), TUPLE, REDUCE),
      "INST os.system": b"(S'" + cmd.encode() + b"'\nios\nsystem\n.",
      "OBJ os.system": b"(cos\nsystem\nS'" + cmd.encode() + b"'\no.",
      "NEWOBJ on a function": _p2(_g("os", "system"), MARK, _s(cmd), TUPLE, NEWOBJ),
      "nested evil __setstate__": pickle.dumps({"model": nested, "w": [1, 2]}, protocol=2),
      # An inert object given a __setstate__ attribute, then BUILT again: the second
      # BUILD must not find a callable on the instance.
      "BUILD twice": _p2(_g("evil", "Thing"), EMPTY_TUPLE, NEWOBJ,
                         EMPTY_DICT, _s("__setstate__"), _g("os", "system"), SETITEM, BUILD,
                         _s(cmd), BUILD),
      # An allowed builder asked to iterate an object whose `keys` is os.system.
      "OrderedDict(keys=os.system)": _p2(
          _g("collections", "OrderedDict"), MARK, _g("evil", "Mapping"), EMPTY_TUPLE, NEWOBJ,
          EMPTY_DICT, _s("keys"), _g("os", "system"), SETITEM, BUILD, TUPLE, REDUCE),
      "extension code": b"\x80\x02\x82\x01.",
  }


def _torch_zip(path, pkl, storages=(), order="little", prefix="archive"):
  """The zip layout of torch.save: <prefix>/data.pkl, byteorder, data/<key>."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{prefix}/data.pkl", pkl)
    z.writestr(f"{prefix}/byteorder", order)
    z.writestr(f"{prefix}/version", "3\n")
    for key, data in storages:
      z.writestr(f"{prefix}/data/{key}", data)
  return path


@pytest.fixture
def marker(tmp_path):
  m = tmp_path / "marker"
  yield m
  assert not m.exists(), "a weight file ran code"


def test_no_payload_runs_in_any_pt_format(tmp_path, marker):
  for i, (name, pkl) in enumerate(payloads(marker).items()):
    plain = tmp_path / f"plain{i}.pt"
    plain.write_bytes(pkl)
    with pytest.raises(W.WeightsError, match="legacy PyTorch file.*re-save it"):
      W.load_torch(plain)
    zipped = _torch_zip(tmp_path / f"zip{i}.pt", pkl)
    with pytest.raises(W.WeightsError, match=str(zipped)):
      W.load_torch(zipped)
    assert not marker.exists(), name


def test_tar_and_legacy_torch_files_are_refused_with_the_fix(tmp_path, marker):
  tar = tmp_path / "old.pt"
  with tarfile.open(tar, "w") as t:
    for name in ("sys_info", "pickle", "storages", "tensors"):
      data = pickle.dumps(_Evil(f"touch {marker}"), protocol=2)
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  with pytest.raises(W.WeightsError,
                     match="tar-format PyTorch file.*torch.save\\(model.state_dict"):
    W.load_torch(tar)
  torch = pytest.importorskip("torch")
  legacy = tmp_path / "legacy.pt"
  torch.save(torch.nn.Linear(2, 3).state_dict(), legacy, _use_new_zipfile_serialization=False)
  with pytest.raises(W.WeightsError, match=f"{legacy}: a legacy PyTorch file"):
    W.load_torch(legacy)


def test_non_regular_and_foreign_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such weights file"):
    W.load_torch(tmp_path / "absent.pt")
  (tmp_path / "dir.pt").mkdir()
  with pytest.raises(W.WeightsError, match="not a regular file"):
    W.load_torch(tmp_path / "dir.pt")
  os.mkfifo(tmp_path / "fifo.pt")
  with pytest.raises(W.WeightsError, match="not a regular file"):
    W.load_torch(tmp_path / "fifo.pt")
  (tmp_path / "text.pt").write_text("hello")
  with pytest.raises(W.WeightsError, match="not a PyTorch .pt file"):
    W.load_torch(tmp_path / "text.pt")
  with zipfile.ZipFile(tmp_path / "other.pt", "w") as z:
    z.writestr("readme.txt", "not torch")
  with pytest.raises(W.WeightsError, match="without one <archive>/data.pkl"):
    W.load_torch(tmp_path / "other.pt")


# --- tensors built by hand: the restricted rebuilders ------------------------------------

def _state_dict_pickle(size, stride, offset=0, numel=6, key="0", kind="FloatStorage"):
  """{'w': _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())}."""
  ints = lambda xs: MARK + b"".join(_i(x) for x in xs) + TUPLE
  storage = MARK + _s("storage") + _g("torch", kind) + _s(key) + _s("cpu") + _i(numel) + TUPLE
  tensor = (_g("torch._utils", "_rebuild_tensor_v2") + MARK + storage + BINPERSID + _i(offset)
            + ints(size) + ints(stride) + NEWFALSE + _g("collections", "OrderedDict")
            + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE)
  return _p2(EMPTY_DICT, _s("w"), tensor, SETITEM)


def test_hand_built_state_dict_loads_without_torch(tmp_path):
  values = np.arange(6, dtype="<f4")
  path = _torch_zip(tmp_path / "sd.pt", _state_dict_pickle((2, 3), (3, 1)),
                    [("0", values.tobytes())])
  np.testing.assert_array_equal(W.load_torch(path)["w"], values.reshape(2, 3))
  path = _torch_zip(tmp_path / "sdT.pt", _state_dict_pickle((3, 2), (1, 3)),
                    [("0", values.tobytes())])  # a transposed view
  np.testing.assert_array_equal(W.load_torch(path)["w"], values.reshape(2, 3).T)
  big = _torch_zip(tmp_path / "big.pt", _state_dict_pickle((2, 3), (3, 1)),
                   [("0", values.astype(">f4").tobytes())], order="big")
  got = W.load_torch(big)["w"]
  assert got.dtype == np.float32 and got.dtype.isnative
  np.testing.assert_array_equal(got, values.reshape(2, 3))


@pytest.mark.parametrize("size,stride,offset,numel,data_bytes,reason", [
    ((2, 4), (4, 1), 0, 6, 24, "does not fit its storage"),        # reads past the end
    ((10**9,), (0,), 0, 6, 24, "does not fit its storage"),        # an expanded view
    ((2, 3), (3, 1), 5, 6, 24, "does not fit its storage"),        # offset past the end
    ((2, 3), (3, 1), 0, 10**15, 24, "missing or short"),           # storage longer than file
    ((2, 3), (3, 1), 0, 6, 8, "missing or short"),
    ((2, -3), (3, 1), 0, 6, 24, "non-negative integers"),
    ((2, 3), (3,), 0, 6, 24, "differ in rank"),
])
def test_tensor_records_are_checked(tmp_path, size, stride, offset, numel, data_bytes, reason):
  path = _torch_zip(tmp_path / "bad.pt", _state_dict_pickle(size, stride, offset, numel),
                    [("0", bytes(data_bytes))])
  with pytest.raises(W.WeightsError, match=reason):
    W.load_torch(path)


def test_state_on_a_rebuilt_tensor_is_refused(tmp_path):
  pkl = _state_dict_pickle((2, 3), (3, 1))  # ends with SETITEM, STOP: BUILD the tensor first
  evil = pkl[:-2] + EMPTY_DICT + _s("x") + _i(1) + SETITEM + BUILD + SETITEM + b"."
  path = _torch_zip(tmp_path / "build.pt", evil, [("0", bytes(24))])
  with pytest.raises(W.WeightsError, match="sets state on a Tensor"):
    W.load_torch(path)


# --- real torch files ---------------------------------------------------------------------

def test_module_pickle_with_evil_submodule_state_loads_inertly(tmp_path, marker):
  torch = pytest.importorskip("torch")

  class NetWithEvil(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.fc = torch.nn.Linear(3, 2)
      self.extra = _EvilSetstate()  # pickled along with the module
      self.extra.__dict__["cmd"] = f"touch {marker}"

  globals()["NetWithEvil"] = NetWithEvil  # pickled by name, as a published model is
  NetWithEvil.__qualname__ = "NetWithEvil"
  net = NetWithEvil()
  torch.save(net, tmp_path / "net.pt")
  got = W.load_torch(tmp_path / "net.pt")
  assert sorted(got) == ["fc.bias", "fc.weight"]
  np.testing.assert_array_equal(got["fc.weight"], net.fc.weight.detach().numpy())


# --- every load path ----------------------------------------------------------------------

def test_scan_model_from_torch_refuses_evil_files(tmp_path, marker):
  evil = tmp_path / "evil.pt"
  evil.write_bytes(pickle.dumps(_Evil(f"touch {marker}"), protocol=2))
  with pytest.raises(W.WeightsError, match="evil.pt: a legacy PyTorch file"):
    bundle.from_torch(evil, evil)
  zipped = _torch_zip(tmp_path / "evil_zip.pt", payloads(marker)["os.system"])
  with pytest.raises(bundle.BundleError, match="evil_zip.pt"):
    bundle.load_model(f"torch:{zipped},{zipped}")


def test_scan_command_line_refuses_evil_pt(tmp_path, marker):
  """The QA's recipe: python -m astrotl.scan --model=torch:evil.pt,evil.pt"""
  (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Evil("touch marker"), protocol=2))
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "astrotl.scan", "--progress=false",
                      "--model=torch:evil.pt,evil.pt", "--out=out"],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
  assert not (tmp_path / "marker").exists()
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "evil.pt: a legacy PyTorch file" in lines[0], lines
  assert "re-save it" in lines[0]


def test_npz_with_pickled_objects_is_refused(tmp_path, marker):
  obj = np.empty(1, dtype=object)
  obj[0] = _Evil(f"touch {marker}")
  np.savez(tmp_path / "evil.npz", **{"fc.weight": obj})
  with pytest.raises(W.WeightsError, match="object array.*allow_pickle"):
    W.load_npz(tmp_path / "evil.npz")
  np.savez(tmp_path / "bundle.npz", __meta__=np.frombuffer(b"{}", np.uint8),
           **{"stage1/params/w": obj})
  with pytest.raises(checkpoint.CheckpointError, match="object array"):
    checkpoint.load_bundle(tmp_path / "bundle.npz")


def test_malformed_bundles_raise_checkpoint_error(tmp_path):
  cases = {
      "notzip.npz": lambda p: p.write_bytes(b"PK\x03\x04 not really"),
      "badmeta.npz": lambda p: np.savez(p, __meta__=np.frombuffer(b"{nope", np.uint8)),
      "listmeta.npz": lambda p: np.savez(p, __meta__=np.frombuffer(b"[1]", np.uint8)),
      "noscale.npz": lambda p: np.savez(p, __meta__=np.frombuffer(b"{}", np.uint8),
                                        **{"a/k@int8": np.ones((2, 2), np.int8)}),
      "clash.npz": lambda p: np.savez(p, __meta__=np.frombuffer(b"{}", np.uint8),
                                      **{"a/b": np.ones(2), "a/b/c": np.ones(2)}),
      "strings.npz": lambda p: np.savez(p, __meta__=np.frombuffer(b"{}", np.uint8),
                                        **{"a/b": np.array(["x"])}),
  }
  for name, make in cases.items():
    path = tmp_path / name
    make(path)
    with pytest.raises(checkpoint.CheckpointError, match=name):
      checkpoint.load_bundle(path)
  for name in ("fifo.npz", "dir.npz", "absent.npz"):  # never opened, so nothing blocks
    if name == "fifo.npz":
      os.mkfifo(tmp_path / name)
    elif name == "dir.npz":
      (tmp_path / name).mkdir()
    with pytest.raises(checkpoint.CheckpointError, match=name):
      checkpoint.load_bundle(tmp_path / name)
  # An .npy header that promises far more data than the member holds: refused before
  # any allocation.
  with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
    z.writestr("__meta__.npy", _npy(np.frombuffer(b"{}", np.uint8)))
    z.writestr("a/w.npy", _npy(np.ones(4), shape=b"(10000000000,)"))
  with pytest.raises(checkpoint.CheckpointError, match="more data than the file holds"):
    checkpoint.load_bundle(tmp_path / "huge.npz")


def _npy(array, shape=None):
  """.npy bytes of `array`; `shape` forges the header's shape (its length kept)."""
  buf = io.BytesIO()
  np.lib.format.write_array(buf, array)
  raw = buf.getvalue()
  if shape is not None:
    old = repr(array.shape).encode()
    end = raw.index(b"\n")
    raw = raw[:end - (len(shape) - len(old))].replace(old, shape) + raw[end:]
  return raw


# --- issue 24: files that exhaust memory or time, or reach the loader's own objects -------

APPEND, EMPTY_LIST, POP = b"a", b"]", b"0"


def _limited(fn, *args):
  """fn(*args) raising WeightsError, within 5 s and 500 MB more memory."""
  import resource
  import time
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  t0 = time.time()
  with pytest.raises(W.WeightsError) as e:
    fn(*args)
  assert time.time() - t0 < 5.0 and "\n" not in str(e.value), str(e.value)
  assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500 << 10  # kB
  return str(e.value)


def test_a_pt_naming_many_distinct_globals_is_refused(tmp_path):
  """The issue's 0.7 MB .pt named 300,000 distinct globals (727 MB, 27 s); 150,000 fit
  under MAX_PICKLE_BYTES."""
  body = b"".join(_g("m", f"{i:x}") + POP for i in range(150_000))
  path = _torch_zip(tmp_path / "globals.pt", _p2(body, EMPTY_DICT))
  assert path.stat().st_size < W.MAX_PICKLE_BYTES
  assert f"more than {W.MAX_GLOBALS} distinct" in _limited(W.load_torch, path)


def test_a_large_pickle_is_refused_before_unpickling(tmp_path):
  """The issue's 18 MB data.pkl (3.4 GB, not done in 120 s): millions of objects."""
  body = EMPTY_LIST + (EMPTY_LIST + APPEND) * (9 << 20)
  path = _torch_zip(tmp_path / "big.pt", _p2(body))
  assert "data.pkl is" in _limited(W.load_torch, path)


def test_a_module_tree_5000_levels_deep_is_one_error(tmp_path):
  """A module whose _modules holds a module whose ... (RecursionError before)."""
  def module(inner):
    mods = EMPTY_DICT + (_s("m") + inner + SETITEM if inner else b"")
    state = EMPTY_DICT + _s("_parameters") + EMPTY_DICT + SETITEM + _s("_modules") + mods \
        + SETITEM
    return _g("nn", "Module") + EMPTY_TUPLE + NEWOBJ + state + BUILD
  pkl = None
  for _ in range(5000):
    pkl = module(pkl)
  path = _torch_zip(tmp_path / "deep.pt", _p2(pkl))
  assert f"more than {W.MAX_MODULE_DEPTH} levels" in _limited(W.load_torch, path)
  shallow = _torch_zip(tmp_path / "shallow.pt", _p2(module(module(None))))
  assert W.load_torch(shallow) == {}


@pytest.mark.parametrize("name", [("builtins", "set"), ("torch", "Size"),
                                  ("torch._utils", "_rebuild_parameter"),
                                  ("torch._utils", "_rebuild_tensor_v2"),
                                  ("collections", "OrderedDict")])
def test_build_cannot_set_attributes_on_the_loaders_helpers(tmp_path, name):
  """BUILD on a global the loader maps to its own builder used to set attributes on the
  function for the rest of the process."""
  pkl = _p2(_g(*name), EMPTY_DICT + _s("planted") + _i(1) + SETITEM + BUILD + POP + EMPTY_DICT)
  path = _torch_zip(tmp_path / "build.pt", pkl)
  try:
    W.load_torch(path)
  except W.WeightsError:
    pass
  for helper in (W._set, W._size, W._rebuild_parameter, W._frozenset, W._device,
                 W._OrderedDict, W._Builder):
    assert not hasattr(helper, "planted"), helper


def test_errors_quoting_the_file_stay_on_one_line(tmp_path):
  """A FLOAT opcode whose text ends in a newline: the error quoted it (found by
  benchmarks/fuzz_bundles.py)."""
  path = _torch_zip(tmp_path / "float.pt", b"\x80\x02Floatstorage\n.")
  message = _limited(W.load_torch, path)
  assert "not a readable PyTorch .pt file" in message
