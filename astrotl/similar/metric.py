"""The one distance between spectra: Euclidean distance between unit-length embeddings.

For unit vectors it is sqrt(2 - 2 cos θ), θ the angle between two spectra's
penultimate-layer features, so it lies in [0, 2].  On real LAMOST stars it finds the same
spectral letter more often than the distance between raw embeddings does
(experiments/README.md, "More like these").  The search, its index and the anomaly score
all use it, so their distances can be compared.
"""

import numpy as np


def unit(x, xp=np):
  """Rows of `x` scaled to length 1 (float32); an all-zero row stays zero."""
  x = xp.asarray(x, xp.float32)
  return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sq_distances(q, r, xp=np):
  """(len(q), len(r)) squared distances between unit rows."""
  return xp.maximum(2.0 - 2.0 * (q @ r.T), 0.0)


def knn_score(embedding, reference, k: int, scale: float = 1.0, xp=np):
  """Mean distance of each embedding to its k nearest `reference` rows (unit vectors), in
  units of `scale`; runs on the device inside the scan's function with xp=jax.numpy."""
  d2 = sq_distances(unit(embedding, xp), reference, xp)
  k = min(int(k), d2.shape[1])
  if xp is np:
    near = np.partition(d2, k - 1, axis=1)[:, :k]
  else:
    import jax
    near = -jax.lax.top_k(-d2, k)[0]
  return xp.sqrt(near).mean(axis=-1) / scale
