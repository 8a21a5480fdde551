"""White-dwarf search (Tan et al. 2023), trained to hold on real spectra.

  python experiments/wd_search.py --config=astrotl/configs/wd_search.py --workdir=...
  python experiments/wd_search.py --config=astrotl/configs/wd_search.py:quick=True ...

Classes: A, F, G, K, M (real LAMOST stars and CALSPEC stars), OB and sdOB (CALSPEC O/B
stars and hot subdwarfs, the white dwarfs' main contaminants), WD (simulated DAs and DBs
and real CALSPEC DA/DB/DO white dwarfs), WD+M (simulated DA + real M dwarf) and other
(featureless and emission-line continua).  The dense layer
is 256 wide rather than Tan's 1024 so the bundle stays small; everything else is Tan's
architecture.  See experiments/wd_search.py for how every spectrum is made LAMOST-like.
"""

import ml_collections

from astrotl import train
from astrotl.configs import parse_arg


def _cnn1d(**settings):
  """A training config of the cnn1d, quiet (no progress bar), with these settings."""
  c = train.default_config()
  c.model = "cnn1d"
  c.update(settings)
  c.progress = False
  return c


def get_config(arg=None):
  a = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  # "other": featureless and emission-line continua (hard negatives with no absorption line)
  c.classes = ("A", "F", "G", "K", "M", "OB", "sdOB", "WD", "WD+M", "other")
  c.model_config = ml_collections.ConfigDict({"dense_width": 256})
  c.seed = 0
  c.folds = 5                    # cross-validation over real objects
  c.validation_fraction = 0.12   # of each training set's objects, per class
  c.lamost_copies = 6            # degraded copies of each real LAMOST star (plus itself)
  c.calspec_draws = 24           # LAMOST-like draws of each CALSPEC spectrum
  c.hard_negatives = ("OB", "sdOB")  # a handful of objects each: hot stars with Balmer lines
  c.hard_negative_factor = 4     # ... get this many times the draws
  c.n_sim_wd = 2000              # simulated DA white dwarfs (all objects; scaled per split)
  c.n_sim_db = 800               # simulated DB white dwarfs (Koester pure-He models)
  c.n_sim_wdm = 600              # simulated DA+M binaries
  c.n_featureless = 2500         # featureless / emission-line continua (class "other")
  c.emission_fraction = 0.35     # of those with emission lines
  c.tilt = 2.0                   # every spectrum x (lambda / 5500 A)^alpha, |alpha| <= tilt
  c.spike_fraction = 0.3         # spectra given one or two narrow spikes (cosmic rays)
  c.snr_range = (4.0, 60.0)      # S/N of the degraded and simulated spectra (log-uniform)
  c.teff_range = (6000.0, 80000.0)     # DA models: cooler ones have barely any lines
  c.db_teff_range = (12000.0, 80000.0)  # DB models: He I lines fade below ~12,000 K
  c.logg_range = (7.0, 9.0)
  c.blur_fraction = 0.5          # spectra blurred to a resolving power in blur_resolution
  c.blur_resolution = (700.0, 1800.0)
  c.real_response_sigma = 0.1    # extra response on real LAMOST stars (they have their own)

  c.stage1 = _cnn1d(batch_size=64, num_steps=2000, learning_rate=1e-3, eval_every=250,
                    checkpoint_every=500)

  # On stage 1's frozen conv trunk; 1,200 steps (~4 epochs): the rare hot-star negatives
  # need them.
  c.stage2 = _cnn1d(batch_size=64, num_steps=1200, learning_rate=5e-4, eval_every=100,
                    checkpoint_every=1000)

  # The candidate rule the bundle declares.
  c.threshold = 0.5
  c.min_snr = 4.0              # the lowest S/N trained on: below it the model is not asked
  c.veto = ("QSO", "GALAXY")   # the survey's own CLASS
  # White-dwarf fraction of a whole LAMOST survey (Guo et al. 2022: ~2,900 WD spectra in
  # DR5's ~9 M; a Gaia match of DR7: ~6,200 in ~10 M), for the p_wd_survey column.
  c.survey_prior = 0.0005

  # The stage-2 study: transfer from stage 1 vs scratch, N target labels (fold 0).
  c.study = _cnn1d(batch_size=16, num_steps=80, learning_rate=5e-4, eval_every=10,
                   checkpoint_every=1000)
  c.target_sizes = (10, 40, 160)
  c.seeds = (0, 1, 2)
  c.variants = ("finetune_all", "frozen_stem", "n_blocks_2", "scratch")
  c.target_accuracy = 0.95

  if a["quick"]:  # a smoke run of the whole pipeline in a few minutes
    c.folds = 2
    c.lamost_copies, c.calspec_draws = 1, 2
    c.n_sim_wd, c.n_sim_wdm, c.n_sim_db, c.n_featureless = 64, 32, 32, 64
    c.stage1.num_steps, c.stage2.num_steps, c.study.num_steps = 30, 10, 10
    c.stage1.eval_every, c.stage2.eval_every = 10, 5
    c.target_sizes, c.seeds = (10,), (0,)
    c.variants = ("frozen_stem", "scratch")
  return c
