"""The description of a model bundle (its `__meta__` JSON): decoding it within limits on
its size and nesting, and `Field`, the typed access through which `astrotl.validate`
checks every value and names the field of a value that does not fit
('x.npz: networks.stage1.temperature: expected a finite number in (0, inf), got 0').

Below `validate`, `bundle` and `rules`: it imports none of them.
"""

import json
import math
import re

import numpy as np

MAX_META_BYTES = 4 << 20   # the bundled model's description is 6 kB
MAX_DEPTH = 32             # JSON nesting of the description (the bundled model's: 6)
MAX_CLASSES = 10_000
MAX_LIST = 64              # entries of a list in a network's config (layer widths, ...)
MAX_INT = 1 << 24          # any integer of a config or an input spec


class BundleError(ValueError):
  """A bundle that cannot be used; the message names the file and what is wrong."""


def column_name(name: str) -> str:
  """A class name as an identifier for column names ('WD+M' -> 'WD_M')."""
  out = re.sub(r"\W", "_", str(name))
  return out if out and not out[0].isdigit() else f"c_{out}"


def decode_meta(raw: bytes, source) -> dict:
  """The description JSON of a bundle, its size and nesting checked before decoding."""
  if len(raw) > MAX_META_BYTES:
    raise BundleError(f"{source}: the description (__meta__) is {len(raw)} bytes, more "
                      f"than {MAX_META_BYTES}")
  depth = json_depth(raw)
  if depth > MAX_DEPTH:
    raise BundleError(f"{source}: the description (__meta__) nests {depth} levels deep, "
                      f"more than {MAX_DEPTH}")
  try:
    meta = json.loads(raw.decode())
  except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge ints
    raise BundleError(f"{source}: unreadable description (__meta__: {e})") from None
  if not isinstance(meta, dict):
    raise BundleError(f"{source}: the description (__meta__) is a JSON "
                      f"{type(meta).__name__}, expected an object")
  return meta


def json_depth(raw: bytes) -> int:
  """How deep brackets nest in JSON text, strings skipped; linear, no decoding."""
  text = re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', raw)
  a = np.frombuffer(text, np.uint8)
  step = (np.isin(a, (ord("["), ord("{"))).astype(np.int32)
          - np.isin(a, (ord("]"), ord("}"))).astype(np.int32))
  return int(np.cumsum(step).max(initial=0))


class Field:
  """Where in a description a value sits, for messages: 'x.npz: networks.stage1.temperature'."""

  def __init__(self, source, path=""):
    self.source, self.path = source, path

  def __getitem__(self, key):
    return Field(self.source, f"{self.path}.{key}" if self.path else str(key))

  def fail(self, expected, value=None, got=True):
    shown = f", got {_short(value)}" if got else ""
    raise BundleError(f"{self.source}: {self.path or 'the description'}: expected "
                      f"{expected}{shown}")

  def dict(self, v, optional=False):
    if v is None and optional:
      return {}
    if not isinstance(v, dict):
      self.fail("an object", v)
    return v

  def str(self, v, choices=None):
    if not isinstance(v, str) or not v:
      self.fail("a non-empty string" if choices is None else f"one of {list(choices)}", v)
    if choices is not None and v not in choices:
      self.fail(f"one of {list(choices)}", v)
    return v

  def int(self, v, lo=0, hi=MAX_INT):
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
      self.fail(f"an integer in [{lo}, {hi}]", v)
    return v

  def number(self, v, lo=-math.inf, hi=math.inf, open_lo=False, open_hi=False,
             finite=True):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 1e300 or (
        isinstance(v, float) and not finite and math.isinf(v))
    ok = ok and (not finite or math.isfinite(v)) and (lo < v if open_lo else lo <= v) \
        and (v < hi if open_hi else v <= hi)
    if not ok:
      what = "a finite number" if finite else "a number (not NaN)"
      bounds = f" in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}" \
          if (lo, hi) != (-math.inf, math.inf) else ""
      self.fail(what + bounds, v)
    return float(v)

  def list(self, v, n_min=0, n_max=MAX_LIST):
    if not isinstance(v, list) or not n_min <= len(v) <= n_max:
      self.fail(f"a list of {n_min} to {n_max} entries", v)
    return v

  def names(self, v, n_min=1, n_max=MAX_CLASSES):
    """Non-empty, unique strings, unique also as column names ignoring case."""
    self.list(v, n_min, n_max)
    for i, name in enumerate(v):
      self[i].str(name)
    seen = {}
    for name in v:
      key = column_name(name).lower()
      if key in seen:
        twin = "twice" if seen[key] == name else f"as {seen[key]!r} (both are column {key})"
        self.fail(f"unique names, but {name!r} appears {twin}", got=False)
      seen[key] = name
    return [str(x) for x in v]


def _short(v):
  text = repr(v) if not isinstance(v, (dict, list)) else f"a {type(v).__name__} " + (
      f"of {len(v)} entries")
  return text if len(text) <= 60 else text[:57] + "..."
