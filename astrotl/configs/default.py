"""Generic training config for `python -m astrotl.main`.

--config=astrotl/configs/default.py:model=cnn1d,data=/path/data.npz,steps=1000

`data` is an .npz with x_train, y_train and optionally x_validation, y_validation.
Any key of `astrotl.train.default_config()` can be overridden with --config.KEY=VALUE.
"""

from astrotl import train
from astrotl.configs import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="cnn1d", data="", steps=1000, batch=64, lr=1e-3, loss="xent",
                num_classes=7)
  c = train.default_config()
  c.model = a["model"]
  c.model_config.num_classes = a["num_classes"]
  c.data = a["data"]
  c.num_steps = a["steps"]
  c.batch_size = a["batch"]
  c.learning_rate = a["lr"]
  c.loss = a["loss"]
  return c
