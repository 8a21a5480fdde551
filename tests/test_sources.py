"""Resolving a pretrained source (`astrotl.sources`): every kind of source, its one-line
errors, and the import graph that keeps sources below both train and finetune."""

import ast
import pathlib

import numpy as np
import pytest

import astrotl
from astrotl import bundle, sources, surgery

PACKAGE = pathlib.Path(astrotl.__file__).resolve().parent
TAN = {"type": "spectrum", "normalise": "tan", "pixels": 3700}


# --- the import graph ---------------------------------------------------------------------

def _import_graph():
  """{module: modules of astrotl it imports}, from every import statement of astrotl/
  (function-level ones too, since they close a circle as surely at run time)."""
  def name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

  files = {name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for mod, path in files.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        edges |= {a.name for a in node.names if a.name in files}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against the importing module's package
          pkg = mod.split(".")[:len(mod.split(".")) - node.level + (path.name == "__init__.py")]
          base = ".".join(pkg + ([base] if base else []))
        for a in node.names:  # `from astrotl import train` imports the submodule
          sub = f"{base}.{a.name}"
          edges.add(sub if sub in files else base)
    graph[mod] = {m for m in edges if m in files and m != mod}
  return graph


def _cycles(graph):
  """The strongly connected components of more than one module (Tarjan), sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while not comp or comp[-1] != v:
        comp.append(stack.pop())
        on_stack.discard(comp[-1])
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def test_train_and_finetune_are_in_no_import_circle():
  graph = _import_graph()
  cycles = _cycles(graph)
  listed = "; ".join(" <-> ".join(c) for c in cycles) or "none"
  caught = [c for c in cycles if {"astrotl.train", "astrotl.finetune", "astrotl.sources"} & set(c)]
  assert not caught, f"import circles remain: {listed}"
  assert "astrotl.finetune" not in graph["astrotl.train"], f"train imports finetune ({listed})"
  assert not graph["astrotl.sources"] & {"astrotl.train", "astrotl.finetune"}, \
      f"sources imports {sorted(graph['astrotl.sources'])} ({listed})"
  assert "astrotl.sources" in graph["astrotl.train"] and \
      "astrotl.sources" in graph["astrotl.finetune"]


def test_the_graph_sees_function_level_imports():
  graph = _import_graph()
  # bundle imports checkpoint only inside functions; finetune imports train likewise
  assert "astrotl.checkpoint" in graph["astrotl.bundle"]
  assert "astrotl.train" in graph["astrotl.finetune"]
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# --- every kind of source -----------------------------------------------------------------

def test_bundled_names_networks_and_bundle_paths(tiny_bundles):
  m = sources.load_source("wd_stage1")
  assert list(m.networks) == ["stage1"] and m.primary.meta["config"]["dense_width"] == 256
  assert list(sources.load_source("wd_two_stage:stage2").networks) == ["stage2"]
  m = sources.load_source(tiny_bundles["classifier"])
  assert m.primary.meta["config"]["channels"] == [4] * 8
  m = sources.load_source(f"{tiny_bundles['shared']}:stage2")
  assert m.classes == ["other", "WD"]
  m = sources.load_source(tiny_bundles["classifier"], input=dict(TAN, pixels=3000))
  assert m.input["pixels"] == 3000 and m.meta["input"] == m.input


def test_errors_are_one_line(tmp_path, tiny_bundles):
  def one_line(error, match, source):
    with pytest.raises(error, match=match) as e:
      sources.load_source(source)
    assert "\n" not in str(e.value)

  one_line(FileNotFoundError, "nowhere.npz: no such model bundle or training workdir",
           tmp_path / "nowhere.npz")
  one_line(FileNotFoundError, "no such model bundle", f"{tmp_path / 'nowhere.npz'}:stage1")
  one_line(bundle.BundleError, r"wd_two_stage:stage3: no network 'stage3'; wd_two_stage has "
           "stage1, stage2", "wd_two_stage:stage3")
  one_line(bundle.BundleError, "no network 'main'", f"{tiny_bundles['shared']}:main")
  one_line(bundle.BundleError, "name one, e.g. wd_two_stage:stage1", "wd_two_stage")


def test_is_model_tells_models_from_workdirs(tmp_path, tiny_bundles):
  assert all(sources.is_model(s) for s in (
      "wd_stage1", "wd_two_stage:stage2", "torch:7_cnn_model.pt", tiny_bundles["classifier"],
      f"{tiny_bundles['shared']}:stage2", tmp_path / "not_yet.npz"))
  assert not sources.is_model(tmp_path)
  assert not sources.is_model(tmp_path / "checkpoints")


def _tan_state_dict(torch):
  """A random state dict in Tan et al.'s CNN_Model1 layout (7 classes)."""
  rng = np.random.default_rng(0)
  chans, ks = (1, 10, 10, 20, 30, 40, 50, 60, 60), (1, 2, 3, 4, 5, 7, 8, 9)
  out = {}
  for i in range(8):
    out[f"conv{i}.0.weight"] = rng.normal(0, 0.1, (chans[i + 1], chans[i], 1, ks[i]))
    out[f"conv{i}.0.bias"] = rng.normal(0, 0.1, chans[i + 1])
    for k, v in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
      out[f"conv{i}.1.{k}"] = np.full(chans[i + 1], v)
  out["dense1.1.weight"] = rng.normal(0, 0.01, (1024, 60 * 219))
  out["dense1.1.bias"] = np.zeros(1024)
  out["dense2.0.weight"] = rng.normal(0, 0.01, (7, 1024))
  out["dense2.0.bias"] = np.zeros(7)
  return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}


def test_torch_weights_are_a_source(tmp_path):
  torch = pytest.importorskip("torch")
  from astrotl.io import weights
  path = tmp_path / "7_cnn_model.pt"
  torch.save(_tan_state_dict(torch), path)
  m = sources.load_source(f"torch:{path}")
  assert len(m.classes) == 7 and m.input == TAN
  want = weights.tan_cnn1d(weights.load_torch(path), 7)
  for k, v in surgery.flatten(want).items():
    np.testing.assert_array_equal(surgery.flatten(m.primary.variables)[k], v)
