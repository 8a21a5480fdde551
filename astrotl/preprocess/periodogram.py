"""The Lomb periodogram on UPSILoN's frequency grid (numpy, float64).

UPSILoN 1.2.10 searches periods with the Press & Rybicki (1989) fast Lomb periodogram,
oversampling 3 and "hifac" = max(100, int(2 * span / n / min_period)), min_period = 0.03 d.
That fixes the grid: frequencies f_j = j * df, j = 1 .. nout, with

    df   = 1 / (3 * span)                 span = max(time) - min(time), in days
    nout = int(0.5 * 3 * hifac * n)       so f_nout ~ 1 / min_period (or more for hifac = 100)

The period is 1 / f_jmax at the highest power, so it always lies on this grid.  We
evaluate the classical Lomb (1976) periodogram exactly on the same grid instead of
through Press & Rybicki's extirpolation + FFT, which only approximates it.

Exact evaluation costs n * nout complex products.  Writing j - 1 = J * B + b splits
exp(2 pi i f_j t) into exp(2 pi i J B df t) * exp(2 pi i (b + 1) df t), so every sum over
the points becomes one matrix product of a (blocks x n) and an (n x B) matrix.
"""

import numpy as np

OVERSAMPLING = 3.0
MIN_PERIOD = 0.03
MIN_HIFAC = 100


def frequency_grid(span: float, n: int, min_period: float = MIN_PERIOD):
  """UPSILoN's grid for a curve of `n` points over `span` days: (df, nout)."""
  # Same operation order as UPSILoN so that int() truncates identically.
  hifac = max(int(span / n / min_period * 2.0), MIN_HIFAC)
  nout = int(0.5 * OVERSAMPLING * hifac * n)
  return 1.0 / (span * OVERSAMPLING), nout


def _phasors(t, step, count):
  """exp(2 pi i k step t) for k = 0 .. count-1, shape (count, len(t)), reduced mod 1 first."""
  cycles = np.outer(np.arange(count) * step, t)
  return np.exp(2j * np.pi * (cycles - np.floor(cycles)))


def lomb_power(time, mag, df, nout, block=512):
  """Normalised Lomb power at f_j = j df, j = 1 .. nout (float64, length nout).

  P(f) = [ (sum y_c cos w(t - tau))^2 / sum cos^2 w(t - tau)
         + (sum y_c sin w(t - tau))^2 / sum sin^2 w(t - tau) ] / (2 var),
  w = 2 pi f, y_c = mag - mean(mag), var = sum y_c^2 / (n - 1), tan(2 w tau) =
  sum sin 2wt / sum cos 2wt.
  """
  t = np.asarray(time, np.float64) - np.min(time)
  y = np.asarray(mag, np.float64) - np.mean(mag)
  n = len(t)
  var = np.sum(y * y) / (n - 1)
  nblocks = -(-nout // block)
  outer = _phasors(t, block * df, nblocks)                      # (nblocks, n)
  inner = _phasors(t, df, block + 1)[1:].T                       # (n, block), k = 1 .. block
  s1 = ((outer * y) @ inner).ravel()[:nout]                      # sum y exp(i w t)
  s2 = ((outer * outer) @ (inner * inner)).ravel()[:nout]        # sum exp(2 i w t)
  return _lomb_from_sums(s1, s2, n, var)


def _lomb_from_sums(y, w, n, var):
  """Lomb power from Y = sum y_c exp(i w t) and W = sum exp(2 i w t).

  Rotating by tau turns Y into YC + i YS with (YC + i YS)^2 = Y^2 conj(W) / |W|, and
  sum cos^2, sum sin^2 = (n +- |W|) / 2, which gives the tau-free form
  P = (n |Y|^2 - Re(Y^2 conj(W))) / ((n^2 - |W|^2) var).
  """
  num = n * np.abs(y) ** 2 - np.real(y * y * np.conj(w))
  den = n * n - np.abs(w) ** 2
  # den -> 0 only if all 2 w t coincide mod 2 pi; then the power is |Y|^2 / (2 n var).
  ok = den > 1e-12 * n * n
  return np.where(ok, num / np.where(ok, den, 1.0), 0.5 * np.abs(y) ** 2 / n) / var


def best_period(time, mag, min_period: float = MIN_PERIOD):
  """(period, power) at the highest Lomb peak on UPSILoN's grid."""
  time = np.asarray(time, np.float64)
  df, nout = frequency_grid(float(time.max() - time.min()), len(time), min_period)
  power = lomb_power(time, mag, df, nout)
  j = int(np.argmax(power))
  return 1.0 / ((j + 1) * df), power
