"""The 16 UPSILoN features for many light curves at once, under `jax.jit`.

Curves of different lengths are padded to a common width and described by a boolean
mask.  Definitions are those of `astrotl.preprocess.features` (same frequency grid, same
fold, same statistics); `features.extract` is the float64 reference and the two agree
to the tolerances listed in tests/test_features.py.

The periodogram is evaluated exactly at every frequency of UPSILoN's grid, as blocked
float32 matrix products of phasors (see `periodogram` and `_tables`): that is nearly all
of the work, and it maps onto GPU/TPU matrix units.  The phasor angles are reduced mod 1
in float64 first, so the sums are good to ~1e-6 of the peak; the period differs from the
float64 reference only where two grid peaks tie to that level.  The statistics, the fold
and the Fourier fit run in float64 (inside `jax.enable_x64`): folding survey dates
(thousands of days, thousands of cycles) needs it.

On CPU small chunks (8 curves) keep the matrix products in cache and are fastest;
on a GPU use chunks of hundreds to thousands of curves.

A bad curve does not stop the batch: its features are NaN and `reason` says why
(codes index REASONS).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from astrotl.preprocess import periodogram, shapiro
from astrotl.preprocess.features import FEATURES, FOURIER_ORDER, MIN_POINTS

REASONS = ("ok", "too_few_points", "non_finite", "zero_span", "constant_mag", "negative_err")
OK, TOO_FEW_POINTS, NON_FINITE, ZERO_SPAN, CONSTANT_MAG, NEGATIVE_ERR = range(len(REASONS))
SUB = 16   # phasor sub-block: block sizes and block counts are multiples of it


def _reasons(time, mag, err, mask):
  """Reason code per curve (numpy, host)."""
  count = mask.sum(1)
  finite = np.isfinite(time) & np.isfinite(mag) & np.isfinite(err)
  nonfinite = np.any(mask & ~finite, axis=1)
  safe = mask & finite

  def ptp(x):
    hi = np.where(safe, x, -np.inf).max(1)
    lo = np.where(safe, x, np.inf).min(1)
    return hi - lo

  reason = np.full(len(time), OK)
  reason[np.any(safe & (err < 0), axis=1)] = NEGATIVE_ERR
  with np.errstate(invalid="ignore"):
    reason[ptp(mag) == 0] = CONSTANT_MAG
    reason[ptp(time) == 0] = ZERO_SPAN
  reason[nonfinite] = NON_FINITE
  reason[count < MIN_POINTS] = TOO_FEW_POINTS
  return reason


def bucket(nblocks):
  """Rounds up to 8 steps per octave (and to SUB), so similar batches share one compile."""
  step = max(SUB, 2 ** (int(np.log2(max(nblocks, 1))) - 3))
  return -(-nblocks // step) * step


def _sorted_valid(x, valid):
  """x sorted ascending with padding (+inf) last."""
  return jnp.sort(jnp.where(valid, x, jnp.inf))


def _percentile(s, k, q):
  """numpy 'linear' percentile q of the first k entries of sorted s."""
  pos = q / 100.0 * (k - 1)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, k - 1)
  frac = pos - lo
  return s[lo] + frac * (s[hi] - s[lo])


def _median(s, k):
  return 0.5 * (s[(k - 1) // 2] + s[k // 2])


def _cis(t, mult, step):
  """(cos, sin) of 2 pi frac(mult step t) as float32, (len(t), len(mult)).

  The angle is reduced mod 1 in float64 (survey dates times high frequencies are far
  beyond float32); the reduced angle loses nothing in float32.
  """
  cycles = t[:, None] * (mult * step)[None, :]
  a = (2.0 * jnp.pi * (cycles - jnp.floor(cycles))).astype(jnp.float32)
  return jnp.cos(a), jnp.sin(a)


def _tables(t, df, nblocks, block):
  """Small sine/cosine tables from which every periodogram phasor is a product.

  With j - 1 = J block + b, J = q SUB + r, b = u SUB + v and e(x) = exp(2 pi i x t),
  e(j df) = e(q SUB block df) e(r block df) e(u SUB df) e((v + 1) df).
  Only nblocks / SUB + block / SUB + 2 SUB sines and cosines are needed per point.
  They are returned from their own jit call: inside one computation XLA fuses the sines
  into the product that consumes them and recomputes them for every phasor.
  """
  outer = block * df
  return (_cis(t, jnp.arange(nblocks // SUB) * SUB, outer) + _cis(t, jnp.arange(SUB), outer)
          + _cis(t, jnp.arange(block // SUB) * SUB, df) + _cis(t, 1 + jnp.arange(SUB), df))


@functools.partial(jax.jit, static_argnames=("nblocks", "block"))
def _batch_tables(time, mask, df, nblocks, block):
  tmin = jnp.min(jnp.where(mask, time, jnp.inf), axis=1, keepdims=True)
  t0 = jnp.where(mask, time - tmin, 0.0)
  return jax.vmap(functools.partial(_tables, nblocks=nblocks, block=block))(t0, df)


def _combine(qc, qs, rc, rs):
  """exp(i (a_q + b_r)) for all q, r from (cos, sin) tables: (width, nq * nr)."""
  qc, qs, rc, rs = qc[:, :, None], qs[:, :, None], rc[:, None, :], rs[:, None, :]
  width = qc.shape[0]
  return (qc * rc - qs * rs).reshape(width, -1), (qs * rc + qc * rs).reshape(width, -1)


def _fourier_sums(weight, outer, inner):
  """sum_k weight_k exp(i (x_kJ + z_kb)) as (re, im), each (nblocks * block,).

  outer = (cos x, sin x), (width, nblocks); inner = (cos z, sin z), (width, block).
  re = [w cos x; w sin x]^T [cos z; -sin z],  im = [w cos x; w sin x]^T [sin z; cos z].
  """
  oc, os = outer
  ic, is_ = inner
  left = jnp.concatenate([weight[:, None] * oc, weight[:, None] * os])
  dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  re = dot(left.T, jnp.concatenate([ic, -is_]))
  im = dot(left.T, jnp.concatenate([is_, ic]))
  return re.ravel(), im.ravel()


def _power(yr, yi, wr, wi, n, var):
  """Lomb power from Y = sum y exp(i w t) and W = sum exp(2 i w t) (see `periodogram`)."""
  num = n * (yr * yr + yi * yi) - ((yr * yr - yi * yi) * wr + 2.0 * yr * yi * wi)
  den = n * n - (wr * wr + wi * wi)
  # den -> 0 only if all 2 w t coincide mod 2 pi; then the power is |Y|^2 / (2 n var).
  ok = den > 1e-6 * n * n
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.5 * (yr * yr + yi * yi) / n) / var


def _grid_power(tables, y, v, n, var):
  """Power at f_j = j df, j = 1 .. nblocks * block, by blocked matrix products."""
  oc, os = _combine(*tables[:4])                                   # (width, nblocks)
  ic, is_ = _combine(*tables[4:])                                   # (width, block)
  y1 = _fourier_sums(y, (oc, os), (ic, is_))
  double = lambda c, s: (c * c - s * s, 2.0 * c * s)                # angle doubling
  w2 = _fourier_sums(v, double(oc, os), double(ic, is_))
  return _power(*y1, *w2, n, var)


def _best_frequency(tables, y, valid, nout):
  """1-based grid index j <= nout of the highest Lomb power (first one if tied)."""
  n = valid.sum().astype(jnp.float32)
  y = y.astype(jnp.float32)
  var = jnp.sum(y * y) / (n - 1)
  power = _grid_power(tables, y, valid.astype(jnp.float32), n, var)
  size = power.shape[0]
  j = jnp.arange(1, size + 1)
  power = jnp.where(j <= nout, power, -1.0)
  # argmax as one max over int64 keys (power bits, then reversed index, so ties go to the
  # lowest j): XLA fuses the power into each reduction that reads it, so max followed by
  # an index search computes it twice, and its (value, index) argmax is slow on CPU.
  # Non-negative float32 bit patterns sort like the numbers.
  bits = jax.lax.bitcast_convert_type(power, jnp.int32).astype(jnp.int64)
  key = jnp.max(bits * (1 << 32) + (size - j))
  return size - (key & 0xFFFFFFFF)


def _one_curve(time, mag, err, valid, swcoef, df, nout, tables):
  """All 16 features of one padded curve (float64 except the periodogram sums)."""
  k = valid.sum()
  n = k.astype(time.dtype)
  idx = jnp.arange(time.shape[0])

  def mean(x):
    return jnp.sum(jnp.where(valid, x, 0.0)) / n

  # Error rules of `features.check_curve`: all zero -> std(mag), some zero -> median.
  mu = mean(mag)
  std = jnp.sqrt(mean((mag - mu) ** 2))
  s_err = _sorted_valid(err, valid)
  err = jnp.where(jnp.all(jnp.where(valid, err == 0, True)), std,
                  jnp.where(err == 0, _median(s_err, k), err))
  w = jnp.where(valid, 1.0 / jnp.where(valid, err, 1.0), 0.0)
  wmean = jnp.sum(w * mag) / jnp.sum(w)
  wstd = jnp.sqrt(jnp.sum(w * (mag - wmean) ** 2) / jnp.sum(w))

  s_mag = _sorted_valid(mag, valid)
  med = _median(s_mag, k)
  d = jnp.where(valid, mag - mu, 0.0)
  m2, m3, m4 = (jnp.sum(d ** p) / n for p in (2, 3, 4))
  ss = jnp.sum(d * d)
  r = jnp.where(valid, (mag - med) / jnp.where(valid, err, 1.0), 0.0)
  faint = valid & (mag > med)
  bright = valid & (mag <= med)

  def side(sel):
    return jnp.sum(jnp.where(sel, w * (mag - med) ** 2, 0.0)) / jnp.sum(jnp.where(sel, w, 0.0))

  out = {
      "skewness": m3 / m2 ** 1.5,
      "kurtosis": m4 / m2 ** 2 - 3.0,
      "shapiro_w": jnp.sum(swcoef * jnp.where(idx < k, s_mag, 0.0)) ** 2 / ss,
      "quartile31": _percentile(s_mag, k, 75.0) - _percentile(s_mag, k, 25.0),
      "stetson_k": jnp.sum(jnp.abs(r)) / jnp.sqrt(jnp.sum(r * r)) / jnp.sqrt(n),
      "hl_amp_ratio": jnp.sqrt(side(faint) / side(bright)),
  }

  j = _best_frequency(tables, d, valid, nout)
  period = 1.0 / (j * df)
  out["period"] = period

  x = 2.0 * jnp.pi * jnp.mod(time, period) / period
  harm = jnp.arange(1, FOURIER_ORDER + 1)
  design = jnp.concatenate(
      [jnp.ones_like(x)[:, None],
       jnp.stack([jnp.sin(x[:, None] * harm), jnp.cos(x[:, None] * harm)], -1)
       .reshape(len(x), 2 * FOURIER_ORDER)], axis=1)
  design = jnp.where(valid[:, None], design, 0.0)
  p = jnp.linalg.solve(design.T @ design, design.T @ jnp.where(valid, mag, 0.0))
  phase1 = jnp.arctan(-p[1] / p[2])
  amp = jnp.hypot(p[1], p[2])
  out.update(amplitude=amp, r21=jnp.hypot(p[3], p[4]) / amp, r31=jnp.hypot(p[5], p[6]) / amp,
             phi21=jnp.arctan(-p[3] / p[4]) - 2.0 * phase1,
             phi31=jnp.arctan(-p[5] / p[6]) - 3.0 * phase1)

  phase = jnp.where(valid, jnp.mod(time, 2.0 * period), jnp.inf)
  order = jnp.argsort(phase)
  ph, mf = phase[order], mag[order]
  pair = idx[:-1] < k - 1
  dm = jnp.diff(mf)
  dp = jnp.diff(jnp.where(idx < k, ph, 0.0))
  out["phase_eta"] = jnp.sum(jnp.where(pair, dm * dm, 0.0)) / (n - 1.0) / wstd ** 2
  c = jnp.cumsum(jnp.where(idx < k, mf - wmean, 0.0)) / n / wstd
  out["phase_cusum"] = (jnp.max(jnp.where(idx < k, c, -jnp.inf))
                        - jnp.min(jnp.where(idx < k, c, jnp.inf)))
  use = pair & (dm != 0)
  slope = jnp.sort(jnp.where(use, dp / jnp.where(use, dm, 1.0), jnp.inf))
  ns = use.sum()
  out["slope_per10"] = _percentile(slope, ns, 10.0)
  out["slope_per90"] = _percentile(slope, ns, 90.0)
  return out


@jax.jit
def _batch(time, mag, err, mask, swcoef, df, nout, tables):
  return jax.vmap(_one_curve)(time, mag, err, mask, swcoef, df, nout, tables)


def pad_curves(curves, width=None, multiple: int = 1):
  """(time, mag, err, mask) arrays (B, width) from (time, mag, err) tuples, the input of
  `extract_batch`.  width defaults to the longest curve rounded up to `multiple` (fewer
  distinct shapes, fewer compilations)."""
  if width is None:
    width = -(-max(len(c[0]) for c in curves) // multiple) * multiple
  b = len(curves)
  time, mag, err = (np.zeros((b, width)) for _ in range(3))
  mask = np.zeros((b, width), bool)
  for i, (t, m, e) in enumerate(curves):
    n = len(t)
    if n > width:
      raise ValueError(f"a curve has {n} points, more than the padded width {width}; raise it "
                       "(for the variable_stars builder: max_points in its config)")
    time[i, :n], mag[i, :n], err[i, :n], mask[i, :n] = t, m, e, True
  return time, mag, err, mask


def extract_batch(time, mag, err=None, mask=None, *, min_period=periodogram.MIN_PERIOD,
                  chunk=8, block=256) -> dict:
  """Features of B padded light curves.

  Args:
    time, mag: (B, N) arrays (days, magnitudes); padding values are ignored.
    err: (B, N) magnitude errors, or None (every error = std(mag) of its curve).
    mask: (B, N) bool, True for real points; None = all True.
    min_period: shortest period searched (days), as in UPSILoN.
    chunk: curves per jit call; every call has the same shapes, so one compilation
      serves all chunks of similar curves.
    block: frequencies per matrix-product column block, a multiple of SUB (16).

  Returns:
    dict: each name in FEATURES -> (B,) float64 array (NaN for bad curves), and
    "reason" -> (B,) int array, an index into REASONS (0 = "ok").
  """
  time = np.asarray(time, np.float64)
  mag = np.asarray(mag, np.float64)
  if time.ndim != 2 or time.shape != mag.shape:
    raise ValueError(f"time and mag must be (B, N) arrays of one shape, got {time.shape} "
                     f"and {mag.shape}")
  err = np.zeros_like(mag) if err is None else np.asarray(err, np.float64)
  mask = np.ones(mag.shape, bool) if mask is None else np.asarray(mask, bool)
  for name, a in (("err", err), ("mask", mask)):
    if a.shape != mag.shape:
      raise ValueError(f"{name} has shape {a.shape}; expected {mag.shape} like mag")

  if block % SUB or block <= 0:
    raise ValueError(f"block must be a positive multiple of {SUB}, got {block}")

  reason = _reasons(time, mag, err, mask)
  good = reason == OK
  if not good.any():
    out = {k: np.full(len(time), np.nan) for k in FEATURES}
    out["reason"] = reason
    return out
  mask = mask & good[:, None]
  time, mag, err = (np.where(mask, a, 0.0) for a in (time, mag, err))
  count = mask.sum(1)
  # Bad rows get a harmless stand-in (three points) and are blanked at the end.
  mask[~good, :3] = True
  time[~good, :3] = [0.0, 1.0, 2.0]
  mag[~good, :3] = [0.0, 1.0, 0.5]
  count[~good] = 3

  df = np.ones(len(time))
  nout = np.ones(len(time), np.int64)
  for i in np.flatnonzero(good):
    t = time[i, mask[i]]
    df[i], nout[i] = periodogram.frequency_grid(float(t.max() - t.min()), int(count[i]),
                                                min_period)
  nblocks = bucket(-(-int(nout.max()) // block))
  swcoef = shapiro.coefficient_rows(count, mag.shape[1])

  b = len(time)
  size = min(chunk, 1 << max(b - 1, 0).bit_length())
  pad = -b % size
  arrays = [time, mag, err, mask, swcoef, df, nout]
  arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
  parts = []
  with jax.enable_x64(True):
    for s in range(0, b + pad, size):
      time_, mag_, err_, mask_, swcoef_, df_, nout_ = (a[s:s + size] for a in arrays)
      tables = _batch_tables(time_, mask_, df_, nblocks=nblocks, block=block)
      parts.append(jax.device_get(_batch(time_, mag_, err_, mask_, swcoef_, df_, nout_,
                                         tables)))
  out = {k: np.concatenate([p[k] for p in parts])[:b] for k in FEATURES}
  for k in FEATURES:
    out[k][~good] = np.nan
  out["reason"] = reason
  return out
