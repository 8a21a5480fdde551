"""Variable sources (Kim et al. 2021): UPSILoN-T (OGLE + EROS-2) transferred to EROS-1.

  python experiments/variable_sources.py --config=astrotl/configs/variable_sources.py \\
      --workdir=workdir/variable_sources
  ...:quick=True   a smoke run on the eros1_sample config (a few minutes)
  ...:targets=eros1/b+catalina/v   only these (dataset/band, "+"-joined) targets, "none"
                                   for none; zero_shot=False drops the zero-shot-only sets
                                   (to split a run over processes)

`targets` are (dataset config, band) pairs of the variable_stars builder trained on at each
label fraction; `zero_shot_only` are sets too small to train on, scored by UPSILoN-T alone.
`superclasses` map each target class name onto UPSILoN-T classes for the zero-shot floor;
a prediction of any other UPSILoN-T class counts as "other" (wrong).
"""

import ml_collections

from astrotl import train
from astrotl.configs import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, quick=False, targets="", zero_shot=True)
  c = ml_collections.ConfigDict()
  c.targets = (("eros1", "r"), ("eros1", "b"), ("catalina", "v"))
  c.zero_shot_only = (("asas", "v"), ("macho_rrc", "r"), ("macho_rrc", "b"))
  c.fractions = (0.01, 0.05, 0.1, 1.0)
  c.seeds = (0, 1, 2, 3, 4)
  # Zoobot's n_blocks counts modules below the head: block_3 is a BatchNorm alone, so
  # n_blocks=2 is the first setting that trains a dense layer besides the head.
  c.variants = ("finetune_all", "head_only", "n_blocks_2", "scratch")
  c.preprocess_from = "train_split"   # train_split | labelled | upsilont (see the script)
  c.balanced = True                   # class weights inverse to the labelled counts
  c.superclasses = (
      ("EB", ("EB_EC", "EB_ED", "EB_ESD")),
      ("W UMa", ("EB_EC",)),
      ("Cepheid", ("CEPH_1O", "CEPH_F", "CEPH_Other", "T2CEPH")),
      ("RR Lyrae", ("RRL_ab", "RRL_c", "RRL_d", "RRL_e")),
      ("RRL c", ("RRL_c",)),
      ("Mira", ("LPV_Mira_AGB_C", "LPV_Mira_AGB_O")),
      ("DSCT", ("DSCT",)),
  )

  c.train = train.default_config()
  c.train.model = "mlp"
  c.train.model_config = ml_collections.ConfigDict({"first_eps": 64.0})
  c.train.batch_size = 64
  c.train.num_steps = 300
  c.train.learning_rate = 1e-3
  c.train.log_every = 50
  c.train.checkpoint_every = 10 ** 9   # only the final step is saved
  c.train.keep_checkpoints = 1
  c.train.progress = False
  if a["quick"]:
    c.targets = (("eros1_sample", "r"), ("catalina", "v"))
    c.zero_shot_only = (("asas", "v"),)
    c.fractions = (0.25, 1.0)
    c.seeds = (0, 1)
    c.train.num_steps = 40
  if a["targets"]:
    c.targets = () if a["targets"] == "none" else tuple(
        tuple(t.split("/")) for t in a["targets"].split("+"))
  if not a["zero_shot"]:
    c.zero_shot_only = ()
  return c
