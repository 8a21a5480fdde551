"""MK subtype regression with the Wang et al. (2021) 1D ResNet on real LAMOST stars.

  python experiments/spectral_subtype.py --config=astrotl/configs/spectral_subtype.py \
      --workdir=workdir/spectral_subtype
  ...spectral_subtype.py:quick=True   # a minutes-long smoke run

`experiments/spectral_subtype.py` reads every field below; `train` is the base
`astrotl.train` config of every run (model, loss and data vary per study).
"""

import ml_collections

from astrotl import train
from astrotl.configs import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, quick=False, steps=150, seeds=1, transfer_seeds=2, bin=2)
  c = ml_collections.ConfigDict()
  c.data_dir = ""            # shared data root holding spectra/index.csv; "" = search
  c.split = (0.7, 0.1, 0.2)  # train / validation / test, by star (repeat visits stay together)
  c.label_offset = 40.0      # G0: labels are centred, not scaled, so 1 unit = 1 subtype
  c.clip = (-0.5, 3.0)       # continuum-normalised flux range; cosmic rays / sky residuals
  # Mean of `bin` grid pixels: 2 halves the cost on CPU and still samples LAMOST's
  # resolution element (~3 A at R ~ 1800) at ~2.5 A.
  c.bin = a["bin"]
  c.kernels = (3, 5, 7, 9)
  c.kernel = 3               # kernel of the loss, transfer and CAM studies
  c.noise_fraction = 0.05    # training labels shifted by +-noise_shift subtypes
  c.noise_shift = (5, 10)
  c.transfer_sizes = (30, 0)  # pilot training stars; 0 = all of the training split
  c.seeds = tuple(range(a["seeds"]))                    # kernel and loss studies
  c.transfer_seeds = tuple(range(a["transfer_seeds"]))  # pretraining and fine-tuning
  c.knn_k = 5
  c.cam_examples = ("A", "F", "G", "K")

  t = train.default_config()
  t.model = "resnet1d"
  # 25 conv layers as in Wang et al.; half their widths keeps a 2-core CPU run in minutes.
  t.model_config = ml_collections.ConfigDict(dict(widths=(8, 16, 32, 64), blocks_per_stage=3,
                                                  num_classes=1))
  t.loss = "logcosh"
  t.learning_rate = 3e-3
  t.schedule = "cosine"
  t.warmup_steps = 20
  t.batch_size = 32
  t.num_steps = a["steps"]
  t.eval_every = 25
  t.log_every = 25
  t.checkpoint_every = 10_000
  t.keep_checkpoints = 1
  t.early_stopping_metric = "val_mae"
  t.progress = False
  t.transfer.skip = ()     # same task on both eras: the head is kept
  t.transfer.zero_init = ""
  c.train = t

  if a["quick"]:
    c.kernels = (3, 9)
    c.seeds = (0,)
    c.transfer_seeds = (0,)
    c.train.num_steps = 40
  return c
