"""The 1D CNN of Tan et al. (2023) for LAMOST white-dwarf search.

Parameter paths (default config)::

    block_0 .. block_7   each {conv/kernel, conv/bias, bn/scale, bn/bias} (+ batch_stats bn/mean, bn/var)
    dense                flatten -> LeakyReLU -> Dense(1024)
    head                 Dense(num_classes), logits (no softmax)

Each block is conv(1 x k, VALID) -> BatchNorm -> LeakyReLU(0.01) -> max-pool(2) with
strides alternating 1, 2.  An input of 3700 pixels leaves 219 x 60 features.

Layout note for imported PyTorch weights: Tan et al. flatten channel-major (c * 219 + w);
Flax flattens position-major (w * 60 + c).  `astrotl.io.weights` permutes the rows of
`dense/kernel` accordingly.

The last convolutional feature map is sown as `intermediates/features` and passed
through `self.perturb("features", ...)`, so that `astrotl.explain` can read its values and
take gradients with respect to it (Grad-CAM); both are no-ops unless the `intermediates`
collection is mutable or a `perturbations` collection is supplied.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from astrotl.models.common import check_output


def max_pool2(x, stride: int):
  """Max-pool of window 2 along axis 1 (VALID), stride 1 or 2.

  Same values as nn.max_pool, written as elementwise maxima: XLA's CPU gradient of
  reduce_window (select_and_scatter) made the whole train step ~20% slower.
  """
  if stride == 1:
    return jnp.maximum(x[:, :-1], x[:, 1:])
  if stride == 2:
    n = (x.shape[1] - 2) // 2 + 1
    return x[:, :2 * n].reshape(x.shape[0], n, 2, x.shape[2]).max(axis=2)
  return nn.max_pool(x, (2,), strides=(stride,), padding="VALID")


class ConvBlock1D(nn.Module):
  features: int
  kernel: int
  pool_stride: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, (self.kernel,), padding="VALID", name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
    x = nn.leaky_relu(x, 0.01)
    return max_pool2(x, self.pool_stride)


class CNN1D(nn.Module):
  """Tan et al. 2023 1D CNN.  Input (batch, length) or (batch, length, 1)."""

  num_classes: int = 7
  channels: Sequence[int] = (10, 10, 20, 30, 40, 50, 60, 60)
  kernels: Sequence[int] = (1, 2, 3, 4, 5, 7, 8, 9)
  pool_strides: Sequence[int] = (1, 2, 1, 2, 1, 2, 1, 2)
  dense_width: int = 1024
  dtype: str = "float32"
  frozen: Sequence[str] = ()  # top-level blocks run in inference mode (see models/__init__)

  @nn.compact
  def __call__(self, x, train: bool = False, output: str = "logits", from_features: bool = False):
    """Logits of `x` (batch, length).

    output: "logits", "embedding" (the dense layer's output, what the head sees) or
      "features" (the last convolutional map, (batch, 219, 60) for 3700 pixels).
    from_features: `x` is such a feature map; the conv blocks are skipped.  Two networks
      that share their conv blocks (a frozen trunk) run them once this way.
    """
    if not (len(self.channels) == len(self.kernels) == len(self.pool_strides)):
      raise ValueError("cnn1d: channels, kernels and pool_strides must have the same length, got "
                       f"{len(self.channels)}, {len(self.kernels)}, {len(self.pool_strides)}")
    check_output(output, ("logits", "embedding", "features"), "cnn1d")
    x = jnp.asarray(x, self.dtype)
    if not from_features:
      if x.ndim == 2:
        x = x[..., None]
      for i, (c, k, s) in enumerate(zip(self.channels, self.kernels, self.pool_strides)):
        x = ConvBlock1D(c, k, s, name=f"block_{i}")(x, train and f"block_{i}" not in self.frozen)
    if output == "features":
      return x
    self.sow("intermediates", "features", x)
    x = self.perturb("features", x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.dense_width, name="dense")(nn.leaky_relu(x, 0.01))
    if output == "embedding":
      return x
    return nn.Dense(self.num_classes, name="head")(x)
