"""Generic training config for `python -m astrotl.main`.

--config=default:model=cnn1d,data=/path/data.npz,steps=1000

`data` is an .npz with x_train, y_train and optionally x_validation, y_validation.
Any key of `astrotl.train.default_config()` can be overridden with --config.KEY=VALUE,
and every field of the chosen model with --config.model_config.FIELD=VALUE (e.g.
--config.model_config.dense_width=256).  `init_from` may name an orbax workdir, a model
bundle (x.npz, x.npz:network) or a bundled model (wd_stage1).
"""

import ml_collections

from astrotl import models, train
from astrotl.configs import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, model="cnn1d", data="", steps=1000, batch=64, lr=1e-3, loss="xent",
                num_classes=7)
  c = train.default_config()
  c.model = a["model"]
  # All the model's fields, so each can be overridden from the command line.
  c.model_config = ml_collections.ConfigDict(models.defaults(a["model"],
                                                             num_classes=a["num_classes"]))
  c.data = a["data"]
  c.num_steps = a["steps"]
  c.batch_size = a["batch"]
  c.learning_rate = a["lr"]
  c.loss = a["loss"]
  return c
