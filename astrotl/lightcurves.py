"""Light curves through a model bundle: `Model.predict` / `.embed` for light-curve models.

A light-curve bundle's input is {"type": "lightcurve", "features": "upsilon16",
"preprocess": {...}}: the 16 UPSILoN features (`preprocess.features`), computed for many
curves at once under jit (`features_batch.extract_batch`), become network inputs with
`features.upsilont_inputs(features, preprocess)`, and every network of the bundle runs on
them jit-compiled.  The same functions serve `python -m astrotl.classify_lightcurves`.

Inputs: light-curve files (`io.lightcurve.read_curve`), (time, mag[, err]) tuples of 1-D
arrays, lists of those, or an (n, 16) array of features already computed (columns in
`features.FEATURES` order).  `predict(model, files, id_column="fieldid,tileid,seqn")`
splits files holding many stars (`io.lightcurve.read_stars`): one row per star, with an
`id` column.  A curve whose features cannot be computed (too few points, a flat curve,
...) or are not finite is an error with its reason, never a row of NaN.
"""

import os

import numpy as np

from astrotl.io import lightcurve as io_lc
from astrotl.preprocess import features as F
from astrotl.preprocess import features_batch as FB

GROUP_POINTS = 1 << 22   # padded points per extract_batch call: bounds host memory
MAX_POINTS = 10_000      # the exact periodogram costs points x frequencies, both ~n
# extract_batch's memory is ~ width x frequency blocks x 16 bytes per curve in a call.
MEMORY = {"cpu": 2 << 30}
MEMORY_ACCELERATOR = 16 << 30
REASONS = FB.REASONS + ("too_many_points",)   # features()'s reason codes
TOO_MANY_POINTS = len(FB.REASONS)
REASON_TEXT = {
    "too_few_points": "only {n} usable points; the features need at least {min}",
    "non_finite": "time, mag or err has NaN or inf values; drop those rows",
    "zero_span": "every point has the same time; the period is undefined",
    "constant_mag": "every magnitude is the same; the features are undefined for a flat curve",
    "negative_err": "negative errors; drop flagged rows (err < 0) first",
    "too_many_points": "{n} points; the exact periodogram's cost grows as points x "
                       "frequencies, so at most {max}: bin the curve or split it by season",
}


def check_model(model):
  """Raises BundleError unless `model` takes the 16 UPSILoN features of light curves."""
  from astrotl.schema import BundleError
  spec = model.input
  who = model.name if model.name == model.source else f"{model.name} ({model.source})"
  if spec.get("type") != "lightcurve":
    raise BundleError(f"{who}: a {spec.get('type', 'spectrum')} model, not a light-curve "
                      "model (for spectra use python -m astrotl.scan)")
  if spec.get("features") != "upsilon16" or not isinstance(spec.get("preprocess"), dict):
    raise BundleError(f"{who}: input {spec} is not understood: light-curve bundles need "
                      "features='upsilon16' and a preprocess dict (features.upsilont_inputs)")


def column_info(model, with_points=True) -> dict:
  """{column: (description, unit)} of a light-curve prediction table, in table order."""
  out = {"n_points": ("points used (rows with a missing or flagged value dropped)", "")} \
      if with_points else {}
  out.update({k: F.INFO[k] for k in F.FEATURES})
  out.update(model.columns())
  return out


# --- features ------------------------------------------------------------------------------

def _chunk(width, nout):
  """Curves per extract_batch call for a group of padded `width` and at most `nout`
  frequencies: small on a CPU (the periodogram products stay in cache), hundreds on an
  accelerator, fewer for long curves so a call fits in MEMORY."""
  import jax
  backend = jax.default_backend()
  base = 8 if backend == "cpu" else 512
  per_curve = width * (nout // 256 + 1) * 16
  fits = max(1, int(MEMORY.get(backend, MEMORY_ACCELERATOR) // per_curve))
  return min(base, 1 << (fits.bit_length() - 1))


def features(curves, chunk=None) -> dict:
  """The 16 features of (time, mag, err-or-None) curves: FEATURES -> (n,) float64 (NaN for
  bad curves), "reason" -> (n,) codes into REASONS (0 = ok), "n_points" -> (n,).

  Curves are grouped by length and padded to bucketed widths, so one compiled function
  serves many calls; err None means no errors (std(mag) is used, as UPSILoN does).
  Curves of more than MAX_POINTS points get the reason too_many_points.
  """
  from astrotl.preprocess import periodogram
  n = len(curves)
  curves = [(t, m, np.zeros(len(m)) if e is None else e) for t, m, e in curves]
  lengths = np.array([len(c[0]) for c in curves], np.int64)
  out = {k: np.full(n, np.nan) for k in F.FEATURES}
  out["reason"] = np.where(lengths > MAX_POINTS, TOO_MANY_POINTS, FB.OK)
  out["n_points"] = lengths
  nout = np.zeros(n, np.int64)   # frequencies searched (extract_batch's work and memory)
  for i, (t, _, _) in enumerate(curves):
    span = float(np.ptp(t)) if len(t) > 1 else 0.0
    if np.isfinite(span) and span > 0:
      nout[i] = periodogram.frequency_grid(span, len(t))[1]
  order = [i for i in np.argsort(lengths, kind="stable") if lengths[i] <= MAX_POINTS]
  start = 0
  while start < len(order):
    width = FB.bucket(max(int(lengths[order[start]]), 1))
    stop = start + 1
    while stop < len(order):  # grow the group while its padded size fits the budget
      w = FB.bucket(max(int(lengths[order[stop]]), 1))
      if (stop + 1 - start) * w > GROUP_POINTS:
        break
      width, stop = w, stop + 1
    idx = order[start:stop]
    group = [curves[i] for i in idx]
    size = chunk or _chunk(width, int(nout[idx].max()))
    if width <= 1024:   # cheap curves: always full calls, so one compilation serves all
      empty = np.zeros(0)
      group += [(empty, empty, empty)] * (size - len(group))
    got = FB.extract_batch(*FB.pad_curves(group, width), chunk=size)
    for k in F.FEATURES + ("reason",):
      out[k][idx] = got[k][:len(idx)]
    start = stop
  return out


def reason_text(code: int, n_points: int) -> str:
  name = REASONS[code]
  return f"{name}: " + REASON_TEXT[name].format(n=n_points, min=F.MIN_POINTS, max=MAX_POINTS)


# --- networks ------------------------------------------------------------------------------

def network_inputs(model, feats) -> np.ndarray:
  """(n, 16) float64 network inputs from a features dict, per the bundle's preprocessing."""
  return F.upsilont_inputs(feats, model.input["preprocess"])


def run(model, x, batch_size=256, embed=False) -> dict:
  """{network: (n, width) probabilities or values[, "embedding": (n, D)]} for inputs x,
  jit-compiled, in padded batches of a few sizes (few compilations)."""
  import jax
  from astrotl import parallel
  key = ("lightcurve", embed)
  if key not in model._fns:
    nets, primary = list(model.networks.values()), model.primary

    def fn(variables, x):
      out = {net.name: net.finish(net.model.apply(variables[net.name], x)) for net in nets}
      if embed:
        out["embedding"] = primary.model.apply(variables[primary.name], x, output="embedding")
      return out

    model._fns[key] = (jax.jit(fn), jax.device_put(model.variables()))
  fn, variables = model._fns[key]
  x = np.asarray(x, np.float32)
  n = len(x)
  size = min(batch_size, max(8, 1 << max(n - 1, 0).bit_length()))
  parts = []
  for start in range(0, n, size):
    rows, _ = parallel.pad_rows({"x": x[start:start + size]}, size)
    got = fn(variables, rows["x"])
    parts.append({k: np.asarray(v)[:min(size, n - start)] for k, v in got.items()})
  if not parts:
    widths = {net.name: net.width for net in model.networks.values()}
    return {k: np.zeros((0, w), np.float32) for k, w in widths.items()}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def prepare(model, curves=None, feats=None, chunk=None):
  """(feats, x, kept, errors) for curves, or for a features dict `feats` instead: the
  features, the network inputs x (n, 16), the indices of the inputs that can be classified
  and [(index, reason)] for the others."""
  check_model(model)
  if feats is None:
    feats = features(curves, chunk)
  n = len(feats["period"])
  reason = feats.get("reason", np.zeros(n, np.int64))
  with np.errstate(all="ignore"):
    x = network_inputs(model, feats)
  ok = (reason == FB.OK) & np.isfinite(x).all(1)
  errors = []
  for i in np.flatnonzero(~ok):
    if reason[i] != FB.OK:
      errors.append((int(i), reason_text(reason[i], int(feats["n_points"][i]))))
      continue
    bad = [k for k in F.FEATURES if not np.isfinite(float(feats[k][i]))] or ["the inputs"]
    errors.append((int(i), f"features_not_finite: {', '.join(bad)} (NaN or inf); the curve "
                   "is too sparse or too regular for them"))
  return feats, x, np.flatnonzero(ok), errors


def classify(model, curves=None, feats=None, batch_size=256, chunk=None):
  """(kept, columns, errors): `prepare`, the networks, and the table columns of the kept
  inputs ({name: (len(kept),) array} in `column_info` order; no n_points for feats)."""
  feats, x, kept, errors = prepare(model, curves, feats, chunk)
  cols = {}
  if "n_points" in feats:
    cols["n_points"] = np.asarray(feats["n_points"])[kept]
  for k in F.FEATURES:
    cols[k] = np.asarray(feats[k], np.float64)[kept]
  cols.update(model.outputs_to_columns(run(model, x[kept], batch_size)))
  return kept, cols, errors


# --- the user's calls (bundle.Model.predict / .embed) -----------------------------------------

def _inputs(inputs, id_column=None):
  """(names, curves or None, feats dict or None, read errors [(name, reason)]); with
  `id_column` names are (file, star id) pairs (id "" for a curve given as arrays), and
  errors (name, id, reason)."""
  if isinstance(inputs, np.ndarray) and inputs.ndim == 2 and inputs.dtype.kind in "fi":
    if inputs.shape[1] != len(F.FEATURES):
      raise ValueError(f"a feature array must be (n, {len(F.FEATURES)}) with columns "
                       f"{', '.join(F.FEATURES)}; got shape {inputs.shape}")
    if id_column is not None:
      raise ValueError("id_column splits light-curve files; a feature array has no stars")
    feats = {k: inputs[:, j].astype(np.float64) for j, k in enumerate(F.FEATURES)}
    return [str(i) for i in range(len(inputs))], None, feats, []
  if isinstance(inputs, (str, os.PathLike)) or _is_curve(inputs):
    inputs = [inputs]
  names, curves, errors = [], [], []
  for i, item in enumerate(inputs):
    if isinstance(item, (str, os.PathLike)) and id_column is not None:
      try:
        stars = list(io_lc.read_stars(item, id_column))
      except io_lc.LightCurveError as e:
        errors.append((e.path, "", e.reason))
        continue
      names += [(os.fspath(item), star) for star, _ in stars]
      curves += [curve for _, curve in stars]
      continue
    if isinstance(item, (str, os.PathLike)):
      try:
        curve = io_lc.read_curve(item)
      except io_lc.LightCurveError as e:
        errors.append((e.path, e.reason))
        continue
      names.append(os.fspath(item))
    elif _is_curve(item):
      arrays = [np.asarray(a, np.float64) for a in item if a is not None]
      if any(a.ndim != 1 for a in arrays) or len({len(a) for a in arrays}) != 1:
        errors.append((f"input {i}",) + (("",) if id_column is not None else ()) + (
            "time, mag and err must be 1-D arrays of one length, got shapes "
            f"{[a.shape for a in arrays]}",))
        continue
      curve = (arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None)
      names.append((str(i), "") if id_column is not None else str(i))
    else:
      raise TypeError(f"input {i}: {type(item).__name__} is not a file path, a (time, mag[, "
                      "err]) tuple or an (n, 16) feature array")
    curves.append(curve)
  return names, curves, None, errors


def _is_curve(item):
  return isinstance(item, tuple) and len(item) in (2, 3) and all(
      a is None or np.ndim(a) >= 1 for a in item) and item[0] is not None


def _no_rows(n_kept, errors):
  from astrotl import validate
  # (file, star id, reason) errors are named "file (star id)" in the warning or exception
  pairs = [(f"{e[0]} (star {e[1]})" if e[1] else e[0], e[2]) if len(e) == 3 else e
           for e in errors]
  validate.check_kept(n_kept, pairs, io_lc.LightCurveError, "got no prediction")


def _named(name, reason):
  return (*name, reason) if isinstance(name, tuple) else (name, reason)


def predict(model, inputs, batch_size: int = 256, id_column=None):
  """An astropy Table, one row per input with a prediction: `name` (the file, or the
  input's index), `n_points` (for curves), the 16 features, the model's output columns
  (`p_<class>`, `pred_class`; see `Model.columns`).  Inputs without one are listed with the
  reason in `table.meta["errors"]`; if none has one, the first error is raised.

  `id_column` (names or numbers, a list or "fieldid,tileid,seqn") splits each file into
  stars (`io.lightcurve.read_stars`): a row per star, with its id in an `id` column after
  `name`, and errors as (file, star id, reason) -- id "" when the whole file failed."""
  from astropy.table import Table
  names, curves, feats, errors = _inputs(inputs, id_column)
  kept, cols, errs = classify(model, curves, feats, batch_size) if names else ([], {}, [])
  errors += [_named(names[i], reason) for i, reason in errs]
  _no_rows(len(kept), errors)
  if id_column is None:
    t = Table({"name": np.asarray([names[i] for i in kept], dtype=str)})
  else:
    t = Table({"name": np.asarray([names[i][0] for i in kept], dtype=str),
               "id": np.asarray([names[i][1] for i in kept], dtype=str)})
  for k, (desc, unit) in column_info(model, with_points=curves is not None).items():
    t[k] = cols[k]
    t[k].description = desc
    t[k].unit = unit or None
  t.meta["errors"] = errors
  t.meta["model"] = model.source
  return t


def embed(model, inputs, batch_size: int = 256, id_column=None) -> np.ndarray:
  """The primary network's penultimate features (n, D) float32 of the inputs (or, with
  `id_column`, the stars) that get a prediction (the others are warned about, as in
  `predict`)."""
  names, curves, feats, errors = _inputs(inputs, id_column)
  if not names:
    _no_rows(0, errors)
  _, x, kept, errs = prepare(model, curves, feats)
  _no_rows(len(kept), errors + [_named(names[i], r) for i, r in errs])
  return np.asarray(run(model, x[kept], batch_size, embed=True)["embedding"], np.float32)
