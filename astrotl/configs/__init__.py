"""ml_collections configs, one `get_config(arg)` file per experiment.

`arg` is the text after ':' in `--config=path.py:arg`, a comma-separated list of
key=value pairs parsed by `parse_arg`.
"""

import ast


def parse_arg(arg: str | None, **defaults) -> dict:
  """'model=cnn1d,steps=10' -> dict, values parsed as Python literals where possible.

  Only keys present in `defaults` are accepted, so a typo is an error, not a silent no-op.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config arg {item!r}: expected key=value")
    key, value = item.split("=", 1)
    if key not in defaults:
      raise ValueError(f"config arg {key!r} unknown; known: {sorted(defaults)}")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out
