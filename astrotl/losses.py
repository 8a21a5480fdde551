"""Losses.  Each returns per-example values; callers average them with a validity mask."""

import jax
import jax.numpy as jnp


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
