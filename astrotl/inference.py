"""How a bundle runs: spectra in, the networks' outputs out.

`make_fn` builds the one jit-compiled device function of a `bundle.Model` (resampling,
normalisation, every network, the anomaly score); `run` feeds it host arrays of any
length in padded batches; `network_inputs` is its preprocessing alone (what fine-tuning
and Grad-CAM see); `spectrum_inputs` turns files, Spectrum objects or arrays into the
raw arrays of `astrotl.io.batch`.  What a bundle is lives in `astrotl.bundle`, how it is
checked in `astrotl.validate`.
"""

import json
import os
import re

import numpy as np

from astrotl import rules
from astrotl.schema import BundleError
from astrotl.validate import check_kept

DEVICE_KEYS = ("u", "flux", "ivar", "mask")  # the raw arrays make_fn takes


def shared_trunk(model, a: str, b: str) -> bool:
  """True when networks a and b are cnn1d's with identical conv blocks (a frozen trunk),
  so the blocks need to run only once for both."""
  na, nb = model.networks[a], model.networks[b]
  if na.meta["model"] != "cnn1d" or nb.meta["model"] != "cnn1d":
    return False
  if {k: v for k, v in na.meta.get("config", {}).items() if k not in ("num_classes", "dense_width")} != \
     {k: v for k, v in nb.meta.get("config", {}).items() if k not in ("num_classes", "dense_width")}:
    return False
  from astrotl import surgery
  fa, fb = surgery.flatten(na.variables), surgery.flatten(nb.variables)
  blocks = [k for k in fa if re.match(r"(params|batch_stats)/block_\d+/", k)]
  return bool(blocks) and all(k in fb and np.array_equal(fa[k], fb[k]) for k in blocks) and \
      len(blocks) == len([k for k in fb if re.match(r"(params|batch_stats)/block_\d+/", k)])


def make_fn(model, mesh, networks=None, embed=False, share=True):
  """jit-compiled (variables, u, flux, ivar, mask) -> {network: probabilities or values,
  "embedding": (B, D) and, for a bundle with a reference, "anomaly": (B,) if embed}, on
  raw batches from `astrotl.io.batch` (whose "snr" the host keeps: see
  `outputs_to_columns`).

  Resampling, normalisation, every network and the anomaly score run in one function on
  the device.  `networks`: names to run (default all); `share`: run a shared conv trunk
  once.
  """
  import functools
  import jax
  import jax.numpy as jnp
  from astrotl import parallel
  from astrotl.preprocess import spectra
  from astrotl.similar import metric

  if model.input.get("type", "spectrum") != "spectrum":
    raise BundleError(f"{model.source}: a {model.input.get('type')} model, not a spectrum model")
  names = list(networks or model.networks)
  nets = [model.networks[n] for n in names]
  primary = model.primary
  spec = model.input
  trunk = share and len(nets) > 1 and all(shared_trunk(model, names[0], n) for n in names[1:])
  if embed and primary.name not in names:
    raise BundleError("embed needs the primary network")
  ref = model.meta["reference"] if embed and model.reference is not None else None

  def fn(variables, reference, u, flux, ivar, mask):
    f, iv, bad = spectra.resample_pixels(u, flux, ivar, mask, xp=jnp)
    x = spectra.network_input(f, iv, bad, spec, xp=jnp)
    out = {}
    feats = None
    if trunk:
      feats = nets[0].model.apply(variables[names[0]], x, output="features")
    for net in nets:
      v = variables[net.name]
      z = (net.model.apply(v, feats, from_features=True) if feats is not None
           else net.model.apply(v, x))
      out[net.name] = net.finish(z)
      if embed and net is primary:
        e = (net.model.apply(v, feats, from_features=True, output="embedding")
             if feats is not None else net.model.apply(v, x, output="embedding"))
        out["embedding"] = e
        if ref is not None:
          out["anomaly"] = metric.knn_score(e, reference, ref["k"], ref["scale"], xp=jnp)
    return out

  repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  jitted = jax.jit(fn, in_shardings=(repl, repl, data, data, data, data), out_shardings=data)
  # The reference is bound here, placed once: it belongs to the model, not to a network.
  reference = parallel.replicate(model.reference, mesh) if ref is not None else None
  return functools.partial(_bind_second, jitted, reference)


def run(model, raw: dict, batch_size: int, embed: bool) -> dict:
  """make_fn's outputs for host raw arrays (any number of rows) on the local devices."""
  import jax
  from astrotl import parallel
  n = len(raw["u"])
  key = ("run", embed)
  if key not in model._fns:
    mesh = parallel.make_mesh(jax.local_devices())
    model._fns[key] = (mesh, make_fn(model, mesh, embed=embed),
                      parallel.replicate(model.variables(), mesh))
  mesh, fn, variables = model._fns[key]
  n_dev = mesh.devices.size
  size = min(batch_size, max(8, 1 << max(n - 1, 0).bit_length()))  # few compiled sizes
  size = max(n_dev, size // n_dev * n_dev)
  outs = []
  for start in range(0, n, size):
    part, _ = parallel.pad_rows({k: v[start:start + size] for k, v in raw.items()}, size)
    arrays = parallel.shard_batch({k: part[k] for k in DEVICE_KEYS}, mesh, size)
    res = fn(variables, *(arrays[k] for k in DEVICE_KEYS))
    m = min(size, n - start)
    outs.append({"snr": part["snr"][:m], **{k: np.asarray(v)[:m] for k, v in res.items()}})
  if not outs:
    return {}
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def table(model, names, outs, metas, errors):
  """`Model.predict`'s astropy Table of `run`'s outputs (see there)."""
  from astropy.table import Table
  cols = model.outputs_to_columns(outs) if outs else {c: np.zeros(0) for c in model.columns()}
  t = Table({"name": np.asarray(names, dtype=str)})
  for k, v in cols.items():
    t[k] = v
  t["snr"].description = "median flux * sqrt(ivar) over 4000-5500 A"
  for k, (desc, unit) in model.columns().items():
    t[k].description = desc
    t[k].unit = unit or None
  if model.rule and len(t):
    survey = [(m or {}).get("class") or "" for m in metas]
    t["candidate"] = rules.select(model.rule, {**cols, "survey_class": np.asarray(survey)})
    t["candidate"].description = rules.describe(model.rule)
  t.meta["errors"] = errors
  t.meta["model"] = model.source
  return t


_INPUT_FNS = {}


def network_inputs(raw: dict, spec: dict, batch_size: int = 256) -> np.ndarray:
  """Network inputs x for raw arrays from `astrotl.io.batch` (any number of rows), as
  `Model.make_fn` computes them on the device: resampling, then `spectra.network_input`
  per the input `spec`, jit-compiled.  Rows go through in padded batches of one size, so
  a long list (a labelled catalog) compiles once."""
  import jax
  import jax.numpy as jnp
  from astrotl import parallel
  from astrotl.preprocess import spectra
  key = json.dumps(spec, sort_keys=True)
  if key not in _INPUT_FNS:
    frozen_spec = json.loads(key)  # a caller changing its dict later must not change this
    _INPUT_FNS[key] = jax.jit(lambda u, f, v, m: spectra.network_input(
        *spectra.resample_pixels(u, f, v, m, xp=jnp), frozen_spec, xp=jnp))
  fn = _INPUT_FNS[key]
  n = len(raw["u"])
  size = min(batch_size, max(8, 1 << max(n - 1, 0).bit_length()))  # few compiled sizes
  outs = []
  for start in range(0, n, size):
    part, _ = parallel.pad_rows({k: v[start:start + size] for k, v in raw.items()}, size)
    x = fn(part["u"], part["flux"], part["ivar"], part["mask"])
    outs.append(np.asarray(x)[:min(size, n - start)])
  return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _bind_second(fn, second, first, *rest):
  return fn(first, second, *rest)


def lower_fn(fn, variables, *arrays):
  """A `make_fn` function traced and lowered for these arguments, not run: its
  `.compile()` (XLA, or the persistent cache) is then reused by the first call with
  arguments of the same shapes and shardings, trace and lowering included (a run of a
  dummy batch would cost as much as a real one)."""
  jitted, reference = fn.args
  return jitted.lower(variables, reference, *arrays)


def spectrum_inputs(inputs):
  """(names, raw arrays, metas, errors) for files, Spectrum objects, (wavelength, flux[,
  ivar[, mask]]) tuples or flux arrays on the common grid, alone or in a list."""
  from astrotl import io as aio
  from astrotl.io import batch as io_batch
  from astrotl.preprocess import spectra
  if isinstance(inputs, np.ndarray) and inputs.ndim == 2 and inputs.dtype.kind == "f":
    inputs = list(inputs)
  elif isinstance(inputs, (str, os.PathLike, aio.Spectrum, np.ndarray)) or (
      isinstance(inputs, tuple) and len(inputs) in (2, 3, 4) and np.ndim(inputs[0]) == 1
      and np.ndim(inputs[1]) == 1 and len(inputs[0]) == len(inputs[1]) > 4):
    inputs = [inputs]
  names, arrays, metas, errors = [], [], [], []
  grid = spectra.wavelength_grid()
  for i, item in enumerate(inputs):
    try:
      if isinstance(item, (str, os.PathLike)):
        a, m = io_batch.decode(item)
        name = os.fspath(item)
      else:
        if isinstance(item, np.ndarray):
          if item.shape[-1] != len(grid):
            raise aio.SpectrumError(f"input {i}", f"a flux array must have the common grid's "
                                    f"{len(grid)} pixels (got {item.shape[-1]}); pass "
                                    "(wavelength, flux, ivar) instead")
          item = (grid, item)
        if isinstance(item, tuple):
          wave, flux = np.asarray(item[0], np.float64), np.asarray(item[1], np.float32)
          ivar = np.asarray(item[2], np.float32) if len(item) > 2 else np.ones_like(flux)
          mask = (np.asarray(item[3], bool) if len(item) > 3 else np.zeros(flux.shape, bool))
          mask = mask | ~np.isfinite(flux) | ~(ivar > 0)
          item = aio.Spectrum(wave, flux, ivar, mask, {})
        a, m = io_batch.raw_arrays(item, path=f"input {i}")
        name = str(i)
    except aio.SpectrumError as e:
      errors.append((str(e.path), e.reason))
      continue
    names.append(name)
    arrays.append(a)
    metas.append(m)
  check_kept(len(arrays), errors, aio.SpectrumError, "could not be read")
  raw = {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}
  return names, raw, metas, errors
