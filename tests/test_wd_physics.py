"""Physics checks of the shipped white-dwarf model: it must decide on the lines.

Each test builds its spectra with the project's own degradation (`astrotl.preprocess.degrade`:
the measured LAMOST response, noise of real LAMOST ivar shapes) and scores them exactly as
the scan does (`wd_real_check.score`: the bundle's jit function and its own rule).
experiments/wd_real_check.py measures the same checks in full, cross-validated.
"""

import pathlib
import sys

import numpy as np
import pytest

from astrotl import io as aio
from astrotl.io import batch as io_batch
from astrotl.io import calspec
from astrotl.preprocess import degrade, simulate, spectra

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import real_spectra  # noqa: E402  pylint: disable=g-import-not-at-top
import wd_real_check  # noqa: E402  pylint: disable=g-import-not-at-top

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "astrotl" / "data" / "spectra"
DA = "grw_70d5824"  # the reserved DA: no white-dwarf model ever trained on it
assert DA in real_spectra.RESERVED
BATCH = 64  # one compilation for every test here
DRAWS = 8
WAVE = spectra.wavelength_grid()


def _lamost_stars():
  """Real LAMOST stars of the package's own sample (class STAR, A-M)."""
  out = []
  for path in sorted(SAMPLE.glob("lamost_*/spec-*.fits.gz")):
    raw, meta = io_batch.decode(path)
    if (meta.get("class") or "").upper() == "STAR":
      out.append((path.name, raw))
  return out


@pytest.fixture(scope="module")
def templates():
  """LAMOST ivar shapes on the grid, from the package's sample stars."""
  out = []
  for path in sorted(SAMPLE.glob("lamost_*/spec-*.fits.gz"))[:12]:
    s = aio.read(path)
    _, v, m = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    out.append(np.where(m, 0.0, v))
  return np.stack(out)


def _candidates(flux, ivar, mask, u=None):
  return wd_real_check.score(None, flux, ivar, mask, u, batch_size=BATCH)["candidate"]


def _lamost_like(models, snr, templates, seed, ivar=None, mask=None):
  """`DRAWS` LAMOST-like draws of each model spectrum (n, npix) at S/N `snr`."""
  rng = np.random.default_rng(seed)
  models = np.repeat(np.atleast_2d(models), DRAWS, axis=0)
  tmpl = templates[rng.integers(0, len(templates), len(models))]
  if ivar is not None:
    ivar, mask = np.repeat(ivar[None], len(models), 0), np.repeat(mask[None], len(models), 0)
  return degrade.lamost_like(None, models, rng, np.full(len(models), snr), tmpl, mask=mask,
                             ivar=ivar)


def test_a_spike_adds_no_candidate():
  """One narrow spike, 5-20x the continuum, anywhere in the network's pixels, on every
  real star of the sample: no more candidates than without it."""
  rng = np.random.default_rng(0)
  stars = _lamost_stars()
  assert len(stars) >= 20
  clean, spiked = [], []
  for _, raw in stars:
    inside = np.flatnonzero((raw["u"] < spectra.TAN_NPIX) & ~raw["mask"])
    level = np.median(np.abs(raw["flux"][inside]))
    for _ in range(3):
      f = raw["flux"].astype(np.float64).copy()
      w = int(rng.integers(1, 4))
      at = inside[rng.integers(0, inside.size - w)]
      f[at:at + w] += rng.uniform(5.0, 20.0) * level
      spiked.append((raw["u"], f, raw["ivar"], raw["mask"]))
    clean.append((raw["u"], raw["flux"], raw["ivar"], raw["mask"]))
  stack = lambda rows, j: np.stack([r[j] for r in rows])
  n_clean = int(_candidates(stack(clean, 1), stack(clean, 2), stack(clean, 3),
                            stack(clean, 0)).sum())
  n_spiked = int(_candidates(stack(spiked, 1), stack(spiked, 2), stack(spiked, 3),
                             stack(spiked, 0)).sum())
  assert n_spiked <= 3 * n_clean, (n_spiked, n_clean)


@pytest.mark.parametrize("snr", [10.0, 20.0, 40.0])
def test_featureless_continua_are_not_white_dwarfs(templates, snr):
  """Blackbodies of 12,000-40,000 K and flat or power-law continua: <= 5% candidates."""
  models = np.concatenate([
      simulate.blackbody(np.array([12000.0, 15000, 20000, 25000, 30000, 40000]), WAVE),
      degrade.tilt(WAVE, np.array([-3.0, -2, -1, 0, 1]))])
  flux, ivar, mask = _lamost_like(models, snr, templates, seed=int(snr))
  assert np.mean(_candidates(flux, ivar, mask)) <= 0.05


def _grw(shared_data):
  row = next(r for r in real_spectra.calspec_files(shared_data) if r["object"] == DA)
  s = calspec.read(row["path"])
  return degrade.to_grid(s.wavelength, s.flux, s.ivar, s.mask, row["observed"])


def test_a_da_without_its_balmer_lines_is_not_a_white_dwarf(shared_data, templates):
  """GRW+70 5824 with every Balmer line cut out (flux interpolated across each line):
  <= 20% candidates at S/N 10-40."""
  f, v, m = _grw(shared_data)
  cut = degrade.cut_lines(WAVE, f)
  hits = [_candidates(*_lamost_like(cut, snr, templates, int(snr), v, m))
          for snr in (10.0, 20.0, 40.0)]
  assert np.mean(np.concatenate(hits)) <= 0.2


@pytest.mark.parametrize("alpha", [-1.5, 1.5])
def test_a_tilted_da_stays_a_white_dwarf(shared_data, templates, alpha):
  """GRW+70 5824 times lambda^alpha (a bad flux calibration, reddening): >= 90% of the
  candidates it gives untilted stay candidates, at S/N 20 and 40."""
  f, v, m = _grw(shared_data)
  curve = degrade.tilt(WAVE, alpha)
  plain = [_candidates(*_lamost_like(f, snr, templates, int(snr), v, m)) for snr in (20.0, 40.0)]
  tilted = [_candidates(*_lamost_like(f * curve, snr, templates, int(snr), v / curve ** 2, m))
            for snr in (20.0, 40.0)]
  plain, tilted = np.mean(np.concatenate(plain)), np.mean(np.concatenate(tilted))
  assert plain >= 0.75 and tilted >= 0.9 * plain, (plain, tilted)
