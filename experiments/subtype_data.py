"""The labelled LAMOST stars of the subtype and stellar-parameter studies, their splits and
the training-time augmentation (`spectral_subtype.py` uses all of it).

Stars: every LAMOST LRS star of <data_dir>/spectra/index.csv with an MK subclass (pilot/DR1,
DR2-era, DR6/7, DR8 and DR13 files; no stellar parameters) and the LAMOST DR10 A/F/G stars
of spectra/lamost_dr10_afg (`real_spectra.lamost_dr10_files`: MK subclass plus the DR10
pipeline's Teff, log g and [Fe/H]).  Each is kept on the common grid as it was observed
(flux, ivar, mask), for the augmentation, and as the network sees it (`x`, with the inverse
variance of each binned pixel in `x_ivar`, for The Cannon).
"""

import csv
import pathlib

from absl import logging
import numpy as np

from astrotl.io import lamost
from astrotl.preprocess import degrade, simulate, spectra

import real_spectra  # experiments/ is on sys.path: the script's own folder

ERAS = {"lamost_dr8v1_image_format": "dr8", "lamost_dr1_pilot_B6212": "pilot",
        real_spectra.DR10: "dr10"}
PARAMS = ("teff", "logg", "feh")
UNITS = ("K", "dex", "dex")


def input_spec(c) -> dict:
  """The network input (`spectra.network_input`), also written into the shipped bundle."""
  return {"type": "spectrum", "normalise": "continuum", "clip": [float(v) for v in c.clip],
          "bin": int(c.bin)}


def _rows(root: pathlib.Path):
  """(index row, path, designation or None, [teff, logg, feh] or None) of every file."""
  with open(root / "spectra" / "index.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    yield row, root / "spectra" / row["file"], None, None
  for row in real_spectra.lamost_dr10_files(root):
    params = [row[k] for k in PARAMS]
    yield row, row["path"], row["designation"], params


def load_stars(root: pathlib.Path, c) -> dict:
  """Every LAMOST LRS star with an MK subtype (see the module docstring), as arrays."""
  out = {k: [] for k in ("flux", "ivar", "mask", "subtype", "letter", "era", "group", "snr",
                         "file", "subclass", "params")}
  skipped = []
  for row, path, designation, params in _rows(root):
    if row.get("survey", "LAMOST-LRS") != "LAMOST-LRS":
      skipped.append((row["file"], f"survey {row['survey']}"))
      continue
    s = lamost.read(path)
    subtype = spectra.subtype_number(s.meta["subclass"] or "")
    if subtype is None or (s.meta["class"] or "").upper() != "STAR":
      skipped.append((row["file"], f"class {s.meta['class']} subclass {s.meta['subclass']}"))
      continue
    flux, ivar, mask = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    for key, value in (("flux", flux), ("ivar", ivar), ("mask", mask)):
      out[key].append(value)
    out["subtype"].append(subtype)
    out["letter"].append(spectra.spectral_letter(s.meta["subclass"]))
    out["era"].append(ERAS.get(row["file"].split("/")[0], "other"))
    # Repeat visits share a designation; grouping keeps them in one split.
    out["group"].append(designation or s.meta["designation"] or row["file"])
    out["snr"].append(s.meta["snr_g"] or 0.0)
    out["file"].append(row["file"])
    out["subclass"].append(s.meta["subclass"])
    out["params"].append(params if params is not None else [np.nan] * len(PARAMS))
  d = {k: np.asarray(v) for k, v in out.items()}
  d["params"] = d["params"].astype(np.float64)
  d["x"], d["x_ivar"] = network_arrays(d["flux"], d["ivar"], d["mask"], c)
  d["skipped"] = skipped
  logging.info("%d stars (%d with DR10 parameters); skipped %d files", len(d["subtype"]),
               int(np.sum(d["era"] == "dr10")), len(skipped))
  return d


def network_arrays(flux, ivar, mask, c):
  """(x, x_ivar): the network input of spectra on the common grid, and the inverse
  variance of each of its binned pixels (0 where any pixel of the bin is bad or clipped)."""
  x = spectra.network_input(flux, ivar, mask, input_spec(c))
  norm, nivar = spectra.continuum_normalise(flux, ivar, mask)
  nivar = np.where((norm <= c.clip[0]) | (norm >= c.clip[1]), 0.0, nivar)
  return x, binned_ivar(nivar, c.bin)


def binned_ivar(ivar, size: int) -> np.ndarray:
  """Inverse variance of `spectra.binned` means: size^2 / sum(1 / ivar), 0 where a pixel
  of the bin has ivar 0."""
  ivar = np.asarray(ivar, np.float64)
  if size <= 1:
    return ivar.astype(np.float32)
  n = ivar.shape[-1] // size * size
  v = ivar[..., :n].reshape(ivar.shape[:-1] + (-1, size))
  bad = ~(v > 0)
  var = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, v)).sum(-1)
  return np.where(bad.any(-1), 0.0, size ** 2 / np.where(bad.any(-1), 1.0, var)).astype(
      np.float32)


def split(groups, strata, fractions, seed) -> list:
  """Index arrays per fraction: whole groups, shuffled within each stratum (a group's
  stratum is its first member's)."""
  rng = np.random.default_rng(seed)
  parts = [[] for _ in fractions]
  edges = np.cumsum(fractions) / np.sum(fractions)
  first = {}
  for g, s in zip(groups, strata):
    first.setdefault(g, s)
  for stratum in sorted(set(first.values())):
    gs = sorted(g for g, s in first.items() if s == stratum)
    gs = [gs[i] for i in rng.permutation(len(gs))]
    cut = np.round(edges * len(gs)).astype(int)
    for i, (lo, hi) in enumerate(zip(np.r_[0, cut[:-1]], cut)):
      parts[i].extend(gs[lo:hi])
  index = {g: i for i, part in enumerate(parts) for g in part}
  which = np.array([index[g] for g in groups])
  return [np.flatnonzero(which == i) for i in range(len(fractions))]


def strata(d) -> np.ndarray:
  """Split strata: the letter, separately for the DR10 stars and the index.csv ones, so
  the stellar-parameter (DR10) and transfer (index.csv) studies get 7:1:2 parts too."""
  return np.array([f"{l}/{'dr10' if e == 'dr10' else 'index'}"
                   for l, e in zip(d["letter"], d["era"])])


def with_label_noise(y, fraction, shift, seed):
  """A copy of y with `fraction` of it moved by +-shift[0]..shift[1] subtypes (kept in 0..69)."""
  rng = np.random.default_rng([seed, 7])
  y = y.copy()
  idx = rng.choice(len(y), int(round(fraction * len(y))), replace=False)
  delta = rng.integers(shift[0], shift[1] + 1, len(idx)) * rng.choice([-1, 1], len(idx))
  y[idx] = np.clip(y[idx] + delta, 0, 69)
  return y, idx


class Augmented:
  """Training rows drawn afresh each time `train.fit` takes a batch: each spectrum shifted
  by a radial velocity uniform in +-rv km/s (resampled on the log-wavelength grid), and a
  fraction of them degraded with noise of their own ivar shape (`degrade.degrade`) to an
  S/N log-uniform between snr_min and their own; then made network input as in `load_stars`.

  Draws are seeded by (seed, how many batches were taken), so a fresh run is repeatable.
  """

  def __init__(self, d, rows, y, c, seed):
    self.flux, self.ivar, self.mask = d["flux"][rows], d["ivar"][rows], d["mask"][rows]
    self.y = np.asarray(y, np.float32)
    self.c, self.seed, self.draws = c, seed, 0
    self.u = np.arange(self.flux.shape[-1], dtype=np.float64)

  def __len__(self):
    return len(self.y)

  def take(self, idx) -> dict:
    a = self.c.augment
    rng = np.random.default_rng([self.seed, 23, self.draws])
    self.draws += 1
    n = len(idx)
    shift = np.log10(1.0 + rng.uniform(-a.rv, a.rv, n) / simulate.C_KMS) / spectra.DLOGLAM
    f, v, m = spectra.resample_pixels(self.u[None] + shift[:, None], self.flux[idx],
                                      self.ivar[idx], self.mask[idx])
    own = spectra.snr(f, v, m)
    lo = np.log(a.snr_min)
    target = np.exp(rng.uniform(lo, np.log(np.maximum(own, a.snr_min))))
    noisy = rng.random(n) < a.noise_fraction
    f, v, m, _ = degrade.degrade(f, v, m, np.where(noisy, target, np.inf), rng)
    x = spectra.network_input(f, v, m, input_spec(self.c))
    return {"x": x, "y": self.y[idx]}
