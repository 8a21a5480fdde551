"""The MLP of Kim et al. (2021), UPSILoN-T, on the 16 variability features.

    block_0  {bn, dense}   BN(16, eps=first_eps) -> Dense 64  -> ReLU
    block_1  {bn, dense}   BN(64)                -> Dense 128 -> ReLU
    block_2  {bn, dense}   BN(128)               -> Dense 256 -> ReLU
    block_3  {bn}          BN(256)
    head     {dense, bn}   Dense C -> BN(C)       (logits; softmax outside)

The published UPSILoN-T weights were trained with `nn.BatchNorm1d(16, 64)`, i.e. eps = 64
on the first BatchNorm: pass `first_eps=64.0` to reproduce them.  Other BNs use 1e-5.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from astrotl.models.common import check_output


def _bn(train, eps, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=eps, name=name)


class DenseBlock(nn.Module):
  width: int
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _bn(train, self.eps, "bn")(x)
    return nn.relu(nn.Dense(self.width, name="dense")(x))


class NormBlock(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return _bn(train, 1e-5, "bn")(x)


class Head(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return _bn(train, 1e-5, "bn")(nn.Dense(self.num_classes, name="dense")(x))


class MLP(nn.Module):
  num_classes: int = 21
  widths: Sequence[int] = (64, 128, 256)
  first_eps: float = 1e-5
  dtype: str = "float32"
  frozen: Sequence[str] = ()  # top-level blocks run in inference mode (see models/__init__)

  @nn.compact
  def __call__(self, x, train: bool = False, output: str = "logits"):
    """Logits, or with output="embedding" the normalised features the head sees."""
    check_output(output, ("logits", "embedding"), "mlp")
    x = jnp.asarray(x, self.dtype)
    for i, w in enumerate(self.widths):
      x = DenseBlock(w, self.first_eps if i == 0 else 1e-5, name=f"block_{i}")(
          x, train and f"block_{i}" not in self.frozen)
    last = f"block_{len(self.widths)}"
    x = NormBlock(name=last)(x, train and last not in self.frozen)
    if output == "embedding":
      return x
    return Head(self.num_classes, name="head")(x, train and "head" not in self.frozen)
