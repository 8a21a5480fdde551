"""Labelled variable-star light curves with their 16 UPSILoN features (array_record, no TF).

Configs (all read from `manual_dir` = a folder laid out like the shared `lightcurves/`):
  eros1         EROS-1 LMC, bands r and b; EB, Cepheid, RR Lyrae, Mira; 3,641 stars.
                Splits: test = the RAMP challenge's test file; the RAMP train file is cut
                into train (90%) and validation (10%), stratified by class.
  eros1_sample  the same, at most 12 stars per class from the RAMP train file and 4 from
                its test file (file order): for tests and smoke runs.
  catalina      30 Catalina Sky Survey curves (band v): DSCT, RR Lyrae, W UMa;
                train / test = 2/3 / 1/3 of each class.
  asas          7 ASAS curves (band v): Mira, Cepheid, W UMa; one `test` split.
  macho_rrc     51 MACHO RR Lyrae c (bands r, b); one `test` split (a single class).

Each example, per band B: `time_B` (float64 days, the survey's own dates: the phase
features depend on the time origin), `mag_B`, `err_B` (float32), padded with zeros to
the config's `max_points` and described by `mask_B`; `features_B` (float32, FEATURES
order, computed at build time with `extract_batch`) and `reason_B` (index into
REASONS; features are NaN unless 0).  Plus `label` (index into the config's classes),
`class` and `id`.

Curves the feature code rejects are kept, with their reason code, because a star can be
good in one band and bad in the other; filter on `reason_B == 0`.  Entries that cannot
be parsed at all are skipped; their number and reasons are in the metadata
(`unreadable`, `unreadable_examples`), as are the reason counts per band and split.

Splits are stratified and deterministic: within a class, stars are ordered by a hash of
their id and cut at the split fractions, so adding stars never moves an old one much
and no random state is involved.

Build with `python -m astrotl.datasets.variable_stars --config=eros1 --manual_dir=DIR
--data_dir=OUT` (the `tfds build` command needs TensorFlow).
"""

import dataclasses
import hashlib
import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from astrotl.io import lightcurve
from astrotl.preprocess.features import FEATURES
from astrotl.preprocess.features_batch import REASONS, extract_batch, pad_curves

log = logging.getLogger(__name__)
EROS1_CLASSES = ("EB", "Cepheid", "RR Lyrae", "Mira")


@dataclasses.dataclass(eq=False)
class Config(tfds.core.BuilderConfig):
  """A source of labelled curves: its reader, bands, classes and split fractions."""

  source: str = ""
  bands: tuple = ()
  classes: tuple = ()
  max_points: int = 0
  per_class: int = 0          # at most this many stars per class (a third of it from a
                              # source test file), in file order; 0 = all
  splits: tuple = ()          # ((name, fraction), ...) cut of the stratified stars


CONFIGS = (
    Config(name="eros1", description="EROS-1 LMC (RAMP), bands r and b, 4 classes.",
           source="eros1", bands=("r", "b"), classes=EROS1_CLASSES, max_points=128,
           splits=(("train", 0.9), ("validation", 0.1))),
    Config(name="eros1_sample", description="12 + 4 EROS-1 stars per class, for tests.",
           source="eros1", bands=("r", "b"), classes=EROS1_CLASSES, max_points=128,
           per_class=12, splits=(("train", 0.75), ("validation", 0.25))),
    Config(name="catalina", description="30 Catalina Sky Survey periodic variables.",
           source="catalina", bands=("v",), classes=("DSCT", "RR Lyrae", "W UMa"),
           max_points=448, splits=(("train", 2 / 3), ("test", 1 / 3))),
    Config(name="asas", description="7 ASAS variables (cesium test data).",
           source="asas", bands=("v",), classes=("Mira", "Cepheid", "W UMa"),
           max_points=704, splits=(("test", 1.0),)),
    Config(name="macho_rrc", description="51 MACHO RR Lyrae c.",
           source="macho_rrc", bands=("r", "b"), classes=("RRL c",), max_points=1280,
           splits=(("test", 1.0),)),
)


def stratified_split(ids, labels, splits) -> dict:
  """{split name: [positions]}: each class ordered by sha256(id), cut at the fractions."""
  ids, labels = list(ids), np.asarray(labels)
  out = {name: [] for name, _ in splits}
  edges = np.cumsum([f for _, f in splits])
  for c in sorted(set(labels.tolist())):
    members = sorted(np.flatnonzero(labels == c).tolist(),
                     key=lambda i: hashlib.sha256(ids[i].encode()).hexdigest())
    cuts = np.rint(edges / edges[-1] * len(members)).astype(int)
    start = 0
    for (name, _), stop in zip(splits, cuts):
      out[name] += members[start:stop]
      start = stop
  return {name: sorted(pos) for name, pos in out.items()}


def _read(config, root):
  """{source part: stars} and the skipped (id, reason) list."""
  root = pathlib.Path(root)
  if config.source == "eros1":
    parts = {p: lightcurve.eros1_ramp(root / "eros1_ramp", p) for p in ("train", "test")}
  elif config.source == "catalina":
    parts = {"all": lightcurve.catalina_csv(root / "catalina_lcml" / "periodic")}
  elif config.source == "asas":
    folder = root / "asas_cesium"
    parts = {"all": lightcurve.asas_cesium(
        folder / "asas_training_subset.tar.gz",
        folder / "asas_training_subset_classes_with_metadata.dat")}
  elif config.source == "macho_rrc":
    parts = {"all": lightcurve.macho_csv(root / "macho_rrc_lcml" / "c2_f1.csv.gz")}
  else:
    raise ValueError(f"config {config.name}: unknown source {config.source!r}")
  skipped = [s for _, sk in parts.values() for s in sk]
  stars = {}
  for part, (items, _) in parts.items():
    unknown = sorted({s.label for s in items} - set(config.classes))
    if unknown:
      raise ValueError(f"config {config.name}: labels {unknown} are not in its classes "
                       f"{config.classes}")
    if config.per_class:
      limit = config.per_class if part != "test" else max(1, config.per_class // 3)
      taken = {}
      kept = []
      for s in items:
        taken[s.label] = taken.get(s.label, 0) + 1
        if taken[s.label] <= limit:
          kept.append(s)
      items = kept
    stars[part] = items
  return stars, skipped


def assign_splits(config, stars) -> dict:
  """{split name: [Star]}.  A source "test" part stays the test split."""
  out = {}
  for part, items in stars.items():
    if part == "test":
      out["test"] = items
      continue
    pos = stratified_split([s.id for s in items], [s.label for s in items], config.splits)
    for name, idx in pos.items():
      out.setdefault(name, []).extend(items[i] for i in idx)
  return {name: items for name, items in out.items() if items}


def examples(config, stars):
  """(key, example) for each Star, features computed in one batch per band."""
  per_band = {}
  for band in config.bands:
    time, mag, err, mask = pad_curves([s.bands[band] for s in stars], config.max_points)
    feats = extract_batch(time, mag, err, mask)
    per_band[band] = (time, mag, err, mask,
                      np.stack([feats[k] for k in FEATURES], -1), feats["reason"])
  for i, star in enumerate(stars):
    ex = {"id": star.id, "class": star.label, "label": config.classes.index(star.label)}
    for band, (time, mag, err, mask, feats, reason) in per_band.items():
      ex.update({f"time_{band}": time[i], f"mag_{band}": mag[i].astype(np.float32),
                 f"err_{band}": err[i].astype(np.float32), f"mask_{band}": mask[i],
                 f"features_{band}": feats[i].astype(np.float32),
                 f"reason_{band}": int(reason[i])})
    yield star.id, ex


class Builder(tfds.core.GeneratorBasedBuilder):
  """Variable-star light curves, UPSILoN features and labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "EROS-1, Catalina, ASAS and MACHO RRc configs."}
  BUILDER_CONFIGS = list(CONFIGS)
  DEFAULT_CONFIG_NAME = "eros1"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Point --manual_dir at a folder laid out like the shared `lightcurves/` folder:
  eros1_ramp/{train,test}.csv and {train,test}_varlength_features.csv.gz (RAMP
  variable_stars challenge), catalina_lcml/periodic/*.csv, asas_cesium/
  asas_training_subset.tar.gz + asas_training_subset_classes_with_metadata.dat,
  macho_rrc_lcml/c2_f1.csv.gz. Only the folders of the config you build are read.
  """

  def __init__(self, *args, file_format="array_record", **kwargs):
    super().__init__(*args, file_format=file_format, **kwargs)
    self.skipped = []   # (id, reason) of entries that could not be parsed

  def _info(self):
    c = self.builder_config
    n = c.max_points
    feats = {"id": tfds.features.Tensor(shape=(), dtype=np.str_),
             "class": tfds.features.Tensor(shape=(), dtype=np.str_),
             "label": tfds.features.Tensor(shape=(), dtype=np.int64)}
    for b in c.bands:
      feats.update({
          # BYTES keeps float64: the default encoding stores floats as float32, which
          # moves survey dates by up to ~1e-4 d, too much for short periods.
          f"time_{b}": tfds.features.Tensor(shape=(n,), dtype=np.float64,
                                            encoding=tfds.features.Encoding.BYTES),
          f"mag_{b}": tfds.features.Tensor(shape=(n,), dtype=np.float32),
          f"err_{b}": tfds.features.Tensor(shape=(n,), dtype=np.float32),
          f"mask_{b}": tfds.features.Tensor(shape=(n,), dtype=np.bool_),
          f"features_{b}": tfds.features.Tensor(shape=(len(FEATURES),), dtype=np.float32),
          f"reason_{b}": tfds.features.Tensor(shape=(), dtype=np.int64),
      })
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict(feats),
        metadata=tfds.core.MetadataDict(classes=list(c.classes), bands=list(c.bands),
                                        feature_order=list(FEATURES), reasons=list(REASONS)),
    )

  def _split_generators(self, dl_manager):
    c = self.builder_config
    stars, self.skipped = _read(c, dl_manager.manual_dir)
    for star_id, reason in self.skipped:
      log.warning("%s: skipping unreadable entry %s (%s)", c.name, star_id, reason)
    by_split = assign_splits(c, stars)
    md = self.info.metadata
    md["unreadable"] = len(self.skipped)
    md["unreadable_examples"] = [f"{i}: {r}" for i, r in self.skipped[:20]]
    md["counts"] = {name: {k: sum(s.label == k for s in items) for k in c.classes}
                    for name, items in by_split.items()}
    md["reason_counts"] = {}
    return {name: self._generate_examples(name, items) for name, items in by_split.items()}

  def _generate_examples(self, split, stars):
    counts = {b: [0] * len(REASONS) for b in self.builder_config.bands}
    for key, ex in examples(self.builder_config, stars):
      for b in counts:
        counts[b][ex[f"reason_{b}"]] += 1
      yield key, ex
    self.info.metadata["reason_counts"][split] = {
        b: {REASONS[i]: n for i, n in enumerate(v) if n} for b, v in counts.items()}


def build(config: str, manual_dir, data_dir) -> Builder:
  """Prepares `variable_stars/<config>` under data_dir (reused if already there)."""
  builder = Builder(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder
