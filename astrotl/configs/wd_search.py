"""White-dwarf search (Tan et al. 2023): 7-class stage 1, transfer to binary stage 2.

  python experiments/wd_search.py --config=astrotl/configs/wd_search.py --workdir=...
  python experiments/wd_search.py --config=astrotl/configs/wd_search.py:quick=True ...

Class set: A, F, G, K, M from real LAMOST stars, WD and WD+M from the DA simulator.
Tan et al.'s seventh class slot is used for DA+M binaries because the real sample here
has no O/B stars; with O/B data set `classes` to spectra.DEFAULT_CLASSES' keys.
The dense layer is 256 wide rather than Tan's 1024 so the two bundled stages fit in
~14 MB (float16); everything else is Tan's architecture.
"""

import ml_collections

from astrotl import train
from astrotl.configs import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.classes = ("A", "F", "G", "K", "M", "WD", "WD+M")
  c.model_config = ml_collections.ConfigDict({"dense_width": 256})
  c.n_sim_wd = 400          # simulated DA white dwarfs per split (train; val/test use half)
  c.n_sim_wdm = 200         # simulated DA+M binaries per split
  c.snr_range = (5.0, 60.0)
  c.teff_range = (6000.0, 40000.0)

  c.stage1 = train.default_config()
  c.stage1.model = "cnn1d"
  c.stage1.batch_size = 32
  c.stage1.num_steps = 400
  c.stage1.learning_rate = 1e-3
  c.stage1.eval_every = 50
  c.stage1.checkpoint_every = 100
  c.stage1.progress = False

  c.stage2 = train.default_config()
  c.stage2.model = "cnn1d"
  c.stage2.batch_size = 16
  c.stage2.num_steps = 80
  c.stage2.learning_rate = 5e-4
  c.stage2.eval_every = 10
  c.stage2.checkpoint_every = 1000
  c.stage2.progress = False
  c.target_sizes = (10, 40, 160)
  c.seeds = (0, 1, 2)
  c.variants = ("finetune_all", "frozen_stem", "n_blocks_2", "scratch")
  c.target_accuracy = 0.95  # "steps / seconds to reach" this validation accuracy
  c.threshold = 0.5
  if a["quick"]:  # a smoke run of the whole pipeline in a few minutes
    c.n_sim_wd, c.n_sim_wdm = 64, 32
    c.stage1.num_steps, c.stage2.num_steps = 40, 20
    c.target_sizes, c.seeds = (10, 40), (0,)
    c.variants = ("finetune_all", "scratch")
  return c
