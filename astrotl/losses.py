"""Losses.  Each returns per-example values; callers average them with a validity mask."""

import jax
import jax.numpy as jnp
import numpy as np


def cross_entropy(logits, labels, class_weights=None):
  """Softmax cross-entropy with integer labels, optionally weighted per class.

  One-hot labels are used internally: integer-label gathers on sharded labels fail in the
  backward pass under Explicit mesh axes (see STYLE.md).
  """
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  loss = -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
  if class_weights is not None:
    loss = loss * jnp.sum(onehot * jnp.asarray(class_weights, logits.dtype), axis=-1)
  return loss


def balanced_weights(y, num_classes) -> tuple:
  """Class weights inverse to the counts of integer labels `y` (mean 1 over the classes
  present; 0 for a class with no example), for `cross_entropy` / `config.class_weights`."""
  counts = np.bincount(np.asarray(y, int), minlength=num_classes).astype(float)
  w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
  return tuple(float(v) for v in w)


def log_cosh(pred, target):
  """log(cosh(pred - target)), computed stably: |x| + log1p(exp(-2|x|)) - log 2.

  Quadratic for small errors, linear for large ones, so a few badly wrong labels pull
  the fit less than under MSE (Wang et al. 2021).
  """
  pred = jnp.reshape(pred, jnp.shape(target)) if jnp.size(pred) == jnp.size(target) else pred
  x = jnp.abs(pred - target)
  return x + jnp.log1p(jnp.exp(-2.0 * x)) - jnp.log(2.0)


def mse(pred, target):
  pred = jnp.reshape(pred, jnp.shape(target)) if jnp.size(pred) == jnp.size(target) else pred
  return jnp.square(pred - target)


LOSSES = {"xent": cross_entropy, "logcosh": log_cosh, "mse": mse}
