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


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
