"""The 16 UPSILoN variability features of a light curve (Kim & Bailer-Jones 2016).

`extract(time, mag, err)` computes them for one curve with numpy/scipy in float64;
`extract_batch(time, mag, err, mask)` (in `features_batch`, re-exported here) computes
them for many padded curves under `jax.jit`.  Both follow UPSILoN 1.2.10:

Weights w = 1 / err.  If `err` is None every error is std(mag); if all errors are zero
the same; if some are zero they become the median error (as UPSILoN-T does).
Weighted mean mu_w = sum(w m) / sum(w);  weighted std s_w = sqrt(sum(w (m - mu_w)^2) / sum(w)).

Not period-based:
  skewness      scipy.stats.skew(mag) (biased, m3 / m2^1.5)
  kurtosis      scipy.stats.kurtosis(mag) (biased, Fisher: m4 / m2^2 - 3)
  shapiro_w     Shapiro-Wilk W of mag (scipy.stats.shapiro, Royston 1995 coefficients)
  quartile31    75th - 25th percentile of mag (numpy linear interpolation)
  stetson_k     r = (mag - median) / err;  sum|r| / sqrt(sum r^2) / sqrt(n)
  hl_amp_ratio  sqrt( [sum_{m > med} w (m - med)^2 / sum_{m > med} w]
                    / [sum_{m <= med} w (m - med)^2 / sum_{m <= med} w] ),  med = median(mag)
                (fainter-than-median over brighter-than-median spread; NaN if a side is empty)

Period (see `periodogram`): 1 / f at the highest Lomb power on f_j = j / (3 span),
j = 1 .. int(1.5 * max(100, int(2 span / n / 0.03)) * n).

Fourier: with x = (time mod P) / P, least squares fit of
mag ~ c0 + sum_{k=1..3} a_k sin(2 pi k x) + b_k cos(2 pi k x).  (UPSILoN runs Levenberg-
Marquardt from all-ones; the model is linear, so this is the same optimum.)
  amplitude  sqrt(a1^2 + b1^2)
  r21, r31   sqrt(a_k^2 + b_k^2) / amplitude, k = 2, 3
  phi21      arctan(-a2 / b2) - 2 arctan(-a1 / b1)
  phi31      arctan(-a3 / b3) - 3 arctan(-a1 / b1)
             (arctan, not arctan2, and no wrapping: values depend on the time origin, as
             in UPSILoN, so `time` must be the survey's own dates, not shifted)

Folded at twice the period (so both eclipses of a binary are kept): phase = time mod 2P,
points sorted by phase, m_f = mag in that order, phase_f = sorted phase (days):
  phase_eta    sum (m_f[i+1] - m_f[i])^2 / (n - 1) / s_w^2
  phase_cusum  c = cumsum(m_f - mu_w) / n / s_w;  max(c) - min(c)
  slope_per10, slope_per90
               10th / 90th percentile of (phase_f[i+1] - phase_f[i]) / (m_f[i+1] - m_f[i])
               over pairs with a non-zero magnitude step (time per magnitude, as in UPSILoN)

UPSILoN's tests drop rows with mag >= 99.999 (missing) and sigma-clip once at 3 sigma
around the median (`sigma_clip`); UPSILoN-T's do not clip.  `extract` does neither.
"""

import numpy as np
import scipy.stats

from astrotl.preprocess import periodogram

FEATURES = ("amplitude", "hl_amp_ratio", "kurtosis", "period", "phase_cusum", "phase_eta",
            "phi21", "phi31", "quartile31", "r21", "r31", "shapiro_w", "skewness",
            "slope_per10", "slope_per90", "stetson_k")
# name -> (description, unit), for catalogs of features (definitions above)
INFO = {
    "amplitude": ("first-harmonic amplitude of the 3-harmonic Fourier fit at the period", "mag"),
    "hl_amp_ratio": ("weighted spread fainter than the median over that brighter than it", ""),
    "kurtosis": ("kurtosis of the magnitudes (biased, Fisher)", ""),
    "period": ("period at the highest Lomb power on UPSILoN's frequency grid", "d"),
    "phase_cusum": ("range of the cumulative sum of magnitudes folded at twice the period", ""),
    "phase_eta": ("von Neumann eta of magnitudes folded at twice the period", ""),
    "phi21": ("Fourier phase difference phi2 - 2 phi1 (depends on the time origin)", "rad"),
    "phi31": ("Fourier phase difference phi3 - 3 phi1 (depends on the time origin)", "rad"),
    "quartile31": ("75th minus 25th percentile of the magnitudes", "mag"),
    "r21": ("Fourier amplitude ratio A2 / A1", ""),
    "r31": ("Fourier amplitude ratio A3 / A1", ""),
    "shapiro_w": ("Shapiro-Wilk W of the magnitudes", ""),
    "skewness": ("skewness of the magnitudes (biased)", ""),
    "slope_per10": ("10th percentile of phase step / magnitude step, folded at twice the period",
                    "d / mag"),
    "slope_per90": ("90th percentile of phase step / magnitude step, folded at twice the period",
                    "d / mag"),
    "stetson_k": ("Stetson K index of the error-weighted residuals from the median", ""),
}
MIN_POINTS = 10
FOURIER_ORDER = 3


class FeatureError(ValueError):
  """A light curve from which the features cannot be computed."""


def _as_1d(name, x):
  x = np.asarray(x, np.float64)
  if x.ndim != 1:
    raise FeatureError(f"{name} must be a 1-D array, got shape {x.shape}")
  bad = np.count_nonzero(~np.isfinite(x))
  if bad:
    raise FeatureError(f"{name} has {bad} non-finite value(s) (NaN/inf); drop those rows first")
  return x


def check_curve(time, mag, err=None):
  """Validated float64 (time, mag, err); raises FeatureError naming the problem."""
  time, mag = _as_1d("time", time), _as_1d("mag", mag)
  if len(time) != len(mag):
    raise FeatureError(f"time and mag differ in length: {len(time)} vs {len(mag)}")
  if len(time) < MIN_POINTS:
    raise FeatureError(f"only {len(time)} points; need at least {MIN_POINTS}")
  if np.ptp(time) == 0:
    raise FeatureError("time span is zero (all points at one date); period is undefined")
  if np.ptp(mag) == 0:
    raise FeatureError("mag is constant; the features are undefined for a flat curve")
  if err is None:
    return time, mag, np.full_like(mag, np.std(mag))
  err = _as_1d("err", err)
  if len(err) != len(mag):
    raise FeatureError(f"err and mag differ in length: {len(err)} vs {len(mag)}")
  if np.any(err < 0):
    raise FeatureError(f"err has {np.count_nonzero(err < 0)} negative value(s); "
                       "errors must be >= 0 (drop flagged rows first)")
  if not err.any():
    err = np.full_like(mag, np.std(mag))
  elif not err.all():
    err = np.where(err == 0, np.median(err), err)
  return time, mag, err


def sigma_clip(time, mag, err, threshold=3.0, iterations=1):
  """Keeps rows with |mag - median(mag)| <= threshold * std(mag), `iterations` times."""
  time, mag, err = (np.asarray(a) for a in (time, mag, err))
  for _ in range(int(iterations)):
    med, sd = np.median(mag), np.std(mag)
    keep = (mag >= med - threshold * sd) & (mag <= med + threshold * sd)
    time, mag, err = time[keep], mag[keep], err[keep]
  return time, mag, err


def fourier_fit(time, mag, period, order=FOURIER_ORDER):
  """Coefficients [c0, a1, b1, .., a_order, b_order] of the least-squares Fourier fit."""
  x = 2.0 * np.pi * (time % period) / period
  k = np.arange(1, order + 1)
  design = np.empty((len(x), 2 * order + 1))
  design[:, 0] = 1.0
  design[:, 1::2] = np.sin(np.outer(x, k))
  design[:, 2::2] = np.cos(np.outer(x, k))
  return np.linalg.lstsq(design, mag, rcond=None)[0]


def fourier_features(p):
  """amplitude, r21, r31, phi21, phi31 from fit coefficients `p`."""
  amp = np.hypot(p[1], p[2])
  with np.errstate(divide="ignore", invalid="ignore"):
    phase1 = np.arctan(-p[1] / p[2])
    return {
        "amplitude": amp,
        "r21": np.hypot(p[3], p[4]) / amp,
        "r31": np.hypot(p[5], p[6]) / amp,
        "phi21": np.arctan(-p[3] / p[4]) - 2.0 * phase1,
        "phi31": np.arctan(-p[5] / p[6]) - 3.0 * phase1,
    }


def _hl_amp_ratio(mag, med, w):
  faint, bright = mag > med, mag <= med
  with np.errstate(divide="ignore", invalid="ignore"):
    lo = np.sum(w[faint] * (mag[faint] - med) ** 2) / np.sum(w[faint])
    hi = np.sum(w[bright] * (mag[bright] - med) ** 2) / np.sum(w[bright])
    return np.sqrt(lo / hi)


def _eta(m, std):
  d = np.diff(m)
  return np.sum(d * d) / (len(m) - 1.0) / std ** 2


def _cusum(m, mean, std):
  c = np.cumsum(m - mean) / len(m) / std
  return np.max(c) - np.min(c)


def extract(time, mag, err=None, min_period=periodogram.MIN_PERIOD) -> dict:
  """The 16 UPSILoN features of one light curve (dict of floats; definitions above).

  Raises FeatureError for curves with fewer than MIN_POINTS points, non-finite values,
  a zero time span, constant magnitudes or negative errors.
  """
  time, mag, err = check_curve(time, mag, err)
  n = len(mag)
  w = 1.0 / err
  wmean = np.sum(w * mag) / np.sum(w)
  wstd = np.sqrt(np.sum(w * (mag - wmean) ** 2) / np.sum(w))
  med = np.median(mag)
  r = (mag - med) / err
  out = {
      "skewness": scipy.stats.skew(mag),
      "kurtosis": scipy.stats.kurtosis(mag),
      "shapiro_w": scipy.stats.shapiro(mag)[0],
      "quartile31": np.percentile(mag, 75) - np.percentile(mag, 25),
      "stetson_k": np.sum(np.abs(r)) / np.sqrt(np.sum(r * r)) / np.sqrt(n),
      "hl_amp_ratio": _hl_amp_ratio(mag, med, w),
  }
  period, _ = periodogram.best_period(time, mag, min_period)
  out["period"] = period
  out.update(fourier_features(fourier_fit(time, mag, period)))

  phase = time % (2.0 * period)
  order = np.argsort(phase)
  phase, m_f = phase[order], mag[order]
  out["phase_eta"] = _eta(m_f, wstd)
  out["phase_cusum"] = _cusum(m_f, wmean, wstd)
  dm, dp = np.diff(m_f), np.diff(phase)
  slope = dp[dm != 0] / dm[dm != 0]
  out["slope_per10"] = np.percentile(slope, 10.0)
  out["slope_per90"] = np.percentile(slope, 90.0)
  return {k: float(out[k]) for k in FEATURES}


def upsilont_inputs(features, preprocess) -> np.ndarray:
  """UPSILoN-T network inputs (..., 16) from a features dict (scalars or arrays).

  `preprocess` is the dict of `upsilont_preprocess.json` (see `astrotl.io.weights`):
  features are taken in `feature_order`; those with a `log10_min_offsets["min_<name>"]`
  become log10(x - min), where x - min == 0 becomes 1e-10 as in UPSILoN-T; then every
  column is standardised, (x - norm_median) / norm_std.

  One deliberate difference: UPSILoN-T gives NaN for x < min (log of a negative number);
  here such values are treated like x == min (-> log10(1e-10)), so a curve slightly outside
  the training range still gets a prediction.  NaN features stay NaN.
  """
  order = list(preprocess["feature_order"])
  missing = [k for k in order if k not in features]
  if missing:
    raise KeyError(f"features dict lacks {missing}; UPSILoN-T needs {order}")
  mins = preprocess["log10_min_offsets"]
  cols = []
  for name in order:
    x = np.asarray(features[name], np.float64)
    if "min_" + name in mins:
      x = x - mins["min_" + name]
      x = np.log10(np.where(x <= 0, 1e-10, x))
    cols.append(x)
  x = np.stack(cols, axis=-1)
  return (x - np.asarray(preprocess["norm_median"])) / np.asarray(preprocess["norm_std"])


def fit_preprocess(features, like, mins=None) -> dict:
  """`like` (an UPSILoN-T preprocess dict) with its statistics re-estimated on `features`.

  This is how Kim et al. (2021) prepare a new survey for transfer: the offsets of the
  log-transformed features become the minima of the target's training features (so the
  smallest value maps to log10(1e-10), as in UPSILoN-T), and norm_median / norm_std the
  median and standard deviation (ddof=0) of each column after the log step, both
  ignoring NaN.  `mins` ({"min_<name>": value}) keeps given offsets instead, e.g.
  UPSILoN-T's own.  Classes, feature order and the set of logged features are kept.
  The result is applied with `upsilont_inputs`.
  """
  if mins is None:
    mins = {}
    for key in like["log10_min_offsets"]:
      x = np.asarray(features[key[len("min_"):]], np.float64)
      x = x[np.isfinite(x)]
      if not x.size:
        raise ValueError(f"fit_preprocess: feature {key[len('min_'):]!r} has no finite value; "
                         "drop the curves whose features are NaN first")
      mins[key] = float(x.min())
  elif set(mins) != set(like["log10_min_offsets"]):
    raise ValueError(f"fit_preprocess: mins must name {sorted(like['log10_min_offsets'])}, "
                     f"got {sorted(mins)}")
  n = len(like["feature_order"])
  out = dict(like, log10_min_offsets=dict(mins), norm_median=[0.0] * n, norm_std=[1.0] * n)
  logged = upsilont_inputs(features, out)   # the log step alone, shared with prediction
  with np.errstate(all="ignore"):
    median, std = np.nanmedian(logged, 0), np.nanstd(logged, 0)
  bad = [name for name, s in zip(like["feature_order"], std) if not s > 0]
  if bad:
    raise ValueError(f"fit_preprocess: features {bad} are constant or NaN in the fitting set; "
                     "it needs at least two distinct finite values of each")
  out["norm_median"], out["norm_std"] = median.tolist(), std.tolist()
  return out


def __getattr__(name):
  # extract_batch and REASONS live in features_batch (which imports this module); they are
  # reachable from here too, resolved lazily to avoid a circular import.
  if name in ("extract_batch", "REASONS"):
    from astrotl.preprocess import features_batch
    return getattr(features_batch, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
