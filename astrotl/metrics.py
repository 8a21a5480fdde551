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


# --- calibration ------------------------------------------------------------------------

def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
  """Class probabilities from logits (last axis), in float64, at a fitted temperature."""
  return np.exp(_log_softmax(np.asarray(logits, np.float64) / temperature))


def nll(logits, labels, temperature: float = 1.0) -> float:
  lp = _log_softmax(np.asarray(logits, np.float64) / temperature)
  return float(-np.mean(lp[np.arange(len(labels)), np.asarray(labels, int)]))


def fit_temperature(logits, labels, grid=np.logspace(-1.5, 1.5, 301)) -> float:
  """Temperature scaling (Guo et al. 2017): the T minimising held-out NLL of softmax(z/T).

  A 1-D grid search: robust, and exact enough (grid steps of 2.3%).
  """
  if len(labels) == 0:
    raise ValueError("fit_temperature needs at least one held-out example")
  losses = [nll(logits, labels, t) for t in grid]
  return float(grid[int(np.argmin(losses))])


def reliability(prob, hit, bins: int = 10) -> dict:
  """Reliability diagram data for confidences `prob` and outcomes `hit` (bool), with
  the expected calibration error (ECE)."""
  prob, hit = np.asarray(prob, float), np.asarray(hit, float)
  edges = np.linspace(0, 1, bins + 1)
  which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
  count = np.bincount(which, minlength=bins)
  conf = np.bincount(which, prob, bins) / np.maximum(count, 1)
  acc = np.bincount(which, hit, bins) / np.maximum(count, 1)
  ece = float(np.sum(count * np.abs(acc - conf)) / max(len(prob), 1))
  return {"edges": edges, "count": count, "confidence": conf, "accuracy": acc, "ece": ece}


def first_reaching(history, target: float, key: str = "val_accuracy"):
  """(step, seconds) of the first record in a `train.fit` history whose `key` reaches
  `target`, or (None, None) if none does: how fast a run learns, for transfer vs scratch."""
  for h in history:
    if h.get(key, -np.inf) >= target:
      return h["step"], h["seconds"]
  return None, None
