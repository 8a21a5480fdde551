"""The Cannon: a quadratic data-driven model of stellar spectra (numpy/scipy).

Ness et al. 2015 (ApJ 808, 16), as applied to LAMOST by Ho et al. 2017.  Each pixel j of
a continuum-normalised spectrum is a quadratic function of the labels plus Gaussian noise:

  f_nj = theta_j . v(l_n) + noise,   Var(noise) = sigma_nj^2 + s_j^2,

with sigma_nj^2 = 1 / ivar_nj and s_j an intrinsic scatter per pixel.  v(l) is
[1, l_1..l_K, l_i * l_k for i <= k] (D = 1 + K + K (K + 1) / 2 terms; `terms` names them),
of labels pivoted on the training median and divided by half the training 16-84 percentile
range, so the normal equations are well conditioned and the 16th / 50th / 84th percentiles
sit at -1 / 0 / +1.

Training (`fit`) fits every pixel at once: for a given s_j, theta_j is weighted least
squares with weights ivar / (1 + ivar s_j^2); s_j minimises the profile negative log
likelihood, searched on a grid and refined by golden section, vectorised over pixels.
The test step (`infer`) screens starting labels (every combination of the training 16th,
50th and 84th percentiles) by chi^2, runs scipy's Levenberg-Marquardt from the best few with
an analytic Jacobian and keeps the best.  Pixels with ivar = 0 are ignored in both steps,
whatever their flux (NaN included).  A pixel that too few training spectra cover
(at most D) cannot be fitted: it gets theta = 0 and scatter = inf and never counts.

  import cannon  # with experiments/ on sys.path, as the tests do
  model = cannon.fit(flux, ivar, labels, label_names=("teff", "logg", "feh"))
  labels, errors, chi2 = cannon.infer(model, flux_new, ivar_new)
  model_flux = cannon.predict(model, labels)          # (N, P) noise-free spectra
  np.savez("cannon.npz", **model.to_dict())
  model = cannon.CannonModel.from_dict(np.load("cannon.npz"))

flux and ivar are (N, P), labels (N, K) in physical units.  `infer` returns labels and
their formal 1-sigma errors (N, K) in physical units, and the reduced chi^2 (N,); a spectrum
with K or fewer usable pixels gets a row of NaN.  The errors come from the Jacobian at the
best fit and are not rescaled by chi^2.
"""

import dataclasses
import functools

import numpy as np
from scipy import optimize

# Scatter search, per pixel: s = 0 and a geometric grid from 1e-3 to 2 times the pixel's
# spread of training flux (the scatter cannot usefully exceed it), then golden section in
# the bracket around the grid minimum.  Neighbouring grid points differ by a factor 2, and
# 20 golden steps shrink that bracket to ~1e-4 of s: far below the scatter's own error.
SCATTER_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 2.0, 12)])
GOLDEN_STEPS = 20
# A relative ridge on the normal equations, only so that a degenerate pixel cannot make
# the batched solve fail; far below the precision of any real fit.
RIDGE = 1e-10
N_STARTS = 3           # Levenberg-Marquardt runs per spectrum, from the best screened starts
MAX_GRID_STARTS = 243  # 3^K combinations up to K = 5; beyond, the centre and +-1 per axis


@dataclasses.dataclass
class CannonModel:
  """A trained Cannon.

  theta (P, D): coefficients in the scaled labels, columns in `terms(label_names)` order.
  scatter (P,): intrinsic scatter in flux units (inf: pixel not fitted).
  pivot, scale (K,): scaled label = (label - pivot) / scale.
  """
  theta: np.ndarray
  scatter: np.ndarray
  pivot: np.ndarray
  scale: np.ndarray
  label_names: tuple

  def __post_init__(self):
    self.theta = np.asarray(self.theta, np.float64)
    self.scatter = np.asarray(self.scatter, np.float64)
    self.pivot = np.asarray(self.pivot, np.float64)
    self.scale = np.asarray(self.scale, np.float64)
    self.label_names = tuple(str(n) for n in np.atleast_1d(self.label_names))
    k = self.pivot.shape[0] if self.pivot.ndim == 1 else -1
    if k < 1 or self.scale.shape != (k,) or len(self.label_names) != k:
      raise ValueError(f"CannonModel: pivot, scale and label_names must all have length K, got "
                       f"{self.pivot.shape}, {self.scale.shape}, {len(self.label_names)}")
    if not (np.all(np.isfinite(self.pivot)) and np.all(np.isfinite(self.scale))
            and np.all(self.scale > 0)):
      raise ValueError("CannonModel: pivot must be finite and scale finite and > 0")
    d = n_terms(k)
    if self.theta.ndim != 2 or self.theta.shape[1] != d:
      raise ValueError(f"CannonModel: theta must be (P, {d}) for {k} labels, "
                       f"got {self.theta.shape}")
    if self.scatter.shape != (self.theta.shape[0],):
      raise ValueError(f"CannonModel: scatter must be ({self.theta.shape[0]},), "
                       f"got {self.scatter.shape}")
    if not np.all(np.isfinite(self.theta)) or np.any(np.isnan(self.scatter)) \
        or np.any(self.scatter < 0):
      raise ValueError("CannonModel: theta must be finite and scatter >= 0 (inf allowed)")

  @property
  def n_labels(self) -> int:
    return self.pivot.shape[0]

  @property
  def n_pixels(self) -> int:
    return self.theta.shape[0]

  def to_dict(self) -> dict:
    """Plain lists, for np.savez(path, **d) or json (inf scatter is written as Infinity)."""
    return {"theta": self.theta.tolist(), "scatter": self.scatter.tolist(),
            "pivot": self.pivot.tolist(), "scale": self.scale.tolist(),
            "label_names": list(self.label_names)}

  @classmethod
  def from_dict(cls, d) -> "CannonModel":
    """The inverse of to_dict; also takes np.load's NpzFile of a saved dict."""
    return cls(theta=d["theta"], scatter=d["scatter"], pivot=d["pivot"], scale=d["scale"],
               label_names=d["label_names"])


def n_terms(k: int) -> int:
  return 1 + k + k * (k + 1) // 2


@functools.lru_cache(maxsize=None)
def _pairs(k):
  return np.triu_indices(k)  # (i, k) with i <= k, row-major: the quadratic terms' order


def terms(label_names) -> list:
  """Names of theta's columns, e.g. ["1", "teff", "logg", "teff*teff", "teff*logg", ...]."""
  names = list(label_names)
  i, k = _pairs(len(names))
  return ["1"] + names + [f"{names[a]}*{names[b]}" for a, b in zip(i, k)]


def vectorize(scaled) -> np.ndarray:
  """v(l) for scaled labels (N, K): (N, D)."""
  scaled = np.asarray(scaled, np.float64)
  i, k = _pairs(scaled.shape[1])
  return np.concatenate([np.ones((scaled.shape[0], 1)), scaled, scaled[:, i] * scaled[:, k]],
                        axis=1)


def _vectorize_jac(l, pairs):
  """dv/dl (D, K) at one scaled label vector l (K,)."""
  k = l.shape[0]
  i, j = pairs
  dv = np.zeros((n_terms(k), k))
  dv[1 + np.arange(k), np.arange(k)] = 1.0
  rows = 1 + k + np.arange(i.shape[0])
  dv[rows, i] += l[j]
  dv[rows, j] += l[i]  # i == j: 2 l_i, as it should
  return dv


def predict(model: CannonModel, labels) -> np.ndarray:
  """Noise-free model spectra (N, P) at physical labels (N, K)."""
  labels = np.asarray(labels, np.float64)
  if labels.ndim != 2 or labels.shape[1] != model.n_labels:
    raise ValueError(f"predict: labels must be (N, {model.n_labels}), got {labels.shape}")
  return vectorize((labels - model.pivot) / model.scale) @ model.theta.T


def _check_spectra(flux, ivar, who, n_pixels=None):
  """float64 copies of flux and ivar; flux is zeroed where ivar = 0 (garbage allowed there)."""
  flux = np.array(flux, np.float64)
  ivar = np.array(ivar, np.float64)
  if flux.ndim != 2:
    raise ValueError(f"{who}: flux must be 2-D (N spectra, P pixels), got shape {flux.shape}"
                     " (one spectrum: flux[None])")
  if n_pixels is not None and flux.shape[1] != n_pixels:
    raise ValueError(f"{who}: flux has {flux.shape[1]} pixels but the model has {n_pixels}")
  if ivar.shape != flux.shape:
    raise ValueError(f"{who}: ivar must have flux's shape {flux.shape}, got {ivar.shape}")
  if not np.all(np.isfinite(ivar)) or np.any(ivar < 0):
    raise ValueError(f"{who}: ivar must be finite and >= 0 (0 masks a pixel)")
  good = ivar > 0
  if not np.all(np.isfinite(flux[good])):
    raise ValueError(f"{who}: flux must be finite wherever ivar > 0 "
                     "(set ivar = 0 to mask bad pixels)")
  flux[~good] = 0.0
  return flux, ivar


def _label_scaling(labels):
  pivot = np.median(labels, axis=0)
  q16, q84 = np.percentile(labels, [16, 84], axis=0)
  scale = (q84 - q16) / 2
  # A label bunched on a few values can have a zero percentile range but not zero spread.
  scale = np.where(scale > 0, scale, labels.std(axis=0))
  return pivot, scale


def _solve_batched(x, upper, xx, w, wf, ridge=RIDGE):
  """theta (P, D) minimising sum_n w_nj (f_nj - x_n . theta_j)^2 for every pixel j.

  upper: np.triu_indices(D), the distinct entries of the symmetric normal matrix;
  xx (N, D (D + 1) / 2): x[:, i] * x[:, j] for those entries.
  """
  d = x.shape[1]
  i, j = upper
  # X^T W X for all pixels at once: one matrix product over its distinct entries.
  a_flat = xx.T @ w  # (T, P)
  a = np.empty((w.shape[1], d, d))
  a[:, i, j] = a_flat.T
  a[:, j, i] = a_flat.T
  diag = np.einsum("pii->pi", a)
  diag += ridge * diag.mean(axis=1, keepdims=True)
  b = (x.T @ wf).T  # (P, D)
  return np.linalg.solve(a, b[..., None])[..., 0]


def fit(flux, ivar, labels, label_names=None) -> CannonModel:
  """Train a Cannon on normalised flux and ivar (N, P) with physical labels (N, K)."""
  flux, ivar = _check_spectra(flux, ivar, "fit")
  labels = np.asarray(labels, np.float64)
  n, p = flux.shape
  if labels.ndim != 2 or labels.shape[0] != n:
    raise ValueError(f"fit: labels must be (N={n}, K), one row per spectrum, "
                     f"got shape {labels.shape}")
  k = labels.shape[1]
  if k < 1:
    raise ValueError("fit: labels must have at least one column")
  if not np.all(np.isfinite(labels)):
    rows = np.flatnonzero(~np.all(np.isfinite(labels), axis=1))
    raise ValueError(f"fit: labels must be finite; {rows.size} rows are not "
                     f"(first: {rows[:5].tolist()})")
  if label_names is None:
    label_names = tuple(f"label_{c}" for c in range(k))
  label_names = tuple(str(s) for s in label_names)
  if len(label_names) != k:
    raise ValueError(f"fit: label_names has {len(label_names)} names for {k} label columns")
  d = n_terms(k)
  if n <= d:
    raise ValueError(f"fit: {n} spectra cannot fit {d} coefficients per pixel "
                     f"for {k} labels; need more than {d}")
  pivot, scale = _label_scaling(labels)
  if np.any(scale <= 0):
    raise ValueError(f"fit: labels {[label_names[c] for c in np.flatnonzero(scale <= 0)]} "
                     "are constant over the training set")

  x = vectorize((labels - pivot) / scale)
  upper = np.triu_indices(d)
  xx = x[:, upper[0]] * x[:, upper[1]]
  theta = np.zeros((p, d))
  scatter = np.full(p, np.inf)
  good = ivar > 0
  fitted = good.sum(axis=0) > d
  if not np.any(fitted):
    raise ValueError(f"fit: no pixel has ivar > 0 in more than {d} spectra")
  f, iv, m = flux[:, fitted], ivar[:, fitted], good[:, fitted]
  count = m.sum(axis=0)
  mean = f.sum(axis=0) / count
  spread = np.sqrt((m * (f - mean) ** 2).sum(axis=0) / count)

  def nll(s):
    """Profile -ln L (up to a constant) at scatter s (P',), and its theta."""
    ivs2 = iv * s**2
    w = iv / (1 + ivs2)
    th = _solve_batched(x, upper, xx, w, w * f)
    r = f - x @ th.T
    return 0.5 * (w * r * r + np.log1p(ivs2)).sum(axis=0), th

  grid = SCATTER_GRID[:, None] * spread  # (G, P')
  values = np.stack([nll(s)[0] for s in grid])
  at = np.argmin(values, axis=0)
  cols = np.arange(at.size)
  best_s, best_v = grid[at, cols], values[at, cols]
  lo = grid[np.maximum(at - 1, 0), cols]
  hi = grid[np.minimum(at + 1, grid.shape[0] - 1), cols]
  g = (np.sqrt(5) - 1) / 2
  c, e = hi - g * (hi - lo), lo + g * (hi - lo)
  fc, fe = nll(c)[0], nll(e)[0]
  for _ in range(GOLDEN_STEPS):
    left = fc < fe  # the minimum is in [lo, e]: drop (e, hi]
    hi = np.where(left, e, hi)
    lo = np.where(left, lo, c)
    new = np.where(left, hi - g * (hi - lo), lo + g * (hi - lo))
    fn = nll(new)[0]
    c, e, fc, fe = (np.where(left, new, e), np.where(left, c, new),
                    np.where(left, fn, fe), np.where(left, fc, fn))
    for s, v in ((c, fc), (e, fe)):
      better = v < best_v
      best_s, best_v = np.where(better, s, best_s), np.where(better, v, best_v)
  theta[fitted] = nll(best_s)[1]
  scatter[fitted] = best_s
  return CannonModel(theta=theta, scatter=scatter, pivot=pivot, scale=scale,
                     label_names=label_names)


def _starts(k):
  """Starting points in scaled labels: the training 16th/50th/84th percentiles."""
  if 3**k <= MAX_GRID_STARTS:
    return np.stack(np.meshgrid(*[[-1.0, 0.0, 1.0]] * k, indexing="ij"), -1).reshape(-1, k)
  return np.concatenate([np.zeros((1, k)), np.eye(k), -np.eye(k)])


def infer(model: CannonModel, flux, ivar, n_starts: int = N_STARTS):
  """Labels, their formal errors (N, K) in physical units and reduced chi^2 (N,).

  Rows of NaN for spectra with K or fewer usable pixels (ivar > 0 on a fitted pixel).
  """
  flux, ivar = _check_spectra(flux, ivar, "infer", n_pixels=model.n_pixels)
  if n_starts < 1:
    raise ValueError(f"infer: n_starts must be >= 1, got {n_starts}")
  k = model.n_labels
  n = flux.shape[0]
  usable = (ivar > 0) & np.isfinite(model.scatter)
  with np.errstate(invalid="ignore"):  # ivar * inf on masked or unfitted pixels
    w = np.where(usable, ivar / (1 + ivar * model.scatter**2), 0.0)

  starts = _starts(k)
  start_flux = vectorize(starts) @ model.theta.T  # (S, P)
  # chi^2 of every start for every spectrum, expanded into matrix products.
  screen = ((w * flux**2).sum(axis=1)[:, None] - 2 * (w * flux) @ start_flux.T
            + w @ (start_flux**2).T)
  order = np.argsort(screen, axis=1)[:, :n_starts]

  pairs = _pairs(k)
  labels = np.full((n, k), np.nan)
  errors = np.full((n, k), np.nan)
  chi2 = np.full(n, np.nan)
  for row in range(n):
    px = usable[row]
    m = int(px.sum())
    if m <= k:
      continue
    sw = np.sqrt(w[row, px])
    a = sw[:, None] * model.theta[px]
    y = sw * flux[row, px]

    def resid(l, a=a, y=y):
      return a @ np.concatenate([[1.0], l, l[pairs[0]] * l[pairs[1]]]) - y

    def jac(l, a=a):
      return a @ _vectorize_jac(l, pairs)

    best = None
    for s in order[row]:
      res = optimize.least_squares(resid, starts[s], jac=jac, method="lm")
      if best is None or res.cost < best.cost:
        best = res
    labels[row] = model.pivot + model.scale * best.x
    chi2[row] = 2 * best.cost / (m - k)
    try:
      var = np.diag(np.linalg.inv(best.jac.T @ best.jac))
    except np.linalg.LinAlgError:
      continue  # a degenerate direction: the errors stay NaN
    with np.errstate(invalid="ignore"):
      errors[row] = np.sqrt(var) * model.scale
  return labels, errors, chi2
