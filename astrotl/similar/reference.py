"""The anomaly reference a model bundle carries: its training set in embedding space.

A bundle with a reference holds, besides its networks, a tree `reference` with one array,
`embedding` (R, D): unit-length embeddings of (a random subset of) the spectra the model
was trained on, stored as float16 like the weights; and in its description::

  "reference": {"network": "stage1", "n": R, "k": 10, "scale": 0.21, "metric": "cosine",
                "training_data": "..."}

The scan's anomaly score of a spectrum (`metric.knn_score`, on the device) is its mean
distance to its k nearest reference rows divided by `scale`, the median of that same
distance for the reference rows themselves (each left out of its own neighbours).  So
about 1 means "as close to the training set as a training spectrum is", and the spectra
least like anything the model was trained on have the largest scores.
"""

import numpy as np

from astrotl.similar import metric

SIZE = 8192  # reference rows kept: the device computes (batch, SIZE) distances per step
K = 10


def add_reference(model, spectra=None, embeddings=None, size: int = SIZE, k: int = K,
                  seed: int = 0, training_data=None):
  """A copy of `model` that carries an anomaly reference; save it with `.save(path)`.

  spectra: the model's training spectra, in any form `model.embed` takes (files, Spectrum
    objects, (wavelength, flux, ivar[, mask]) tuples, flux arrays on the common grid);
  embeddings: or their embeddings, (n, D), already computed with `model.embed`.
  size: at most this many rows are kept (a random subset, `seed`); k: neighbours averaged.
  """
  from astrotl import bundle
  if (spectra is None) == (embeddings is None):
    raise ValueError("add_reference: give spectra or embeddings (not both)")
  emb = model.embed(spectra) if embeddings is None else np.asarray(embeddings, np.float32)
  width = model.primary.embedding_width
  if emb.ndim != 2 or emb.shape[1] != width:
    raise ValueError(f"add_reference: embeddings must be (n, {width}), got {emb.shape}")
  if len(emb) < k + 1:
    raise ValueError(f"add_reference: need more than k={k} spectra, got {len(emb)}")
  rng = np.random.default_rng(seed)
  if len(emb) > size:
    emb = emb[np.sort(rng.choice(len(emb), size, replace=False))]
  ref = metric.unit(emb).astype(np.float16).astype(np.float32)  # as the bundle stores it
  meta = {"network": model.primary.name, "n": int(len(ref)), "k": int(k),
          "scale": leave_one_out_scale(ref, k), "metric": "cosine",
          "training_data": training_data or (model.meta.get("about") or {}).get("training_data")}
  trees = {name: net.variables for name, net in model.networks.items()}
  trees["reference"] = {"embedding": ref}
  return bundle.Model(trees, dict(model.meta, reference=meta), source=model.source)


def leave_one_out_scale(ref, k, block=1024) -> float:
  """Median over reference rows of their mean distance to their k nearest other rows."""
  out = []
  for s in range(0, len(ref), block):
    d2 = metric.sq_distances(ref[s:s + block], ref)
    d2[np.arange(len(d2)), s + np.arange(len(d2))] = np.inf
    out.append(np.sqrt(np.partition(d2, k - 1, axis=1)[:, :k]).mean(axis=1))
  return float(max(np.median(np.concatenate(out)), 1e-6))
