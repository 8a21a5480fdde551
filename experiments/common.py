"""What several experiment scripts share."""

import numpy as np


def json_default(o):
  """json.dumps(..., default=json_default): numpy arrays and scalars as plain JSON."""
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return float(o)
  return str(o)
