"""Labelled galaxy images from several surveys, as a TFDS dataset (array_record, no TensorFlow).

Built from `manual_dir`: a folder laid out like the shared `galaxies/` folder (see its
PROVENANCE.md).  Nothing is copied into the package: several of these sets state no
licence, so they may only be read from where the user keeps them.

Configs (images are uint8 as stored; labels are class indices):
  gz1_early_late       SDSS, Galaxy Zoo 1: early (0) vs late (1), 106 x 106 x 3
  gz1_classes          SDSS, Galaxy Zoo 1 leaf class (6 classes), 106 x 106 x 3
  decals_rings         DECaLS, ring (1) vs not (0), 212 x 212 x 3
  first, nvss          FR-DEEP radio galaxies, FRI (0) vs FRII (1), 150 x 150
  mirabest             MiraBest confident standard FRI/FRII, 150 x 150
  gz1_early_late_64px  the balanced 600-image SDSS mini array, 64 x 64 x 3
  decals_rings_64px    the 470-image DECaLS mini array, 64 x 64 x 3

Splits: the radio sets keep their published train/test split; the others are split
80/20 by a hash of the object id, so a given galaxy is always on the same side.
"""

import csv
import hashlib
import pathlib
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from astrotl.io import images as io_images


class Source(NamedTuple):
  kind: str            # "zip" (images in a zip + csv) or "npz"
  path: str            # relative to manual_dir
  csv: str             # zip only: the label table
  label_column: str    # zip only: the label column of the csv
  id_column: str       # the object id (csv column or npz key)
  shape: tuple
  classes: tuple
  description: str


GZ1_CLASSES = ("elliptical", "spiral_clockwise", "spiral_anticlockwise", "edge_on", "dont_know",
               "merger")
FR = ("FRI", "FRII")

SOURCES = {
    "gz1_early_late": Source("zip", "sdss_gz1_small/images_106px.zip", "sdss_gz1_small/labels.csv",
                             "early0_late1_or_minus1", "objid", (106, 106, 3), ("early", "late"),
                             "SDSS cutouts with Galaxy Zoo 1 early/late labels (don't-know and "
                             "mergers left out)."),
    "gz1_classes": Source("zip", "sdss_gz1_small/images_106px.zip", "sdss_gz1_small/labels.csv",
                          "class", "objid", (106, 106, 3), GZ1_CLASSES,
                          "SDSS cutouts with the Galaxy Zoo 1 leaf class."),
    "decals_rings": Source("zip", "decals_rings_zoobot/images_212px.zip",
                           "decals_rings_zoobot/catalog.csv", "ring", "iauname", (212, 212, 3),
                           ("not_ring", "ring"), "DECaLS colour images, ring vs not ring."),
    "first": Source("npz", "radio_fr/frdeep_first.npz", "", "", "filenames", (150, 150), FR,
                    "FR-DEEP: VLA FIRST radio galaxies (1.8 arcsec/px)."),
    "nvss": Source("npz", "radio_fr/frdeep_nvss.npz", "", "", "filenames", (150, 150), FR,
                   "FR-DEEP: the same radio galaxies in NVSS (15 arcsec/px)."),
    "mirabest": Source("npz", "radio_fr/mirabest_confident_standard.npz", "", "", "filenames",
                       (150, 150), FR, "MiraBest confident standard FRI/FRII (VLA FIRST)."),
    "gz1_early_late_64px": Source("npz", "mini/sdss_gz1_early_late_64px.npz", "", "", "objid",
                                  (64, 64, 3), ("early", "late"),
                                  "Balanced 600-galaxy SDSS early/late mini array."),
    "decals_rings_64px": Source("npz", "mini/decals_rings_64px.npz", "", "", "iauname",
                                (64, 64, 3), ("not_ring", "ring"),
                                "470-galaxy DECaLS ring mini array."),
}

TEST_FRACTION = 0.2


def split_of(object_id: str) -> str:
  """'train' or 'test' for an object id, fixed by its hash (not by file order)."""
  digest = hashlib.sha256(object_id.encode("utf-8")).digest()
  return "test" if int.from_bytes(digest[:8], "big") / 2.0 ** 64 < TEST_FRACTION else "train"


def _zip_examples(root: pathlib.Path, src: Source):
  table = root / src.csv
  try:
    with open(table, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise FileNotFoundError(f"{table}: cannot read the label table ({e.strerror or e})") from e
  need = {"file", src.label_column, src.id_column}
  if rows and not need <= set(rows[0]):
    raise ValueError(f"{table}: needs columns {sorted(need)}, has {sorted(rows[0])}")
  rows = [r for r in rows if int(r[src.label_column]) >= 0]
  images = io_images.read_zip_images(root / src.path, [r["file"] for r in rows], src.shape)
  for row, (_, image) in zip(rows, images):
    yield row[src.id_column], row[src.id_column], image, int(row[src.label_column]), None


def _npz_examples(root: pathlib.Path, src: Source):
  keys = ("images", "labels", src.id_column)
  with np.load(root / src.path, allow_pickle=False) as z:
    keys += ("split",) if "split" in z.files else ()
  d = io_images.read_npz(root / src.path, keys=keys, shape=src.shape)
  for i in range(len(d["images"])):
    split = str(d["split"][i]) if "split" in d else None
    # Keys are row numbers: FR-DEEP FIRST reuses 43 file names for different images.
    yield f"{i:05d}", str(d[src.id_column][i]), d["images"][i], int(d["labels"][i]), split


def examples(root, config: str):
  """(key, id, image, label, split or None) for every example of `config` under `root`."""
  src = SOURCES[config]
  root = pathlib.Path(root)
  if not (root / src.path).exists():
    raise FileNotFoundError(f"{root / src.path}: not found; manual_dir must be the galaxies "
                            "folder described in PROVENANCE.md")
  return (_zip_examples if src.kind == "zip" else _npz_examples)(root, src)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Galaxy morphology images (SDSS GZ1, DECaLS rings, FIRST/NVSS/MiraBest radio)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=src.description)
                     for name, src in SOURCES.items()]
  DEFAULT_CONFIG_NAME = "gz1_early_late_64px"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Point manual_dir at a folder with the layout of the shared `galaxies/` folder:
  sdss_gz1_small/{images_106px.zip,labels.csv}, decals_rings_zoobot/{images_212px.zip,
  catalog.csv}, radio_fr/{frdeep_first,frdeep_nvss,mirabest_confident_standard}.npz and
  mini/{sdss_gz1_early_late_64px,decals_rings_64px}.npz. Only the files of the config being
  built are needed.
  """

  def __init__(self, *args, file_format="array_record", **kwargs):
    super().__init__(*args, file_format=file_format, **kwargs)

  def _info(self):
    src = SOURCES[self.builder_config.name]
    return tfds.core.DatasetInfo(
        builder=self,
        description=src.description,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=src.shape, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(src.classes)),
            "id": tfds.features.Tensor(shape=(), dtype=np.str_),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    by_split = {"train": [], "test": []}
    for key, object_id, image, label, split in examples(dl_manager.manual_dir,
                                                        self.builder_config.name):
      by_split[split or split_of(object_id)].append((key, object_id, image, label))
    return {name: self._generate_examples(items) for name, items in by_split.items() if items}

  def _generate_examples(self, items):
    for key, object_id, image, label in items:
      yield key, {"image": image, "label": label, "id": object_id}
