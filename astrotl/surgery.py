"""Transfer learning as pure functions on parameter pytrees.

Every leaf has a path name: its dict keys joined by "/" (`block_3/conv/kernel`).
Patterns are regular expressions matched against the whole name (re.fullmatch), and
in rule lists the first matching rule wins.  All functions take nested dicts of arrays
(Flax params, restored checkpoints, imported numpy weights) and never mutate them.

Typical recipe (big_vision / Zoobot style)::

    params = merge(pretrained, fresh, skip=("head/.*",))   # graft everything but the head
    params = zeros(params, "head/.*")                      # a new head starts at zero
    tx = freeze(optax.adam(1e-3), params, "block_[0-4]/.*")
"""

import re
from typing import TYPE_CHECKING, Iterable, Sequence

import jax
import numpy as np

if TYPE_CHECKING:  # optax loads in the functions that build optimizers: loading a bundle
  import optax     # (the scan, predict) needs only the tree functions


class SurgeryError(ValueError):
  """Raised with every offending path listed, so one run shows all problems."""


def _key_name(k):
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_name(path) -> str:
  return "/".join(_key_name(k) for k in path)


def flatten(tree) -> dict:
  """{path name: leaf}, in tree order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_name(p): v for p, v in leaves}


def unflatten(flat: dict) -> dict:
  """Inverse of `flatten` for nested dicts."""
  out = {}
  for name, value in flat.items():
    node = out
    *parents, last = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return out


def names(tree) -> list[str]:
  """Path names of every leaf, in tree order."""
  return list(flatten(tree))


def _compile(patterns) -> list[re.Pattern]:
  if isinstance(patterns, str):
    patterns = (patterns,)
  return [re.compile(p) for p in patterns]


def _matches(name, compiled) -> bool:
  return any(c.fullmatch(name) for c in compiled)


def mask(tree, pattern) -> dict:
  """Pytree of bools, True where the leaf's path fully matches `pattern` (str or list)."""
  compiled = _compile(pattern or ())
  return jax.tree_util.tree_map_with_path(lambda p, _: _matches(path_name(p), compiled), tree)


def merge(pretrained, fresh, skip: Iterable[str] = ()) -> dict:
  """Fresh's structure with pretrained's values.

  Leaves whose path matches a `skip` pattern keep the fresh value.  Every other leaf
  must exist in `pretrained` with the same shape, and `pretrained` must hold nothing
  that `fresh` lacks; otherwise one SurgeryError lists every missing, unexpected and
  shape-mismatched path.
  """
  compiled = _compile(skip)
  src, dst = flatten(pretrained), flatten(fresh)
  missing, mismatched, out = [], [], {}
  for name, value in dst.items():
    if _matches(name, compiled):
      out[name] = value
    elif name not in src:
      missing.append(name)
    elif np.shape(src[name]) != np.shape(value):
      mismatched.append(f"{name}: pretrained {np.shape(src[name])} vs model {np.shape(value)}")
    else:
      out[name] = jax.numpy.asarray(src[name], dtype=jax.numpy.result_type(value))
  unexpected = [n for n in src if n not in dst and not _matches(n, compiled)]
  if missing or unexpected or mismatched:
    lines = []
    for title, items in (("missing from pretrained", missing), ("unexpected in pretrained", unexpected),
                         ("shape mismatch", mismatched)):
      if items:
        lines.append(f"{title} ({len(items)}):\n  " + "\n  ".join(items))
    raise SurgeryError("cannot merge pretrained parameters; add the paths to skip= if they are "
                       "meant to be re-initialised.\n" + "\n".join(lines))
  return unflatten(out)


def reinit(params, fresh, pattern) -> dict:
  """`params` with the leaves matching `pattern` taken from `fresh` (same structure)."""
  m = mask(params, pattern)
  return jax.tree.map(lambda keep_fresh, p, f: f if keep_fresh else p, m, params, fresh)


def zeros(params, pattern) -> dict:
  """`params` with the leaves matching `pattern` set to zero (a new head starts at zero)."""
  m = mask(params, pattern)
  return jax.tree.map(lambda z, p: jax.numpy.zeros_like(p) if z else p, m, params)


def freeze(tx: "optax.GradientTransformation", params, pattern) -> "optax.GradientTransformation":
  """`tx` on trainable leaves, zero updates and no optimizer state on frozen ones.

  Frozen = path matches `pattern`.  Freezing BatchNorm statistics is the train step's
  job (`astrotl.train` keeps batch_stats under the same pattern).
  """
  import optax
  frozen = mask(params, pattern)
  labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
  if not any(l == "train" for l in jax.tree.leaves(labels)):
    raise SurgeryError(f"freeze pattern {pattern!r} freezes every parameter; nothing would train")
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def lr_multipliers(params, rules: Sequence[tuple[str, float]]) -> "optax.GradientTransformation":
  """Scales updates by the multiplier of the first rule whose pattern matches each path.

  Chain it after the optimizer (`optax.chain(adam, lr_multipliers(...))`).  Every leaf
  must be covered by a rule (end with `(".*", 1.0)` for a default).
  """
  compiled = [(re.compile(p), float(m)) for p, m in rules]
  labels, uncovered = {}, []
  for name in names(params):
    for c, m in compiled:
      if c.fullmatch(name):
        labels[name] = str(m)
        break
    else:
      uncovered.append(name)
  if uncovered:
    raise SurgeryError(f"lr_multipliers: {len(uncovered)} parameter(s) match no rule "
                       "(add ('.*', 1.0) as a default):\n  " + "\n  ".join(uncovered))
  import optax
  label_tree = unflatten(labels)
  transforms = {m: optax.scale(float(m)) for m in set(labels.values())}
  return optax.multi_transform(transforms, label_tree)


def block_order(params) -> list[str]:
  """Top-level module names from input to output: stem, block_0.., other layers, head last."""
  def key(name):
    m = re.fullmatch(r"block_(\d+)", name)
    if name == "stem":
      return (0, 0, name)
    if m:
      return (1, int(m.group(1)), name)
    if name == "head":
      return (3, 0, name)
    return (2, 0, name)
  return sorted(params, key=key)


def zoobot_rules(params, n_blocks=None, lr_decay=None):
  """Zoobot's fine-tuning knobs as a freeze pattern and lr rules.

  n_blocks: how many top modules below the head to train (None = all, 0 = head only);
    the rest are frozen.
  lr_decay: multiplier per module counted down from the head (head 1, the module below
    it lr_decay, the next lr_decay**2, ...).
  Returns (freeze_pattern or None, lr_rules or None).
  """
  order = [n for n in block_order(params) if n != "head"]
  freeze_pattern = None
  if n_blocks is not None:
    if n_blocks < 0:
      raise SurgeryError(f"n_blocks must be >= 0, got {n_blocks}")
    frozen = order[:max(len(order) - n_blocks, 0)]
    if frozen:
      freeze_pattern = "(" + "|".join(re.escape(n) for n in frozen) + ")/.*"
  rules = None
  if lr_decay is not None:
    rules = [("head/.*", 1.0)]
    for depth, name in enumerate(reversed(order), start=1):
      rules.append((re.escape(name) + "/.*", float(lr_decay) ** depth))
  return freeze_pattern, rules
