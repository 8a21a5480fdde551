"""Shapiro-Wilk coefficients (Royston 1992, algorithm AS R94), for batched W in JAX.

W = (sum_i a_i x_(i))^2 / sum_i (x_i - mean)^2 with x_(i) sorted ascending.  The a_i depend
only on n, so they are computed once per length on the host.  With
m_i = Phi^-1((i - 3/8) / (n + 1/4)) and u = 1 / sqrt(n):

    a_n     = m_n / |m| + 0.221157 u - 0.147981 u^2 - 2.071190 u^3 + 4.434685 u^4 - 2.706056 u^5
    a_(n-1) = m_(n-1) / |m| + 0.042981 u - 0.293762 u^2 - 1.752461 u^3 + 5.682633 u^4 - 3.582633 u^5
    a_i     = m_i / sqrt(phi) otherwise, phi chosen so that sum a_i^2 = 1,

a_(n+1-i) = -a_i; a_(n-1) is only corrected for n > 5; n = 3 has a = (-1, 0, 1) / sqrt(2).
This is what scipy.stats.shapiro uses; W agrees with it to ~1e-9.
"""

import functools

import numpy as np
import scipy.special

_CN = (-2.706056, 4.434685, -2.071190, -0.147981, 0.221157, 0.0)
_CN1 = (-3.582633, 5.682633, -1.752461, -0.293762, 0.042981, 0.0)


@functools.lru_cache(maxsize=4096)
def _coefficients(n: int) -> np.ndarray:
  if n < 3:
    raise ValueError(f"Shapiro-Wilk needs at least 3 points, got {n}")
  if n == 3:
    return np.array([-np.sqrt(0.5), 0.0, np.sqrt(0.5)])
  m = scipy.special.ndtri((np.arange(1, n + 1) - 0.375) / (n + 0.25))
  mm = np.sum(m * m)
  u = 1.0 / np.sqrt(n)
  a_n = m[-1] / np.sqrt(mm) + np.polyval(_CN, u)
  fixed = [a_n]
  if n > 5:
    fixed.append(m[-2] / np.sqrt(mm) + np.polyval(_CN1, u))
  k = len(fixed)
  fixed = np.array(fixed)
  phi = (mm - 2.0 * np.sum(m[n - k:] ** 2)) / (1.0 - 2.0 * np.sum(fixed ** 2))
  a = m / np.sqrt(phi)
  a[n - k:] = fixed[::-1]
  a[:k] = -fixed
  a.setflags(write=False)
  return a


def coefficients(n: int) -> np.ndarray:
  """The n Shapiro-Wilk coefficients for ascending-sorted data (read-only float64)."""
  return _coefficients(int(n))


def coefficient_rows(counts, width: int) -> np.ndarray:
  """(len(counts), width) array; row r holds coefficients(counts[r]) then zeros.

  Rows with counts < 3 are all zero.
  """
  out = np.zeros((len(counts), width))
  for n in np.unique(counts):
    if n >= 3:
      out[counts == n, :n] = coefficients(n)
  return out
