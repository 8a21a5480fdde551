"""Shared by the galaxy experiments: build a galaxy_morphology config and load it as arrays."""

import numpy as np
import tensorflow_datasets as tfds

from astrotl import datasets
from astrotl.datasets.galaxy_morphology import Builder
from astrotl.preprocess import images as prep

# Radio maps are peaked: an arcsinh stretch shows the faint lobes FRI/FRII depend on.
SCALING = {"first": "arcsinh", "nvss": "arcsinh", "mirabest": "arcsinh"}


def load(config: str, manual_dir: str, data_dir, size: int) -> dict:
  """{split: {'x': float32 (N, size, size, C), 'y': int32, 'id': str}} for a built config."""
  if not manual_dir:
    raise ValueError("config.experiment.manual_dir is empty: pass manual_dir=/path/to/galaxies "
                     "(the folder with PROVENANCE.md) in --config")
  builder = Builder(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  out = {}
  for split in builder.info.splits:
    d = datasets.as_numpy(f"galaxy_morphology/{config}", split, data_dir=str(data_dir),
                          features=("image", "label", "id"))
    out[split] = {"x": prep.to_model_input(d["image"], size, scaling=SCALING.get(config, "uint8")),
                  "y": d["label"].astype(np.int32), "id": d["id"]}
  return out


def enable_compile_cache(directory) -> None:
  """Every fit() call jits an identical step; a disk cache turns recompiles into loads."""
  import jax
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pca_logistic(train_x, train_y, test_x, components: int, seed: int = 0):
  """Predictions of the PCA + logistic-regression baseline (flattened pixels)."""
  from sklearn.decomposition import PCA
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  flat = lambda x: x.reshape(len(x), -1)
  k = max(1, min(components, len(train_x) - 1, flat(train_x).shape[1]))
  model = make_pipeline(StandardScaler(), PCA(k, random_state=seed),
                        LogisticRegression(max_iter=2000))
  model.fit(flat(train_x), train_y)
  return model.predict(flat(test_x))


def scores(y_true, y_pred, num_classes: int) -> dict:
  from astrotl import metrics
  pc = metrics.per_class(y_true, y_pred, num_classes)
  return {"accuracy": metrics.accuracy(y_true, y_pred),
          "completeness": [float(v) for v in pc["completeness"]],
          "purity": [float(v) for v in pc["purity"]],
          "n": int(len(y_true))}
