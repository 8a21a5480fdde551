"""Readers for labelled variable-star light curves, one function per file layout.

Each returns `(stars, skipped)`: a list of `Star` and a list of (star id, reason) for
entries that could not be parsed.  A Star's bands map a band name ("r", "b", "v") to
(time, mag, err) float64 arrays sorted by time; flagged rows are dropped, so every
value left is a measurement.

| reader            | layout                                                          |
|-------------------|-----------------------------------------------------------------|
| `eros1_ramp`      | RAMP variable_stars CSVs: `<part>.csv` + `<part>_varlength_features.csv.gz` |
| `catalina_csv`    | one CSS CSV per star, label in the file name (`rr_lyrae_<id>.csv`) |
| `asas_cesium`     | cesium's ASAS tarball of `<id>.dat` + a `filename,target` table |
| `macho_csv`       | MACHO rows `classification,fieldid,tileid,seqn,...,rmag,rerr,bmag,berr` |
"""

import csv
import gzip
import io
import json
import pathlib
import sys
import tarfile
from typing import NamedTuple

import numpy as np

EROS1_TYPES = {1: "EB", 2: "Cepheid", 3: "RR Lyrae", 4: "Mira"}
CATALINA_TYPES = {"delta_scuti": "DSCT", "rr_lyrae": "RR Lyrae", "w_uma": "W UMa"}
ASAS_TYPES = {"Mira": "Mira", "Classical_Cepheid": "Cepheid", "W_Ursae_Maj": "W UMa"}
# light_curve_ml's data/macho/READ_ME.txt
MACHO_TYPES = {1: "RRL ab", 2: "RRL c", 3: "RRL e", 4: "Cepheid F", 5: "Cepheid 1O",
               6: "LPV Wood A", 7: "LPV Wood B", 8: "LPV Wood C", 9: "LPV Wood D", 10: "EB",
               11: "RRL + GB blend"}
MACHO_MAX_ERR = 1.0   # rows with err <= 0 or >= this are flags (-99 mags, 29.999 errors)


class LightCurveError(ValueError):
  """A light-curve file that cannot be read; names the file and the reason."""


class Star(NamedTuple):
  id: str
  label: str
  bands: dict   # band -> (time, mag, err)


def _curve(time, mag, err):
  time, mag, err = (np.asarray(a, np.float64) for a in (time, mag, err))
  if not len(time) == len(mag) == len(err):
    raise ValueError(f"time/mag/err lengths differ: {len(time)}, {len(mag)}, {len(err)}")
  order = np.argsort(time, kind="stable")
  return time[order], mag[order], err[order]


def _need(path):
  path = pathlib.Path(path)
  if not path.is_file():
    raise LightCurveError(f"{path}: no such file")
  return path


def eros1_ramp(folder, part: str):
  """EROS-1 LMC stars of the RAMP challenge, `part` = "train" or "test", bands r and b."""
  folder = pathlib.Path(folder)
  meta_path = _need(folder / f"{part}.csv")
  curves_path = _need(folder / f"{part}_varlength_features.csv.gz")
  with open(meta_path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or "type" not in rows[0]:
    raise LightCurveError(f"{meta_path}: expected a CSV with a 'type' column")
  index = next(iter(rows[0]))   # the unnamed first column holds the star id
  labels = {r[index]: r["type"] for r in rows}
  csv.field_size_limit(sys.maxsize)   # one cell holds a whole light curve
  stars, skipped = [], []
  with gzip.open(curves_path, "rt", newline="") as f:
    for row in csv.DictReader(f):
      star = row.get("") or row.get(index) or ""
      try:
        label = EROS1_TYPES[int(float(labels[star]))]
        bands = {b: _curve(*(json.loads(row[f"{k}_points_{b}"]) for k in ("time", "light", "error")))
                 for b in ("r", "b")}
      except (KeyError, ValueError, TypeError) as e:
        skipped.append((star, f"{curves_path.name}: {type(e).__name__}: {e}"))
        continue
      stars.append(Star(star, label, bands))
  missing = sorted(set(labels) - {s.id for s in stars} - {s for s, _ in skipped})
  skipped += [(s, f"in {meta_path.name} but not in {curves_path.name}") for s in missing]
  return stars, skipped


def catalina_csv(folder):
  """Catalina Sky Survey CSVs named `<type>_<MasterID>.csv` (types CATALINA_TYPES); band v."""
  folder = pathlib.Path(folder)
  files = sorted(folder.glob("*.csv"))
  if not files:
    raise LightCurveError(f"{folder}: no *.csv light curves")
  stars, skipped = [], []
  for path in files:
    kind, _, star = path.stem.rpartition("_")
    try:
      if kind not in CATALINA_TYPES:
        raise ValueError(f"file name type {kind!r} not in {sorted(CATALINA_TYPES)}")
      with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
      curve = _curve(*([float(r[k]) for r in rows] for k in ("MJD", "Mag", "Magerr")))
    except (KeyError, ValueError) as e:
      skipped.append((path.name, f"{type(e).__name__}: {e}"))
      continue
    stars.append(Star(star, CATALINA_TYPES[kind], {"v": curve}))
  return stars, skipped


def asas_cesium(tarball, table):
  """ASAS V-band curves (`<id>.dat`: time,mag,err rows) labelled by `table` (filename,target)."""
  tarball, table = _need(tarball), _need(table)
  with open(table, newline="") as f:
    labels = {r["filename"]: r["target"] for r in csv.DictReader(f)}
  stars, skipped = [], []
  with tarfile.open(tarball) as tar:
    for member in sorted(tar.getmembers(), key=lambda m: m.name):
      if not member.isfile() or not member.name.endswith(".dat"):
        continue
      star = pathlib.PurePosixPath(member.name).stem
      try:
        label = ASAS_TYPES[labels[star]]
        text = tar.extractfile(member).read().decode("ascii")
        cols = np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2)
        if cols.shape[1] != 3:
          raise ValueError(f"expected 3 columns time,mag,err, got {cols.shape[1]}")
      except (KeyError, ValueError, UnicodeDecodeError) as e:
        skipped.append((star, f"{member.name}: {type(e).__name__}: {e}"))
        continue
      stars.append(Star(star, label, {"v": _curve(*cols.T)}))
  return stars, skipped


def macho_csv(path):
  """MACHO stars from one CSV of rows (see module table); bands r and b, flagged rows dropped."""
  path = _need(path)
  opener = gzip.open if path.suffix == ".gz" else open
  groups = {}
  with opener(path, "rt", newline="") as f:
    for r in csv.DictReader(f):
      star = f"{r['fieldid']}.{r['tileid']}.{r['seqn']}"
      groups.setdefault(star, []).append(r)
  stars, skipped = [], []
  for star, rows in groups.items():
    try:
      label = MACHO_TYPES[int(rows[0]["classification"])]
      t = np.array([float(r["dateobs"]) for r in rows])
      bands = {}
      for b in ("r", "b"):
        m = np.array([float(r[f"{b}mag"]) for r in rows])
        e = np.array([float(r[f"{b}err"]) for r in rows])
        keep = (e > 0) & (e < MACHO_MAX_ERR) & (m > -90)
        bands[b] = _curve(t[keep], m[keep], e[keep])
    except (KeyError, ValueError) as e:
      skipped.append((star, f"{path.name}: {type(e).__name__}: {e}"))
      continue
    stars.append(Star(star, label, bands))
  return stars, skipped
