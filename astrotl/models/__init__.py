"""Flax linen models and their registry.

`get(name, **cfg)` returns a model instance; every model names its submodules so
parameter paths (`block_3/conv/kernel`, `head/kernel`, ...) are stable, and the task head
is always `head`.  See each module's docstring for its paths.

Every model has a `frozen` field: names of top-level blocks that run in inference mode
even when `train=True` (BatchNorm normalises with its running statistics, dropout is off).
`astrotl.train` sets it for blocks whose parameters are all frozen, so a frozen block
computes the same function in training as at test time (Keras' rule for frozen layers).

| name       | model                                   | input                 |
|------------|-----------------------------------------|-----------------------|
| `cnn1d`    | Tan et al. 2023 white-dwarf CNN          | (B, 3700) spectra     |
| `resnet1d` | Wang et al. 2021 deep 1D ResNet          | (B, L) spectra        |
| `cnn2d`    | Dominguez Sanchez et al. 2018 galaxy CNN | (B, 69, 69, 3) images |
| `alexnet`  | AlexNet-style CNN (Schneider et al. 2023)| (B, H, W, C) images   |
| `mlp`      | Kim et al. 2021 UPSILoN-T MLP            | (B, 16) features      |
"""

import dataclasses

from astrotl.models.cnn1d import CNN1D
from astrotl.models.cnn2d import AlexNet, CNN2D
from astrotl.models.mlp import MLP
from astrotl.models.resnet1d import ResNet1D

REGISTRY = {
    "cnn1d": CNN1D,
    "resnet1d": ResNet1D,
    "cnn2d": CNN2D,
    "alexnet": AlexNet,
    "mlp": MLP,
}


def _class(name: str):
  if name not in REGISTRY:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]


def defaults(name: str, **cfg) -> dict:
  """Every config field of model `name` with its default (updated by `cfg`), e.g. for a
  config whose `model_config` must accept `--config.model_config.FIELD=...`.  `frozen`
  is left out: training sets it."""
  out = {f.name: f.default for f in dataclasses.fields(_class(name))
         if f.name not in ("parent", "name", "frozen") and f.default is not dataclasses.MISSING}
  unknown = sorted(set(cfg) - set(out))
  if unknown:
    raise ValueError(f"model {name!r} has no config field(s) {unknown}; fields: {sorted(out)}")
  return {**out, **cfg}


def get(name: str, **cfg):
  """Builds model `name` with config overrides `cfg` (unknown keys are an error)."""
  cls = _class(name)
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(cfg) - fields)
  if unknown:
    raise ValueError(f"model {name!r} has no config field(s) {unknown}; fields: {sorted(fields)}")
  cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
  return cls(**cfg)
