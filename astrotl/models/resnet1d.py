"""The deep 1D ResNet of Wang et al. (2021) for MK spectral-subtype regression.

Default config: a stem conv + 12 residual blocks of two convs each = 25 conv layers,
one max-pool (in the stem), global average pooling and a dense head.  Width 1 head =
regression (e.g. subtype number with a Log-Cosh loss); width C = classification.

Parameter paths::

    stem       {conv, bn}                     conv(k, widths[0]) -> BN -> ReLU -> max-pool(3, 2)
    block_0 .. block_11
               {conv_0, bn_0, conv_1, bn_1}   (+ proj, proj_bn where the width or stride changes)
    head       Dense(num_outputs)

Stages of three blocks double the width and halve the length (stride 2 in the first
conv of a stage).  The last block's output is the feature map for Grad-CAM (see
`astrotl.explain`): it is sown as `intermediates/features` (its values) and passed through
`self.perturb("features", ...)` (its gradient).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from astrotl.models.common import check_output


def _bn(train, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class ResBlock1D(nn.Module):
  features: int
  kernel: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.Conv(self.features, (self.kernel,), strides=(self.stride,), padding="SAME",
                use_bias=False, name="conv_0")(x)
    y = nn.relu(_bn(train, "bn_0")(y))
    y = nn.Conv(self.features, (self.kernel,), padding="SAME", use_bias=False, name="conv_1")(y)
    y = _bn(train, "bn_1")(y)
    if x.shape[-1] != self.features or self.stride != 1:
      x = nn.Conv(self.features, (1,), strides=(self.stride,), use_bias=False, name="proj")(x)
      x = _bn(train, "proj_bn")(x)
    return nn.relu(x + y)


class Stem1D(nn.Module):
  features: int
  kernel: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, (self.kernel,), padding="SAME", use_bias=False, name="conv")(x)
    x = nn.relu(_bn(train, "bn")(x))
    return nn.max_pool(x, (3,), strides=(2,), padding="SAME")


class ResNet1D(nn.Module):
  """Wang et al. 2021 1D ResNet.  Input (batch, length) or (batch, length, 1)."""

  num_classes: int = 1
  kernel_size: int = 3
  widths: Sequence[int] = (16, 32, 64, 128)
  blocks_per_stage: int = 3
  dtype: str = "float32"
  frozen: Sequence[str] = ()  # top-level blocks run in inference mode (see models/__init__)

  @nn.compact
  def __call__(self, x, train: bool = False, output: str = "logits"):
    """Logits, or with output="embedding" the pooled features the head sees."""
    check_output(output, ("logits", "embedding"), "resnet1d")
    if self.kernel_size < 1:
      raise ValueError(f"resnet1d: kernel_size must be >= 1, got {self.kernel_size}")
    x = jnp.asarray(x, self.dtype)
    if x.ndim == 2:
      x = x[..., None]
    x = Stem1D(self.widths[0], self.kernel_size, name="stem")(x, train and "stem" not in self.frozen)
    i = 0
    for stage, width in enumerate(self.widths):
      for j in range(self.blocks_per_stage):
        stride = 2 if (stage > 0 and j == 0) else 1
        x = ResBlock1D(width, self.kernel_size, stride, name=f"block_{i}")(
            x, train and f"block_{i}" not in self.frozen)
        i += 1
    self.sow("intermediates", "features", x)
    x = self.perturb("features", x)
    x = jnp.mean(x, axis=1)
    if output == "embedding":
      return x
    return nn.Dense(self.num_classes, name="head")(x)
