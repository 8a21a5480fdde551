"""Evaluation metrics on numpy arrays (host side, after prediction)."""

import numpy as np


def accuracy(y_true, y_pred) -> float:
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  return float(np.mean(y_true == y_pred)) if y_true.size else float("nan")


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
  """counts[true, pred]."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
  return m


def per_class(y_true, y_pred, num_classes: int) -> dict:
  """Completeness (recall), purity (precision) and F1 per class; NaN where undefined."""
  m = confusion(y_true, y_pred, num_classes)
  tp = np.diag(m).astype(float)
  with np.errstate(invalid="ignore", divide="ignore"):
    completeness = tp / m.sum(1)
    purity = tp / m.sum(0)
    f1 = 2 * completeness * purity / (completeness + purity)
  return {"completeness": completeness, "purity": purity, "f1": f1, "support": m.sum(1)}


def macro_f1(y_true, y_pred, num_classes: int) -> float:
  f1 = per_class(y_true, y_pred, num_classes)["f1"]
  return float(np.nanmean(np.where(np.isnan(f1), 0.0, f1)))


def mcc(y_true, y_pred, num_classes: int) -> float:
  """Multi-class Matthews correlation coefficient (Gorodkin's R_K)."""
  m = confusion(y_true, y_pred, num_classes).astype(float)
  n = m.sum()
  c = np.trace(m)
  t, p = m.sum(1), m.sum(0)
  denom = np.sqrt((n * n - p @ p) * (n * n - t @ t))
  return float((c * n - t @ p) / denom) if denom > 0 else 0.0


def mc_score(y_true, y_pred, num_classes: int) -> float:
  """Kim et al. 2021's Mc = (MCC + 1) / 2."""
  return (mcc(y_true, y_pred, num_classes) + 1.0) / 2.0


def regression(y_true, y_pred, tolerances=(0.5, 1.0)) -> dict:
  """MAE, max error, std of the error, and fraction within each tolerance."""
  err = np.asarray(y_pred, float).reshape(-1) - np.asarray(y_true, float).reshape(-1)
  out = {"mae": float(np.mean(np.abs(err))), "max_error": float(np.max(np.abs(err))),
         "std": float(np.std(err)), "bias": float(np.mean(err))}
  for t in tolerances:
    out[f"within_{t:g}"] = float(np.mean(np.abs(err) <= t))
  return out
