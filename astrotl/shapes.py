"""The weights a network's config builds: parameter paths and shapes, found by tracing the
model's init with `jax.eval_shape` (nothing runs), and for the shipped bundles'
architectures read from a table that comes with the package (`KNOWN_SHAPES`): tracing
costs ~0.2 s a network, most of a bundle's load.  `astrotl.validate.check_shapes` compares
a bundle's weights with them; a test re-traces the table
(`shapes.write_known(bundle.shipped_architectures())` rewrites it).
"""

import functools
import hashlib
import json
import pathlib

import numpy as np


def input_shape(spec: dict, variables=None) -> tuple:
  """The shape of one network input for an input spec (checked by `validate.check_meta`)."""
  kind = spec.get("type", "spectrum")
  if kind == "lightcurve":
    return (1, 16)
  if kind == "image":
    from astrotl import surgery
    # The spec does not say how many channels; the first conv kernel (h, w, in, out) does.
    kernels = [v for v in surgery.flatten((variables or {}).get("params", {})).values()
               if np.ndim(v) == 4]
    channels = int(np.shape(kernels[0])[2]) if kernels else 3
    size = int(spec.get("size") or 69)
    return (1, size, size, channels)
  from astrotl.preprocess import spectra
  if spec.get("normalise", "tan") != "continuum":
    return (1, int(spec.get("pixels", spectra.TAN_NPIX)))
  width = spectra.NPIX // int(spec.get("bin", 1))
  return (1, min(width, int(spec.get("pixels") or width)))


KNOWN_SHAPES = "models/shapes.json"  # under astrotl/data


def key(model: str, config_json: str, shape: tuple) -> str:
  text = json.dumps([model, json.loads(config_json), list(shape)], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def known() -> dict:
  """The shapes of the shipped bundles' architectures, worked out ahead (`write_known`;
  a test recomputes them): tracing a model's init costs ~0.2 s a network, most of a load.
  The table comes with the package's code, never with the bundle being checked."""
  from astrotl import data
  try:
    path = data.sample_dir(KNOWN_SHAPES.split("/")[0]) / KNOWN_SHAPES.split("/")[1]
    table = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
  return {k: {p: tuple(s) for p, s in v.items()} for k, v in table.items()}


def write_known(models_json: list) -> pathlib.Path:
  """Writes the known-shapes table for [(model, config_json, shape)], traced afresh."""
  from astrotl import data
  table = {key(*m): {p: list(s) for p, s in traced(*m).items()}
           for m in models_json}
  path = data.sample_dir(KNOWN_SHAPES.split("/")[0]) / KNOWN_SHAPES.split("/")[1]
  path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
  return path


@functools.lru_cache(maxsize=64)
def built(model: str, config_json: str, shape: tuple) -> dict:
  """{params/batch_stats path: shape} that model(config) builds for inputs of `shape`."""
  table = known().get(key(model, config_json, shape))
  return table if table is not None else traced(model, config_json, shape)


def traced(model: str, config_json: str, shape: tuple) -> dict:
  """`built`, always by tracing the model's init."""
  import jax
  import jax.numpy as jnp
  from astrotl import models, surgery
  m = models.get(model, **json.loads(config_json))
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  like = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x), x)
  return {p: tuple(v.shape) for p, v in surgery.flatten(
      {c: like[c] for c in ("params", "batch_stats") if c in like}).items()}
