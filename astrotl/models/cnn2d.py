"""2D CNNs for galaxy images.

`CNN2D` is the network of Dominguez Sanchez et al. (2018): input 69 x 69 x 3;
conv 32@6x6 -> ReLU -> dropout 0.5 -> max-pool 2; conv 64@5x5 -> ReLU -> dropout 0.25 ->
max-pool 2; conv 128@2x2 -> ReLU -> dropout 0.25 -> max-pool 2; conv 128@3x3 -> ReLU ->
dropout 0.25; flatten; Dense 64 -> ReLU -> dropout 0.5; head.

Parameter paths: block_0 .. block_3 {conv}, dense, head.

`AlexNet` is an AlexNet-style network (five conv layers, three max-pools, two wide dense
layers) as used by Schneider et al. (2023).  Its first conv defaults to 5x5 stride 1
rather than AlexNet's 11x11 stride 4, because survey cutouts here are 64-69 px, not 224.
Parameter paths: block_0 .. block_4 {conv, bn}, dense_0, dense_1, head.

Both take (batch, H, W, C) or (batch, H, W) float images; dropout needs the `dropout`
rng when `train=True`.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from astrotl.models.common import check_output


class ConvBlock2D(nn.Module):
  features: int
  kernel: int
  dropout: float
  pool: bool

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME", name="conv")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.pool:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x


def _as_image(x, dtype):
  x = jnp.asarray(x, dtype)
  return x[..., None] if x.ndim == 3 else x


class CNN2D(nn.Module):
  num_classes: int = 2
  features: Sequence[int] = (32, 64, 128, 128)
  kernels: Sequence[int] = (6, 5, 2, 3)
  dropouts: Sequence[float] = (0.5, 0.25, 0.25, 0.25)
  pools: Sequence[bool] = (True, True, True, False)
  dense_width: int = 64
  dense_dropout: float = 0.5
  dtype: str = "float32"
  frozen: Sequence[str] = ()  # top-level blocks run in inference mode (see models/__init__)

  @nn.compact
  def __call__(self, x, train: bool = False, output: str = "logits"):
    """Logits, or with output="embedding" the dense features the head sees."""
    check_output(output, ("logits", "embedding"), "cnn2d")
    x = _as_image(x, self.dtype)
    for i, (f, k, d, p) in enumerate(zip(self.features, self.kernels, self.dropouts, self.pools)):
      x = ConvBlock2D(f, k, d, p, name=f"block_{i}")(x, train and f"block_{i}" not in self.frozen)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.dense_width, name="dense")(x))
    x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
    if output == "embedding":
      return x
    return nn.Dense(self.num_classes, name="head")(x)


class AlexBlock(nn.Module):
  features: int
  kernel: int
  stride: int
  pool: bool

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                padding="SAME", name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))
    if self.pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    return x


class AlexNet(nn.Module):
  num_classes: int = 2
  features: Sequence[int] = (64, 192, 384, 256, 256)
  stem_kernel: int = 5
  stem_stride: int = 1
  dense_widths: Sequence[int] = (512, 512)
  dropout: float = 0.5
  dtype: str = "float32"
  frozen: Sequence[str] = ()  # top-level blocks run in inference mode (see models/__init__)

  @nn.compact
  def __call__(self, x, train: bool = False, output: str = "logits"):
    """Logits, or with output="embedding" the dense features the head sees."""
    check_output(output, ("logits", "embedding"), "alexnet")
    x = _as_image(x, self.dtype)
    kernels = (self.stem_kernel, 5, 3, 3, 3)
    strides = (self.stem_stride, 1, 1, 1, 1)
    pools = (True, True, False, False, True)
    for i, (f, k, s, p) in enumerate(zip(self.features, kernels, strides, pools)):
      x = AlexBlock(f, k, s, p, name=f"block_{i}")(x, train and f"block_{i}" not in self.frozen)
    x = x.reshape(x.shape[0], -1)
    for i, w in enumerate(self.dense_widths):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = nn.relu(nn.Dense(w, name=f"dense_{i}")(x))
    if output == "embedding":
      return x
    return nn.Dense(self.num_classes, name="head")(x)
