"""LAMOST LRS spectra on the common grid, as a TFDS dataset (array_record, no TensorFlow).

Configs:
  sample     the 59 real spectra bundled in astrotl/data/spectra; needs nothing else.
  mirror     a local LAMOST LRS mirror in `manual_dir` (see MANUAL_DOWNLOAD_INSTRUCTIONS).
  simulated  `sample` plus, per split, as many simulated DA white dwarfs as real stars and
             half as many DA+M binaries (astrotl.preprocess.simulate), built from that
             split's own stars: their ivar patterns and M dwarfs; label WD, subclass DA or
             DA+M, file 'simulated:KIND:teff=..:logg=..'.  Deterministic.

Each example: flux/ivar/mask resampled onto the common grid (astrotl.preprocess.spectra),
the class index in CLASSES (-1 when the type is outside them, e.g. a QSO), the MK subtype
number (NaN if none), obsid (-1 if unknown), g-band SNR, ra, dec, class/subclass strings and
the source file name.

Splits are fixed by a hash of the star, so repeat visits of one star never straddle train
and test, and adding files never moves an old one: the key is the designation when it is
known before reading (sample index or mirror catalog), else the obsid, else the file name.
Unreadable mirror files are logged and skipped; their number is in the dataset metadata.

Build it with `python -m astrotl.datasets.lamost_lrs` (the `tfds build` command itself
imports TensorFlow); a large mirror can be built with Apache Beam (extra `beam`):
  python -m astrotl.datasets.lamost_lrs --config=mirror --manual_dir=DIR --data_dir=OUT \\
    --beam_options=runner=DirectRunner,direct_num_workers=16,direct_running_mode=multi_processing
`tfds build ... --beam_pipeline_options=...` works the same where TensorFlow is installed.
"""

import hashlib
import logging
import os
import pathlib
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from astrotl import data
from astrotl.io import SpectrumError, catalog, lamost
from astrotl.preprocess import spectra

CLASSES = tuple(spectra.DEFAULT_CLASSES)
SIM_SEED = 20231  # the simulated config is deterministic
# Upper edges of the hash fraction for each split.
SPLITS = (("train", 0.8), ("validation", 0.9), ("test", 1.0))

log = logging.getLogger(__name__)


class Source(NamedTuple):
  """One file to read: its example key, split key, and labels known in advance."""

  path: str
  key: str
  split_key: str
  labels: dict


def split_of(split_key: str) -> str:
  """The split a star/obsid/file key belongs to (stable across runs and machines)."""
  digest = hashlib.sha256(split_key.encode("utf-8")).digest()
  fraction = int.from_bytes(digest[:8], "big") / 2.0 ** 64
  return next(name for name, edge in SPLITS if fraction < edge)


def example(path, labels=None) -> dict:
  """Reads one file and returns its feature dict; raises SpectrumError if unreadable."""
  s = lamost.read(path)
  meta = dict(s.meta)
  meta.update({k: v for k, v in (labels or {}).items() if v is not None})
  flux, ivar, mask = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
  index = spectra.class_index(meta["class"] or "", meta["subclass"] or "")
  subtype = spectra.subtype_number(meta["subclass"] or "")
  return {
      "flux": flux,
      "ivar": ivar,
      "mask": mask,
      "label": -1 if index is None else index,
      "subtype": np.nan if subtype is None else subtype,
      "class": meta["class"] or "",
      "subclass": meta["subclass"] or "",
      "obsid": -1 if meta["obsid"] is None else int(meta["obsid"]),
      "snr_g": np.nan if meta["snr_g"] is None else meta["snr_g"],
      "ra": np.nan if meta["ra"] is None else meta["ra"],
      "dec": np.nan if meta["dec"] is None else meta["dec"],
      "file": os.path.basename(os.fspath(path)),
  }


def _split_key(designation, obsid, name):
  if designation:
    return "desig:" + str(designation).strip()
  if obsid not in (None, "", -1):
    return f"obsid:{int(float(obsid))}"
  return "file:" + name


def sample_sources() -> list:
  """The bundled sample as Sources (labels come from the headers)."""
  out = []
  for row in data.sample_index():
    name = os.path.basename(row["file"])
    out.append(Source(str(row["path"]), row["file"],
                      _split_key(row["designation"], row["obsid"], name), {}))
  return out


def _spec_files(root: pathlib.Path) -> dict:
  """Archive name (no .gz) -> path, for every spec-*.fits[.gz] below root."""
  files = {}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      if name.startswith("spec-") and name.endswith((".fits", ".fits.gz")):
        files.setdefault(name.removesuffix(".gz"), os.path.join(dirpath, name))
  return files


def _catalog_files(root: pathlib.Path) -> list:
  return sorted(p for p in root.iterdir() if p.is_file()
                and p.name.lower().endswith(catalog.SUFFIXES)
                and not p.name.startswith(("spec-", "med-")))


def mirror_sources(root) -> list:
  """Sources of a mirror: every spec file, or only those its catalog lists (labelled)."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: LAMOST mirror folder not found")
  files = _spec_files(root)
  if not files:
    raise FileNotFoundError(f"{root}: no spec-*.fits[.gz] files found below this folder")
  catalogs = _catalog_files(root)
  if len(catalogs) > 1:
    raise ValueError(f"{root}: more than one catalog at the top level "
                     f"({', '.join(p.name for p in catalogs)}); keep one")
  if not catalogs:
    return [Source(path, os.path.relpath(path, root), _split_key(None, None, name), {})
            for name, path in sorted(files.items())]
  table = catalog.read_table(catalogs[0])
  names = _catalog_file_names(table, catalogs[0])
  n = len(names)
  columns = {k: table.get(k) for k in ("obsid", "designation", "class", "subclass")}
  out, missing, seen = [], 0, set()
  for i, name in enumerate(names):
    path = files.get(name)
    if path is None:
      missing += 1
      continue
    if name in seen:
      continue
    seen.add(name)
    labels = {k: _cell(v[i]) for k, v in columns.items() if v is not None}
    if labels.get("obsid") is not None:
      try:
        labels["obsid"] = int(float(labels["obsid"]))
      except ValueError:  # not a LAMOST obsid (e.g. an SDSS plate-mjd-fiber id)
        labels["obsid"] = None
    out.append(Source(path, os.path.relpath(path, root),
                      _split_key(labels.get("designation"), labels.get("obsid"), name), labels))
  if missing:
    log.warning("%s: %d of %d catalog rows have no file in the mirror", catalogs[0], missing, n)
  if not out:
    raise FileNotFoundError(f"{catalogs[0]}: none of its {n} rows matches a file in {root}")
  return out


def _catalog_file_names(table, path):
  for key in ("file", "filename", "fits", "path"):
    if key in table:
      return [os.path.basename(str(v).strip()).removesuffix(".gz") for v in table[key]]
  need = ("lmjd", "planid", "spid", "fiberid")
  if all(k in table for k in need):
    return [catalog.lamost_filename(*row) for row in zip(*(table[k] for k in need))]
  raise SpectrumError(path, "catalog needs a file/filename column or lmjd, planid, spid, "
                      "fiberid to find the spectra")


def _cell(value):
  if isinstance(value, (bytes, np.bytes_)):
    value = value.decode("ascii", "replace")
  if isinstance(value, (str, np.str_)):
    return str(value).strip() or None
  if isinstance(value, (float, np.floating)) and not np.isfinite(value):
    return None
  return value.item() if hasattr(value, "item") else value


def _beam_example(source):
  """Beam FlatMap body: the (key, example) of a readable file, nothing otherwise."""
  import apache_beam as beam

  try:
    yield source.key, example(source.path, source.labels)
  except SpectrumError as e:
    beam.metrics.Metrics.counter("lamost_lrs", "unreadable_files").inc()
    log.warning("skipping unreadable file %s", e)


class Builder(tfds.core.GeneratorBasedBuilder):
  """LAMOST low-resolution spectra on the astrotl common wavelength grid."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: sample, mirror and simulated configs."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="sample", description="The 59 bundled LAMOST spectra."),
      tfds.core.BuilderConfig(name="mirror", description="A local LAMOST LRS mirror."),
      tfds.core.BuilderConfig(name="simulated", description=(
          "The bundled real stars plus simulated DA white dwarfs and DA+M binaries made "
          "from each split's own stars (noise patterns, M-dwarf companions).")),
  ]
  DEFAULT_CONFIG_NAME = "sample"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  For config `mirror`, point --manual_dir at a folder holding LAMOST LRS spectra
  (spec-*.fits or spec-*.fits.gz, in any sub-folders, e.g. the archive's YYYYMMDD/PLANID/
  layout). Optionally put one catalog at the top level of that folder (CSV, '|' or tab
  separated, optionally gzipped, or a FITS table), e.g. the LAMOST general catalog: then only
  the spectra it lists are used, and its obsid, designation, class and subclass columns
  override the headers. It must have a file/filename column or lmjd, planid, spid, fiberid.
  """

  def __init__(self, *args, file_format="array_record", **kwargs):
    super().__init__(*args, file_format=file_format, **kwargs)
    self.skipped = []  # (path, reason) of unreadable files, for the caller to inspect
    self._use_beam = False

  def _info(self):
    grid = tfds.features.Tensor(shape=(spectra.NPIX,), dtype=np.float32)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "flux": grid,
            "ivar": grid,
            "mask": tfds.features.Tensor(shape=(spectra.NPIX,), dtype=np.bool_),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
            "subtype": tfds.features.Tensor(shape=(), dtype=np.float32),
            "class": tfds.features.Tensor(shape=(), dtype=np.str_),
            "subclass": tfds.features.Tensor(shape=(), dtype=np.str_),
            "obsid": tfds.features.Tensor(shape=(), dtype=np.int64),
            "snr_g": tfds.features.Tensor(shape=(), dtype=np.float32),
            "ra": tfds.features.Tensor(shape=(), dtype=np.float64),
            "dec": tfds.features.Tensor(shape=(), dtype=np.float64),
            "file": tfds.features.Tensor(shape=(), dtype=np.str_),
        }),
        homepage="https://www.lamost.org",
        metadata=tfds.core.MetadataDict(classes=list(CLASSES)),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # Beam is used only when the caller asked for it (tfds build --beam_pipeline_options).
    self._use_beam = download_config is not None and (
        download_config.beam_options is not None or download_config.beam_runner is not None)
    return super()._download_and_prepare(dl_manager, download_config)

  def _process_pipeline_result(self, pipeline_result):
    # With Beam the skips happen in workers; their counter is the only record of them.
    if pipeline_result is None:
      return
    from apache_beam.metrics.metric import MetricsFilter

    query = MetricsFilter().with_namespace("lamost_lrs").with_name("unreadable_files")
    counters = pipeline_result.metrics().query(query)["counters"]
    count = sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters)
    self.info.metadata["unreadable_files"] = int(count)
    log.info("skipped %d unreadable files", count)

  def _split_generators(self, dl_manager):
    if self.builder_config.name in ("sample", "simulated"):
      sources = sample_sources()
    else:
      sources = mirror_sources(dl_manager.manual_dir)
    by_split = {name: [] for name, _ in SPLITS}
    for source in sources:
      by_split[split_of(source.split_key)].append(source)
    # TFDS refuses empty splits; a small mirror may have none for validation or test.
    for name in [n for n, items in by_split.items() if not items]:
      log.warning("split %s has no files and is left out", name)
      del by_split[name]
    self.info.metadata["unreadable_files"] = 0
    if self._use_beam:
      import apache_beam as beam

      return {name: beam.Create(items) | f"read_{name}" >> beam.FlatMap(_beam_example)
              for name, items in by_split.items()}
    if self.builder_config.name == "simulated":
      return {name: self._generate_simulated(name, items) for name, items in by_split.items()}
    return {name: self._generate_examples(items) for name, items in by_split.items()}

  def _generate_simulated(self, split, sources):
    """The split's real stars, then as many simulated DAs and half as many DA+M."""
    from astrotl.preprocess import simulate
    real = list(self._generate_examples(sources))
    yield from real
    stars = [ex for _, ex in real if ex["label"] >= 0]
    if not stars:
      return
    rng = np.random.default_rng([SIM_SEED, [n for n, _ in SPLITS].index(split)])
    ivars = np.stack([ex["ivar"] for ex in stars])
    m_dwarfs = [ex for ex in stars if CLASSES[ex["label"]] == "M"]
    sim = simulate.Simulator()
    batches = [("DA", sim.sample(len(stars), rng, ivar_templates=ivars))]
    if m_dwarfs:
      batches.append(("DA+M", sim.sample(
          len(stars) // 2, rng, ivar_templates=ivars, companion_fraction=1.0,
          companions=np.stack([ex["flux"] for ex in m_dwarfs]),
          companion_masks=np.stack([ex["mask"] for ex in m_dwarfs]))))
    else:
      log.warning("split %s has no M dwarfs: no DA+M binaries simulated", split)
    for kind, b in batches:
      for i in range(len(b["flux"])):
        yield f"sim-{split}-{kind}-{i}", {
            "flux": b["flux"][i].astype(np.float32), "ivar": b["ivar"][i].astype(np.float32),
            "mask": b["mask"][i], "label": CLASSES.index("WD"), "subtype": np.nan,
            "class": "STAR", "subclass": kind, "obsid": -1, "snr_g": float(b["snr"][i]),
            "ra": np.nan, "dec": np.nan,
            "file": f"simulated:{kind}:teff={b['teff'][i]:.0f}:logg={b['logg'][i]:.2f}"}

  def _generate_examples(self, sources):
    for source in sources:
      try:
        yield source.key, example(source.path, source.labels)
      except SpectrumError as e:
        self.skipped.append((source.path, e.reason))
        self.info.metadata["unreadable_files"] = len(self.skipped)
        log.warning("skipping unreadable file %s (%d so far)", e, len(self.skipped))
