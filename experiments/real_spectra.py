"""Shared by the real-spectrum experiments: which files there are, their labels and objects.

- CALSPEC (`spectra/real_wd_validation/calspec_hst`): one row of its index.csv per file,
  with the observed wavelength ranges parsed from `optical_data_3700_9000` (segments that
  are models, e.g. wd0308_565 above 8000 A, are left out, so they end up masked).
- SDSS QSOs and galaxies (`real_wd_validation/sdss_qso_galaxies`) and the SDSS BOSS white
  dwarf (`sdss_boss`); files of one object (within 3") share its name.
- LAMOST LRS stars (`spectra/index.csv`), restricted to a split of the lamost_lrs `mirror`
  dataset (the split wd_search.py trains and tests on) or to a list of files; with split
  "all" or a list, also the LAMOST DR10 A/F/G stars of `spectra/lamost_dr10_afg`.
"""

import csv
import os
import pathlib
import re

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CALSPEC = "spectra/real_wd_validation/calspec_hst"
SDSS_OTHERS = "spectra/real_wd_validation/sdss_qso_galaxies"
SDSS_WD = "spectra/sdss_boss/spec-4455-55539-0692.fits.gz"
DR10 = "lamost_dr10_afg"  # real LAMOST DR10 A/F/G stars with their own index.csv
SDSS_R = 2000.0  # BOSS wdisp gives R = 1700-2250 (experiments/wd_simulator_check.py)

# Objects no white-dwarf model is ever trained on (wd_search.py leaves them out of every
# fold and of the shipped model), so that tests/test_wd_real.py checks the shipped model on
# objects it has never seen: a textbook DA, an sdB, and a LAMOST G star.
RESERVED = ("grw_70d5824", "hz44", "lamost_dr1_pilot_B6212/spec-55862-B6212_sp06-093.fits.gz")


def shared_data(path=None) -> pathlib.Path:
  """--data_dir, else $ASTROTL_SHARED_DATA, else ../shared/data beside the checkout."""
  for p in (path, os.environ.get("ASTROTL_SHARED_DATA"), REPO.parent / "shared" / "data"):
    if p and (pathlib.Path(p) / "spectra").is_dir():
      return pathlib.Path(p)
  raise FileNotFoundError("shared data not found: pass --data_dir or set ASTROTL_SHARED_DATA")


def observed_ranges(text: str):
  """'1160-8000 STIS; 8000-319927 Koester: He LTE model' -> [(1160.0, 8000.0)]."""
  out = []
  for part in (text or "").split(";"):
    m = re.match(r"\s*([\d.]+)-([\d.]+)\s*(.*)", part)
    if m and "model" not in m.group(3).lower():
      out.append((float(m.group(1)), float(m.group(2))))
  return out


def calspec_files(data_dir, need=(4000.0, 5500.0)) -> list:
  """CALSPEC rows (dicts) whose observed ranges cover `need` (the S/N band), plus `path`,
  `observed` and `object`.  Left out: files whose index gives no source for their optical
  data (bd_33d2642_fos_003, hz44_stis_plus_50000k_ext: second files of objects that have a
  sourced one), NICMOS-only files (from 7930 A) and the L/T dwarfs (from 5290 A)."""
  root = pathlib.Path(data_dir) / CALSPEC
  rows = []
  with open(root / "index.csv", newline="") as f:
    for row in csv.DictReader(f):
      ranges = observed_ranges(row["optical_data_3700_9000"])
      if not _covers(ranges, *need):
        continue
      row.update(path=root / "calspec" / row["file"], observed=ranges, object=row["object_prefix"])
      rows.append(row)
  return rows


def _covers(ranges, lo, hi):
  """Whether the union of (low, high) ranges covers [lo, hi]."""
  for a, b in sorted(ranges):
    if a > lo:
      return False
    lo = max(lo, b)
    if lo >= hi:
      return True
  return False


def sdss_files(data_dir) -> list:
  """SDSS files as dicts: path, object, group (QSO, GALAXY or WD), subtype."""
  from astrotl.io import sdss
  data_dir = pathlib.Path(data_dir)
  paths = sorted((data_dir / SDSS_OTHERS).glob("spec-*.fits*"))
  if (data_dir / SDSS_WD).exists():
    paths.append(data_dir / SDSS_WD)
  rows, seen = [], []  # seen: (ra, dec, name)
  for path in paths:
    meta = sdss.read(path).meta
    group = (meta["class"] or "").upper()
    subtype = meta["subclass"] or ""
    if group == "STAR" and subtype.startswith("WD"):
      group, subtype = "WD", "DA"  # WDhotter; fitted as a DA by wd_simulator_check.py
    name = re.sub(r"\.fits(\.gz)?$", "", path.name)
    for ra, dec, other in seen:
      if _sep_arcsec(ra, dec, meta["ra"], meta["dec"]) < 3.0:
        name = other
        break
    else:
      seen.append((meta["ra"], meta["dec"], name))
    rows.append({"path": path, "file": path.name, "object": name, "group": group,
                 "subtype": subtype, "z": meta["z"]})
  return rows


def _sep_arcsec(ra1, dec1, ra2, dec2):
  from astropy.coordinates import SkyCoord
  return SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).arcsec


def lamost_files(data_dir, split="test", files=None) -> list:
  """LAMOST LRS files as dicts: path, file (relative to spectra/), object (= file),
  class, subclass, split.  `files`: a text/CSV file listing the files to keep (a column
  named file/filename/path, else the first column; matched by base name); otherwise
  `split` ("train", "validation", "test" of the lamost_lrs mirror dataset, or "all")."""
  from astrotl.datasets.lamost_lrs import lamost_lrs_dataset_builder as lrs
  root = pathlib.Path(data_dir) / "spectra"
  keep = None if files is None else {_base(f) for f in read_file_list(files)}
  out = []
  for s in lrs.mirror_sources(root):
    name = os.path.basename(s.path)
    if name.startswith("med-") or "sdss_boss" in s.key:
      continue
    which = lrs.split_of(s.split_key)
    if keep is not None and _base(name) not in keep:
      continue
    if keep is None and split != "all" and which != split:
      continue
    out.append({"path": pathlib.Path(s.path), "file": s.key, "object": s.key,
                "class": s.labels.get("class"), "subclass": s.labels.get("subclass"),
                "split": which})
  for row in lamost_dr10_files(data_dir):
    if (keep is not None and _base(row["path"].name) in keep) or (keep is None and split == "all"):
      out.append(row)
  if keep is not None and len(out) < len(keep):
    found = {_base(r["path"].name) for r in out}
    raise FileNotFoundError(f"{files}: {len(keep - found)} listed files are not LAMOST files "
                            f"under {root}, e.g. {sorted(keep - found)[:3]}")
  return out


def lamost_dr10_files(data_dir) -> list:
  """The LAMOST DR10 A/F/G stars (spectra/lamost_dr10_afg, outside the lamost_lrs mirror's
  catalog) as `lamost_files` rows (split "dr10"), with designation, Teff, log g and [Fe/H]
  of the DR10 stellar pipeline.  Empty when the folder is not there."""
  root = pathlib.Path(data_dir) / "spectra" / DR10
  if not (root / "index.csv").exists():
    return []
  out = []
  with open(root / "index.csv", newline="") as f:
    for r in csv.DictReader(f):
      key = f"{DR10}/{r['file']}"
      out.append({"path": root / r["file"], "file": key, "object": key, "class": r["class"],
                  "subclass": r["subclass"], "split": "dr10", "designation": r["designation"],
                  **{k: float(r[k]) if r[k] else float("nan") for k in ("teff", "logg", "feh")}})
  return out


def _base(name):
  return os.path.basename(str(name).strip()).removesuffix(".gz")


def read_file_list(path) -> list:
  """File names from a text file (one a line, # comments) or a CSV with a header naming a
  file/filename/path column."""
  with open(path, newline="") as f:
    lines = [ln for ln in f.read().splitlines() if ln.strip() and not ln.startswith("#")]
  if not lines:
    return []
  head = [c.strip().lower() for c in next(csv.reader([lines[0]]))]
  col = next((head.index(k) for k in ("file", "filename", "path") if k in head), None)
  if col is None:
    return [next(csv.reader([ln]))[0] for ln in lines]
  return [row[col] for row in csv.reader(lines[1:]) if row]


def tilt(curves, wave, blue=4000.0, red=8500.0):
  """ln(curve(blue) / curve(red)) for response curves (n, npix)."""
  ib, ir = np.argmin(np.abs(wave - blue)), np.argmin(np.abs(wave - red))
  return np.log(curves[:, ib]) - np.log(curves[:, ir])
