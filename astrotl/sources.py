"""Resolving a pretrained source: the network a transfer starts from.

    from astrotl import sources
    model = sources.load_source("wd_two_stage:stage2")   # a bundle.Model of one network

A source is a bundled model (`wd_stage1`, `upsilont`, `wd_two_stage:stage2`), a model
bundle (`x.npz`, or `x.npz:stage1` for one of its networks), an orbax training workdir
(`train.fit`, `python -m astrotl.main`), or Tan et al.'s PyTorch stage 1
(`torch:7_cnn_model.pt`).  Both `train` (`transfer.init_from`) and `finetune`
(`source=`) resolve theirs here, so this module imports neither.
"""

import json
import os
import pathlib

import numpy as np

from astrotl import bundle, checkpoint

# The input spec of a workdir's model, which a checkpoint does not record.
DEFAULT_INPUTS = {"cnn1d": {"type": "spectrum", "normalise": "tan", "pixels": 3700}}


def load_source(source, input=None):
  """The network to start from, as a `bundle.Model` of one network.

  source: a bundled name or bundle path (`name:network` picks one network of a
    multi-network bundle), an orbax workdir of `train.fit` (or its checkpoints/ or one
    step directory; the model and its settings come from the checkpoint's config), or
    'torch:7_cnn_model.pt'.
  input: an input spec replacing the source's (`bundle` docstring); a workdir records
    none, so a workdir of anything but a Tan-normalised cnn1d needs one.
  Errors are one line: FileNotFoundError for a path that is nothing, BundleError for a
  bad network name or a multi-network bundle without one.
  """
  spec = os.fspath(source)
  if not spec.startswith("torch:") and os.path.isdir(spec):
    model = _from_workdir(spec, input)
  else:
    name, network = _network_of(spec)
    if not name.startswith("torch:") and name not in bundle.BUNDLED and not os.path.exists(name):
      raise FileNotFoundError(f"{spec}: no such model bundle or training workdir, and not a "
                              f"bundled model ({', '.join(bundle.BUNDLED)})")
    model = bundle.load_model(name)
    if network:
      if network not in model.networks:
        raise bundle.BundleError(f"{spec}: no network {network!r}; {name} has "
                                 f"{', '.join(model.networks)}")
      model = model.subset(network, name=spec)
    elif len(model.networks) > 1:
      raise bundle.BundleError(f"{spec} holds {len(model.networks)} networks "
                               f"({', '.join(model.networks)}); name one, e.g. "
                               f"{name}:{next(iter(model.networks))}")
  if input is not None:
    model.input = dict(input)
    model.meta = dict(model.meta, input=model.input)
  return model


def is_model(spec) -> bool:
  """True when `spec` names a model rather than a training workdir: 'torch:...', a
  bundled name, an existing file or a path ending in .npz (with ':network' or not)."""
  spec = os.fspath(spec)
  name, _ = _network_of(spec)
  return spec.startswith("torch:") or name in bundle.BUNDLED or name.endswith(".npz") or \
      os.path.isfile(name)


def _network_of(spec):
  """('x.npz', 'stage1') for 'x.npz:stage1' (also for bundled names); (spec, None) else."""
  head, sep, tail = spec.rpartition(":")
  if sep and tail and (head in bundle.BUNDLED or head.endswith(".npz")):
    return head, tail
  return spec, None


def _from_workdir(path, input):
  variables = checkpoint.load_variables(path)
  config = checkpoint.load_record(path).get("config")
  config = json.loads(config) if isinstance(config, str) else config
  if not config or "model" not in config:
    raise bundle.BundleError(f"{path}: the checkpoint records no config, so the model is "
                             "unknown; start from a bundle instead")
  name = config["model"]
  settings = {k: v for k, v in (config.get("model_config") or {}).items() if k != "frozen"}
  spec = input or DEFAULT_INPUTS.get(name)
  if spec is None:
    raise bundle.BundleError(f"{path}: a {name} checkpoint records no input spec; pass "
                             "input= (e.g. {'type': 'spectrum', 'normalise': 'continuum', "
                             "'clip': [-0.5, 3.0], 'bin': 2})")
  width = int(np.shape(variables["params"]["head"]["bias"])[0])
  meta = {"format": 2, "name": pathlib.Path(path).name, "input": dict(spec),
          "networks": {"main": {"model": name, "config": settings, "output": "classes",
                                "classes": [f"class_{i}" for i in range(width)],
                                "temperature": 1.0}},
          "rule": None, "about": {"source": os.path.abspath(path)}}
  return bundle.Model({"main": variables}, meta, source=path)
