"""Train any registry model on arrays: `python -m astrotl.main --config=... --workdir=...`.

--config names a packaged config (`default`, `default:steps=10`) or a config file; every
key, the model's fields included, can be overridden (`--config.model_config.dense_width=256`,
`--config.transfer.init_from=wd_stage1`).  Re-running the same command resumes from the
newest checkpoint in --workdir.  With --distributed each process joins jax.distributed
first (SLURM / Cloud TPU auto-detected; on a plain host see launch/local.sh) and feeds
its own rows of every batch.
"""

import pathlib

from absl import flags, logging
from ml_collections import config_flags
import numpy as np

from astrotl import configs, parallel

_CONFIG = config_flags.DEFINE_config_file("config", None, "A packaged config by name "
                                          "(default[:arg]) or a config file (path.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and metrics go here.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")


def load_npz(path) -> dict:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config.data={str(path)!r}: no such .npz file")
  with np.load(path, allow_pickle=False) as z:
    missing = [k for k in ("x_train", "y_train") if k not in z]
    if missing:
      raise KeyError(f"{path}: missing arrays {missing}; need x_train, y_train "
                     "(and optionally x_validation, y_validation)")
    data = {"train": {"x": z["x_train"], "y": z["y_train"]}}
    if "x_validation" in z:
      data["validation"] = {"x": z["x_validation"], "y": z["y_validation"]}
  return data


def main(argv):
  del argv
  parallel.initialize(_DISTRIBUTED.value)
  from astrotl import train  # after distributed start-up, which must precede device use
  config = _CONFIG.value
  data = load_npz(config.data)
  train_config = {k: v for k, v in config.to_dict().items() if k != "data"}
  result = train.fit(train_config, _WORKDIR.value, data)
  logging.info("finished at step %d; best %s", int(result.state.step), result.best)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  configs.run(main)
