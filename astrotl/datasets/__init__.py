"""TFDS dataset builders (array_record, read without TensorFlow), one folder each.

`as_numpy` turns a prepared split into stacked numpy arrays for training.
"""

import importlib

import numpy as np


def _register(name: str):
  """Imports the astrotl builder behind a dataset name such as 'lamost_lrs/sample'."""
  module = name.split("/")[0].split(":")[0]
  try:
    importlib.import_module(f"astrotl.datasets.{module}")
  except ModuleNotFoundError as e:
    if e.name != f"astrotl.datasets.{module}":
      raise


def as_numpy(name: str, split: str, data_dir=None, indices=None, features=None) -> dict:
  """A prepared split (or the examples at `indices`) as {feature: stacked numpy array}.

  Strings come back as str arrays.  Reads through tfds.data_source, so no TensorFlow.
  """
  import tensorflow_datasets as tfds

  _register(name)
  source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  specs = source.dataset_info.features
  keys = list(features or specs.keys())
  indices = range(len(source)) if indices is None else indices
  records = source.__getitems__(list(indices)) if len(indices) else []
  out = {}
  for key in keys:
    spec = specs[key]
    dtype = np.dtype(spec.np_dtype)
    if dtype.kind in "OSU":  # strings: stored as bytes, returned as str
      out[key] = np.array([_text(r[key]) for r in records], dtype=str)
    else:
      shape = (len(records),) + tuple(spec.shape)
      out[key] = np.array([r[key] for r in records], dtype=dtype).reshape(shape)
  return out


class Rows:
  """Random access to a prepared split for `train.fit`, reading rows on demand.

  `take(indices)` reads just those examples through tfds.data_source (array_record), so
  in a multi-process run each process reads only its own rows of every batch.
  `x` and `y` name the features; `transform(x) -> x` runs on each batch (e.g. the Tan
  normalisation of flux + mask: pass `x=("flux", "mask")` to get both).
  """

  def __init__(self, name, split, data_dir=None, x="flux", y="label", transform=None):
    import tensorflow_datasets as tfds
    _register(name)
    self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    self.x, self.y, self.transform = x, y, transform

  def __len__(self):
    return len(self.source)

  def take(self, indices) -> dict:
    records = self.source.__getitems__([int(i) for i in indices])
    keys = self.x if isinstance(self.x, (tuple, list)) else (self.x,)
    xs = [np.stack([np.asarray(r[k]) for r in records]) for k in keys]
    x = self.transform(*xs) if self.transform else xs[0]
    return {"x": x, "y": np.array([r[self.y] for r in records])}


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
