"""Galaxy images: crop / resize to the model input, flux scaling, augmentation.

Everything takes a batch (B, H, W) or (B, H, W, C) and is written in jax.numpy, so the
same functions run on the host (numpy in, jax array out) and inside a jit-compiled
train step.  `augmenter(...)` returns the `augment(rng, x)` callable `train.fit` takes.
"""

import jax
import jax.numpy as jnp
import numpy as np


def center_crop(x, size: int):
  """Central size x size pixels of every image."""
  h, w = x.shape[1], x.shape[2]
  if size > min(h, w):
    raise ValueError(f"center_crop: crop {size} is larger than the {h}x{w} images")
  top, left = (h - size) // 2, (w - size) // 2
  return x[:, top:top + size, left:left + size]


def resize(x, size: int, method: str = "linear"):
  """Every image resized to size x size (antialiased when shrinking), float32."""
  x = jnp.asarray(x, jnp.float32)
  shape = (x.shape[0], size, size) + tuple(x.shape[3:])
  return jax.image.resize(x, shape, method=method, antialias=True)


def scale_uint8(x):
  """uint8 counts 0..255 -> float32 0..1."""
  return jnp.asarray(x, jnp.float32) / 255.0


def arcsinh_scale(x, softening: float = 0.1):
  """Per-image arcsinh stretch to [0, 1], for radio maps with a bright core and faint lobes.

  Each image is divided by its own maximum first, so the stretch does not depend on the
  survey's flux units: y = arcsinh(x / max / s) / arcsinh(1 / s).
  """
  x = jnp.asarray(x, jnp.float32)
  x = jnp.maximum(x, 0.0)
  peak = jnp.max(x, axis=tuple(range(1, x.ndim)), keepdims=True)
  x = x / jnp.where(peak > 0, peak, 1.0)
  return jnp.arcsinh(x / softening) / jnp.arcsinh(1.0 / softening)


def to_model_input(x, size: int, crop: int | None = None, scaling: str = "uint8"):
  """Crop (optional), resize to `size` and scale: the host-side path to a model input.

  scaling: 'uint8' (x / 255), 'arcsinh' (radio) or 'none'.  Returns float32 numpy with a
  channel axis.
  """
  if crop:
    x = center_crop(x, crop)
  if scaling == "arcsinh":
    x = arcsinh_scale(x)
  elif scaling == "uint8":
    x = scale_uint8(x)
  elif scaling != "none":
    raise ValueError(f"scaling={scaling!r}: use 'uint8', 'arcsinh' or 'none'")
  x = resize(x, size) if x.shape[1] != size or x.shape[2] != size else jnp.asarray(x, jnp.float32)
  x = np.asarray(x, np.float32)
  return x[..., None] if x.ndim == 3 else x


def _dihedral(image, k, flip):
  # lax.switch on a traced k; under vmap it becomes a select over the four rotations.
  image = jax.lax.switch(k, [lambda im, r=r: jnp.rot90(im, r, axes=(0, 1)) for r in range(4)],
                         image)
  return jnp.where(flip, image[:, ::-1], image)


def augment(rng, x, flips: bool = True, rot90: bool = True):
  """Random horizontal flip and 90-degree rotation per image (square images).

  Galaxy morphology does not depend on orientation on the sky, so these 8 symmetries
  make free extra training examples without changing a single pixel value.
  """
  if x.shape[1] != x.shape[2] and rot90:
    raise ValueError(f"augment: rot90 needs square images, got {x.shape[1]}x{x.shape[2]}")
  n = x.shape[0]
  k_rot, k_flip = jax.random.split(rng)
  k = jax.random.randint(k_rot, (n,), 0, 4) if rot90 else jnp.zeros((n,), jnp.int32)
  flip = jax.random.bernoulli(k_flip, 0.5, (n,)) if flips else jnp.zeros((n,), bool)
  return jax.vmap(_dihedral)(x, k, flip)


def augmenter(flips: bool = True, rot90: bool = True):
  """`augment(rng, x)` with the options bound, or None when both are off."""
  if not (flips or rot90):
    return None
  return lambda rng, x: augment(rng, x, flips=flips, rot90=rot90)
