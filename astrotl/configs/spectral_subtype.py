"""MK subtype and stellar-parameter regression with the Wang et al. (2021) 1D ResNet on
real LAMOST stars (the index.csv stars and the LAMOST DR10 A/F/G stars).

  python experiments/spectral_subtype.py --config=astrotl/configs/spectral_subtype.py \
      --workdir=workdir/spectral_subtype
  ...spectral_subtype.py:quick=True   # a minutes-long smoke run
  ...spectral_subtype.py:width=16     # Wang et al.'s widths (4x the compute; for a GPU)

`experiments/spectral_subtype.py` reads every field below; `train` is the base
`astrotl.train` config of every run (model, loss and data vary per study).
"""

import ml_collections

from astrotl import train
from astrotl.configs import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, quick=False, steps=1000, transfer_steps=400, seeds=1, transfer_seeds=3,
                bin=2, width=8)
  c = ml_collections.ConfigDict()
  c.data_dir = ""            # shared data root holding spectra/index.csv; "" = search
  c.split = (0.7, 0.1, 0.2)  # train / validation / test, by star (repeat visits stay together)
  c.label_offset = 40.0      # G0: labels are centred, not scaled, so 1 unit = 1 subtype
  c.clip = (-0.5, 3.0)       # continuum-normalised flux range; cosmic rays / sky residuals
  # Mean of `bin` grid pixels: 2 halves the cost on CPU and still samples LAMOST's
  # resolution element (~3 A at R ~ 1800) at ~2.5 A.
  c.bin = a["bin"]
  c.kernels = (3, 5, 7, 9)
  c.kernel = 3               # kernel of the loss, params, transfer and CAM studies
  c.augment_ablation = True  # also train c.kernel without augmentation
  c.noise_fraction = 0.05    # training labels shifted by +-noise_shift subtypes
  c.noise_shift = (5, 10)
  c.transfer_eras = ("pilot", "dr8")  # fine-tuning targets: index.csv eras (not DR10)
  c.transfer_sizes = (30, 100, 0)     # their training stars; 0 = all of the training split
  c.transfer_steps = a["transfer_steps"]  # fine-tuning and its from-scratch baseline
  c.seeds = tuple(range(a["seeds"]))                    # kernel, loss and params studies
  c.transfer_seeds = tuple(range(a["transfer_seeds"]))  # pretraining and fine-tuning
  c.knn_k = 5
  c.cam_examples = ("A", "F", "G", "K")

  # Every ResNet run trains on spectra drawn afresh per batch (subtype_data.Augmented):
  # a radial velocity within +-rv km/s (LAMOST's own velocity errors are ~5-10 km/s, the
  # stars' velocities tens), and a noise_fraction of them degraded to S/N in [snr_min, own].
  c.augment = ml_collections.ConfigDict(dict(enabled=True, rv=30.0, snr_min=10.0,
                                             noise_fraction=0.5))
  c.params_loss = "logcosh"  # on standardised labels: linear beyond ~1 sigma

  t = train.default_config()
  t.model = "resnet1d"
  # 25 conv layers as in Wang et al.  Widths (w, 2w, 4w, 8w): w = 8, half of theirs, keeps
  # the full study to hours on a 2-core CPU; width=16 is theirs, 4x the compute, for a GPU.
  w = a["width"]
  t.model_config = ml_collections.ConfigDict(dict(widths=(w, 2 * w, 4 * w, 8 * w),
                                                  blocks_per_stage=3, num_classes=1))
  t.loss = "logcosh"
  t.learning_rate = 3e-3
  t.schedule = "cosine"
  t.warmup_steps = 50
  t.batch_size = 32
  t.num_steps = a["steps"]   # ~1250 training stars: 1000 steps are ~25 epochs
  t.eval_every = 50
  t.log_every = 50
  t.checkpoint_every = 100_000
  t.keep_checkpoints = 1
  t.early_stopping_metric = "val_mae"
  t.progress = False
  # Transfer from the 3-output parameter network to the 1-output subtype one: everything
  # but the head is loaded; the new head starts at zero (the subtype's offset, G0).
  t.transfer.skip = ("head/.*",)
  t.transfer.zero_init = "head/(.*/)?(kernel|bias)"
  c.train = t

  if a["quick"]:
    # A smoke run of every study: one block per stage (9 convs) compiles ~3x faster,
    # which is most of a short run's time on CPU.
    c.train.model_config.blocks_per_stage = 1
    c.kernels = (3,)
    c.seeds = (0,)
    c.transfer_seeds = (0,)
    c.transfer_sizes = (30, 0)
    c.augment_ablation = False
    c.train.num_steps = 30
    c.train.warmup_steps = 5
    c.train.eval_every = 15
    c.train.log_every = 15
    c.transfer_steps = 30
  return c
