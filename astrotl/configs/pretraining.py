"""Pretraining on unrelated images, then galaxies (Schneider et al. 2023, at small scale).

  python experiments/pretraining.py --workdir=/tmp/pretraining \\
    --config=astrotl/configs/pretraining.py:manual_dir=/path/to/galaxies,seeds=5

An AlexNet-style model is pretrained on scikit-learn's handwritten digits (1,797 8 x 8
images in 10 classes, shipped inside the scikit-learn wheel, so no download), then trained
on SDSS Galaxy Zoo 1 early/late; the same model is trained on GZ1 from scratch with the
same seeds.  Needs the `experiments` extra (scikit-learn).
"""

import ml_collections

from astrotl import train
from astrotl.configs import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, manual_dir="", size=32, seeds=5, pretrain_steps=400, steps=300, batch=32,
                lr=1e-3, n_train=1000, n_val=500, eval_every=20, width=0.25)
  c = train.default_config()
  c.model = "alexnet"
  w = a["width"]
  # AlexNet's widths scaled by `width`: 0.25 keeps a CPU run to minutes at 32 px.
  c.model_config.features = tuple(max(8, int(f * w)) for f in (64, 192, 384, 256, 256))
  c.model_config.dense_widths = (max(16, int(512 * w)),) * 2
  c.model_config.num_classes = 2
  c.batch_size = a["batch"]
  c.learning_rate = a["lr"]
  c.num_steps = a["steps"]
  c.eval_every = a["eval_every"]
  c.log_every = a["eval_every"]
  c.early_stopping_metric = "val_accuracy"
  c.checkpoint_every = 10_000
  c.keep_checkpoints = 1
  c.progress = False

  e = ml_collections.ConfigDict()
  e.manual_dir = a["manual_dir"]
  e.image_size = a["size"]
  e.seeds = a["seeds"]
  e.pretrain_steps = a["pretrain_steps"]
  e.n_train = a["n_train"]          # GZ1 training galaxies (drawn once, the same for every seed)
  e.n_val = a["n_val"]              # GZ1 validation galaxies, for the steps-to-target count
  # Validation accuracies that count as "reached" for the compute comparison
  # (override: --config.experiment.targets="(0.8,)").
  e.targets = (0.75, 0.8, 0.82)
  c.experiment = e
  return c
