import io
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from astrotl import models, parallel, train
from astrotl.io import images as io_images
from astrotl.preprocess import images as prep

TINY_CNN = dict(features=(4, 8, 8, 8), dense_width=16)


# --- train.fit augmentation hook ---------------------------------------------------------

def _one_step_loss(augment, x, y, devices):
  model = models.get("cnn2d", **TINY_CNN)
  mesh = parallel.make_mesh(devices)
  v = train.init_variables(model, x[:1], seed=0)
  tx = optax.sgd(0.1)
  state = train.TrainState(jnp.zeros((), jnp.int32), v["params"], {}, tx.init(v["params"]),
                           jax.random.PRNGKey(3))
  step = train.make_train_step(model, tx, mesh, augment=augment)
  batch = parallel.shard_batch({"x": x, "y": y, "valid": np.ones(len(x), bool)}, mesh, len(x))
  _, m = step(parallel.replicate(state, mesh), batch)
  return float(m["loss"])


def test_train_step_applies_augment_to_the_batch():
  rng = np.random.default_rng(0)
  x = rng.random((8, 16, 16, 3)).astype(np.float32)
  y = rng.integers(0, 2, 8)
  dev = jax.devices()[:1]
  # if the hook were ignored, the first loss would be the loss on x, not on flipped x
  flipped = _one_step_loss(lambda r, b: b[:, ::-1], x, y, dev)
  assert flipped == pytest.approx(_one_step_loss(None, x[:, ::-1].copy(), y, dev), rel=1e-6)
  assert not np.allclose(x, x[:, ::-1])
