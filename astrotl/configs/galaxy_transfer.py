"""Galaxy morphology across surveys (Dominguez Sanchez et al. 2018/2019, Tang et al. 2019).

  python experiments/galaxy_transfer.py --workdir=/tmp/gt \\
    --config=astrotl/configs/galaxy_transfer.py:manual_dir=/path/to/galaxies,seeds=3

Two source -> target pairs: FIRST -> NVSS (FRI vs FRII) and SDSS GZ1 early/late -> DECaLS
rings.  For every target size N the source model is fine-tuned on N target labels and a
model of the same architecture is trained from scratch on the same N.  Zoobot's knobs
are `n_blocks` / `lr_decay` (None = train every block at the full rate).
Tuples are overridden with flags: --config.experiment.pairs="('radio',)"
--config.experiment.n_target="(0,10,100)".
"""

import ml_collections

from astrotl import train
from astrotl.configs import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, manual_dir="", size=32, seeds=3, source_steps=300, target_steps=150, batch=32,
                lr=1e-3, finetune_lr=5e-4, n_blocks=None, lr_decay=None, pca=20,
                extra_test=200)
  c = train.default_config()
  c.model = "cnn2d"
  c.model_config.num_classes = 2
  c.batch_size = a["batch"]
  c.learning_rate = a["lr"]
  c.num_steps = a["source_steps"]
  c.log_every = 25
  c.checkpoint_every = 10_000
  c.keep_checkpoints = 1
  c.progress = False
  c.transfer.n_blocks = a["n_blocks"]
  c.transfer.lr_decay = a["lr_decay"]

  e = ml_collections.ConfigDict()
  e.manual_dir = a["manual_dir"]     # the galaxies folder (see its PROVENANCE.md)
  e.image_size = a["size"]
  e.seeds = a["seeds"]
  e.n_target = (0, 10, 25, 50, 100, 300)
  e.pairs = ("radio", "optical")
  e.target_steps = a["target_steps"]
  e.finetune_lr = a["finetune_lr"]
  e.pca_components = a["pca"]
  # Extra target test examples held out of the fine-tuning pool (NVSS's own test split has
  # 50), fewer where the pool would drop below max(n_target).
  e.extra_test = a["extra_test"]
  c.experiment = e
  return c
