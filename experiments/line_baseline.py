"""The white-dwarf search's feature baseline: gradient-boosted trees on line features.

What an astronomer would try first (Guo et al. 2022: a random forest on line features of
LAMOST DR5 spectra; Vincent et al. 2025: gradient boosting): `astrotl.preprocess.lines`
measures equivalent widths, depths, widths and Balmer wing breadths plus continuum colours,
and a scikit-learn HistGradientBoostingClassifier separates white dwarfs (y = 1) from
everything else.  NaN features (a line that could not be measured) are missing values to
the trees, so no imputation is needed.

  from astrotl.preprocess import lines
  x = lines.line_features(flux, ivar, mask)
  model = line_baseline.fit(x[train], y[train], seed=0)
  p = line_baseline.predict_proba(model, x[test])
  table = line_baseline.importances(model, x[test], y[test], seed=0)
"""

import numpy as np

from astrotl.preprocess import lines

# Choices (scikit-learn defaults otherwise: 31 leaves, 20 samples per leaf, no L2):
MAX_ITER = 300            # an upper bound: early stopping usually ends sooner
LEARNING_RATE = 0.1
# Early stopping on the log loss of a fixed 10% of the training set (stratified by
# scikit-learn, drawn from `seed`), after 20 rounds without improvement: training is
# reproducible and does not overfit ~30,000 spectra, and it is the same on small sets
# (scikit-learn's "auto" switches it on only above 10,000 samples).
VALIDATION_FRACTION = 0.1
N_ITER_NO_CHANGE = 20
# White dwarfs are a few percent of a survey: without balancing the trees would learn
# that "not a white dwarf" is nearly always right.
CLASS_WEIGHT = "balanced"
IMPORTANCE_SCORING = "average_precision"  # rare positives: ranking, not accuracy
IMPORTANCE_REPEATS = 5


def fit(features, y, seed: int = 0, max_iter: int = MAX_ITER):
  """A HistGradientBoostingClassifier fitted to features (n, F) and binary y (1 = WD)."""
  from sklearn.ensemble import HistGradientBoostingClassifier  # pylint: disable=g-import-not-at-top
  y = np.asarray(y).astype(int)
  if set(np.unique(y)) != {0, 1}:
    raise ValueError(f"line_baseline.fit needs both classes 0 and 1 in y, got {np.unique(y)}")
  model = HistGradientBoostingClassifier(
      max_iter=max_iter, learning_rate=LEARNING_RATE, class_weight=CLASS_WEIGHT,
      early_stopping=True, validation_fraction=VALIDATION_FRACTION,
      n_iter_no_change=N_ITER_NO_CHANGE, scoring="loss", random_state=seed)
  return model.fit(np.asarray(features, np.float32), y)


def predict_proba(model, features) -> np.ndarray:
  """P(white dwarf) for features (n, F), float64 (n,)."""
  p = model.predict_proba(np.asarray(features, np.float32))
  return p[:, list(model.classes_).index(1)].astype(np.float64)


def importances(model, features, y, seed: int = 0, n_repeats: int = IMPORTANCE_REPEATS,
                names=lines.FEATURE_NAMES) -> dict:
  """Permutation importance of every feature, {name: (mean, std)} in `names` order.

  The drop in average precision when one feature's column is shuffled (n_repeats
  shuffles); measure it on held-out spectra, not the training set.  Correlated features
  (a line's EW and depth) share their importance, so each can look small.
  """
  from sklearn.inspection import permutation_importance  # pylint: disable=g-import-not-at-top
  features = np.asarray(features, np.float32)
  if features.shape[1] != len(names):
    raise ValueError(f"{features.shape[1]} feature columns but {len(names)} names")
  r = permutation_importance(model, features, np.asarray(y).astype(int),
                             scoring=IMPORTANCE_SCORING, n_repeats=n_repeats,
                             random_state=seed)
  return {n: (float(m), float(s)) for n, m, s in zip(names, r.importances_mean,
                                                     r.importances_std)}
