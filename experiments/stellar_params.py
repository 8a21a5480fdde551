"""Teff, log g and [Fe/H] of the LAMOST DR10 stars: scores, the baselines and the bundle.

Used by `spectral_subtype.py`'s params study: a 3-output `resnet1d` (trained there) against
gradient-boosted trees and The Cannon (`experiments/cannon.py`) on the same split, each
scored per label by robust scatter (1.4826 x the median absolute deviation of the
residuals) and bias (their median) on the test stars.
"""

import contextlib
import time

import numpy as np

from astrotl import bundle

import subtype_data  # experiments/ is on sys.path: the script's own folder

MAD_TO_SIGMA = 1.4826  # a Gaussian's sigma / its median absolute deviation


def scores(y_true, y_pred, names=subtype_data.PARAMS) -> dict:
  """Per label: robust scatter and median bias of pred - true, RMS, and how many."""
  out = {}
  for j, name in enumerate(names):
    r = np.asarray(y_pred, np.float64)[:, j] - np.asarray(y_true, np.float64)[:, j]
    r = r[np.isfinite(r)]
    med = float(np.median(r)) if r.size else float("nan")
    out[name] = {"scatter": MAD_TO_SIGMA * float(np.median(np.abs(r - med))) if r.size
                 else float("nan"),
                 "bias": med, "rms": float(np.sqrt(np.mean(r ** 2))) if r.size else float("nan"),
                 "n": int(r.size), "n_failed": int(len(y_true) - r.size)}
  return out


def one_thread():
  """A context with one BLAS/OpenMP thread: on a shared, busy CPU the spinning OpenMP
  workers of scikit-learn's boosted trees stall seconds of work for many minutes."""
  try:
    from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(1)


def standardise(y, rows):
  """(mean, std) per label over `rows`: the network learns (y - mean) / std."""
  return y[rows].mean(0), y[rows].std(0)


def boosted_trees(x, y, tr, te, seed=0) -> np.ndarray:
  """One HistGradientBoostingRegressor per label on 8-pixel means (as the subtype baseline)."""
  from sklearn.ensemble import HistGradientBoostingRegressor  # pylint: disable=g-import-not-at-top
  xb = x[:, :x.shape[1] // 8 * 8].reshape(len(x), -1, 8).mean(-1)
  pred = np.zeros((len(te), y.shape[1]))
  for j in range(y.shape[1]):
    gbt = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=seed)
    pred[:, j] = gbt.fit(xb[tr], y[tr, j]).predict(xb[te])
  return pred


def the_cannon(d, tr, te) -> tuple:
  """(test predictions, details): a quadratic Cannon trained on the binned network input
  and its inverse variance."""
  import cannon  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  model = cannon.fit(d["x"][tr], d["x_ivar"][tr], d["params"][tr],
                     label_names=subtype_data.PARAMS)
  t1 = time.time()
  labels, errors, chi2 = cannon.infer(model, d["x"][te], d["x_ivar"][te])
  return labels, {"fit_seconds": t1 - t0, "infer_seconds": time.time() - t1,
                  "median_reduced_chi2": float(np.nanmedian(chi2)),
                  "median_formal_error": np.nanmedian(errors, axis=0).tolist(),
                  "pixels_fitted": int(np.sum(np.isfinite(model.scatter)))}


def make_bundle(variables, model_config, c, mean, std, about) -> bundle.Model:
  """The `lamost_params` bundle: the network's standardised outputs come out in K, dex,
  dex through `scale`."""
  config = {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in model_config.items()}
  meta = {"format": bundle.FORMAT, "name": "lamost_params",
          "input": subtype_data.input_spec(c),
          "networks": {"main": {"model": "resnet1d", "config": config, "output": "regression",
                                "targets": list(subtype_data.PARAMS),
                                "units": list(subtype_data.UNITS),
                                "scale": [[float(m), float(s)] for m, s in zip(mean, std)]}},
          "rule": None, "about": about}
  return bundle.Model({"main": variables}, meta)


def check_bundle(path, files, expected) -> dict:
  """How far the saved bundle's `predict` (the scan's device path, float16 weights) is
  from the experiment's own predictions `expected` (n, 3) for `files`."""
  model = bundle.load_model(path)
  table = model.predict([str(f) for f in files])
  got = np.stack([np.asarray(table[k], np.float64) for k in subtype_data.PARAMS], 1)
  diff = np.abs(got - np.asarray(expected, np.float64))
  return {"files": len(files), "units": {k: model.columns()[k][1] for k in subtype_data.PARAMS},
          "max_abs_difference": dict(zip(subtype_data.PARAMS, diff.max(0).tolist()))}
