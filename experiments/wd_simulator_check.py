r"""Checks the DA simulator against the one real white dwarf we have (SDSS BOSS 4455-55539-0692).

1. Read the SDSS spectrum and resample it to the common (LAMOST) grid.
2. Fit Teff and log g roughly: chi-square of the line-normalised H-beta..H-epsilon profiles
   over a Teff x log g grid of models (then a radial-velocity step, then the grid again).
3. Simulate DAs at the fitted parameters at LAMOST resolution, with the SDSS ivar as the
   noise template and the SDSS S/N, and measure equivalent widths and FWHM of H-beta,
   H-gamma, H-delta on the real spectrum, the noise-free model and the noisy simulations.
4. Write results.json and comparison.png into --workdir.

  python experiments/wd_simulator_check.py --spectrum=PATH/spec-4455-55539-0692.fits.gz
"""

import json
import os
import pathlib

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from astrotl.io import sdss
from astrotl.preprocess import simulate
from astrotl.preprocess import spectra

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "./workdir/wd_simulator_check", "Output directory.")
flags.DEFINE_string("spectrum", None, "SDSS spec file; default: the shared-data copy "
                    "($ASTROTL_SHARED_DATA or ../shared/data beside the checkout).")
flags.DEFINE_integer("n_sim", 200, "Noisy simulations at the fitted parameters.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_float("sdss_resolution", 2000.0, "Resolving power used to fit the SDSS spectrum "
                   "(BOSS wdisp gives R = 1700-2250 between H-delta and H-beta).")

SDSS_FILE = "spectra/sdss_boss/spec-4455-55539-0692.fits.gz"
# Vacuum centres and half-widths (A) of the fitted windows; the half-widths keep
# neighbouring lines out of each other's window.
LINES = {"Hbeta": (4862.68, 150.0), "Hgamma": (4341.69, 110.0),
         "Hdelta": (4102.89, 65.0), "Hepsilon": (3971.20, 40.0)}
MEASURED = ("Hbeta", "Hgamma", "Hdelta")
EDGE = 10.0  # A at each end of a window that define its straight-line continuum


def default_spectrum():
  repo = pathlib.Path(__file__).resolve().parents[1]
  roots = [os.environ.get("ASTROTL_SHARED_DATA"), repo.parent / "shared" / "data"]
  for root in roots:
    if root and (pathlib.Path(root) / SDSS_FILE).exists():
      return pathlib.Path(root) / SDSS_FILE
  raise app.UsageError(f"cannot find {SDSS_FILE}; pass --spectrum=PATH")


def line_normalise(wave, flux, centre, half):
  """Flux / the straight line through the mean flux of the window's two end strips.

  Works on (..., npix) rows; returns (window mask, normalised flux, continuum), the
  last two over the window only.
  """
  win = np.abs(wave - centre) <= half
  lo = win & (wave <= centre - half + EDGE)
  hi = win & (wave >= centre + half - EDGE)
  f_lo, f_hi = flux[..., lo].mean(-1), flux[..., hi].mean(-1)
  w_lo, w_hi = wave[lo].mean(), wave[hi].mean()
  slope = (f_hi - f_lo) / (w_hi - w_lo)
  cont = f_lo[..., None] + slope[..., None] * (wave[win] - w_lo)
  return win, flux[..., win] / cont, cont


def line_chi2(wave, flux, ivar, mask, models):
  """Chi-square of line-normalised profiles, summed over LINES, one value per model row."""
  chi2 = np.zeros(models.shape[0])
  for centre, half in LINES.values():
    win, obs, cont = line_normalise(wave, flux, centre, half)
    _, mod, _ = line_normalise(wave, models, centre, half)
    good = ~mask[win] & (ivar[win] > 0)
    # The observed continuum divides the noise too.
    inv_sig = np.sqrt(ivar[win][good]) * cont[good]
    chi2 += np.sum(((obs[good] - mod[:, good]) * inv_sig) ** 2, axis=-1)
  return chi2


def fit_parameters(sim, wave, flux, ivar, mask, teffs, loggs, rv=0.0):
  """Chi-square over the grid; returns (chi2 (nlogg, nteff), best teff, best logg)."""
  tt, gg = np.meshgrid(teffs, loggs)
  chi2 = line_chi2(wave, flux, ivar, mask, sim.model(tt.ravel(), gg.ravel(), rv))
  chi2 = chi2.reshape(tt.shape)
  k = np.unravel_index(np.argmin(chi2), chi2.shape)
  return chi2, float(teffs[k[1]]), float(loggs[k[0]])


def fit_rv(sim, wave, flux, ivar, mask, teff, logg, rvs):
  models = sim.model(np.full(rvs.size, teff), np.full(rvs.size, logg), rvs)
  chi2 = line_chi2(wave, flux, ivar, mask, models)
  return float(rvs[np.argmin(chi2)]), chi2


def measure_line(wave, flux, centre, half):
  """Equivalent width (A) and FWHM (A) of one absorption line, for one or many rows."""
  win, norm, _ = line_normalise(wave, flux, centre, half)
  w = wave[win]
  depth = 1.0 - norm
  ew = np.trapezoid(depth, w, axis=-1)
  # Smooth (5-pixel boxcar) before locating the core so noise spikes do not set the depth.
  kernel = np.ones(5) / 5
  smooth = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), -1,
                               np.atleast_2d(depth))
  core = np.abs(w - centre) < 15
  fwhm = []
  for row in smooth:
    i0 = np.flatnonzero(core)[np.argmax(row[core])]
    half_depth = row[i0] / 2
    left = i0
    while left > 0 and row[left] > half_depth:
      left -= 1
    right = i0
    while right < row.size - 1 and row[right] > half_depth:
      right += 1
    wl = np.interp(half_depth, [row[left], row[left + 1]], [w[left], w[left + 1]])
    wr = np.interp(half_depth, [row[right], row[right - 1]], [w[right], w[right - 1]])
    fwhm.append(wr - wl)
  return ew, np.array(fwhm).reshape(np.shape(ew))


def measure_all(wave, flux):
  out = {}
  for name in MEASURED:
    centre, half = LINES[name]
    ew, fwhm = measure_line(wave, flux, centre, half)
    out[name] = (ew, fwhm)
  return out


def main(argv):
  del argv
  workdir = pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = pathlib.Path(FLAGS.spectrum) if FLAGS.spectrum else default_spectrum()
  spec = sdss.read(path)
  flux, ivar, mask = spectra.resample(np.log10(spec.wavelength), spec.flux, spec.ivar,
                                      spec.mask)
  flux, ivar = flux.astype(np.float64), ivar.astype(np.float64)
  wave = spectra.wavelength_grid()
  snr_g = float(np.median((flux * np.sqrt(ivar))[(wave >= 4000) & (wave <= 5500) & ~mask]))

  fit_sim = simulate.Simulator(resolution=FLAGS.sdss_resolution)
  teffs = np.exp(np.linspace(np.log(6000), np.log(90000), 140))
  loggs = np.round(np.arange(7.0, 9.0001, 0.05), 2)
  chi2, teff, logg = fit_parameters(fit_sim, wave, flux, ivar, mask, teffs, loggs)
  rv, _ = fit_rv(fit_sim, wave, flux, ivar, mask, teff, logg, np.arange(-150.0, 150.1, 5.0))
  chi2, teff, logg = fit_parameters(fit_sim, wave, flux, ivar, mask, teffs, loggs, rv)
  dof = sum(int((np.abs(wave - c) <= h).sum()) for c, h in LINES.values()) - 3
  # Balmer lines peak near 13000 K, so equal strengths occur on a hot and a cool branch;
  # the best fit on the other branch shows how well the profiles tell them apart.
  other = teffs < 11000 if teff >= 13000 else teffs > 15000
  k = np.unravel_index(np.argmin(np.where(other[None, :], chi2, np.inf)), chi2.shape)
  other_fit = {"teff": float(teffs[k[1]]), "logg": float(loggs[k[0]]),
               "delta_chi2": float(chi2[k] - chi2.min())}

  lamost_sim = simulate.Simulator()
  rng = np.random.default_rng(FLAGS.seed)
  sims = lamost_sim.batch(np.full(FLAGS.n_sim, teff), logg, snr_g, rng, rv=rv,
                          ivar_template=np.where(mask, 0.0, ivar), flux_level=np.median(flux))
  model_fit = fit_sim.model(teff, logg, rv)
  model_lamost = lamost_sim.model(teff, logg, rv)

  real = measure_all(wave, flux)
  clean_fit = measure_all(wave, model_fit)
  clean_lamost = measure_all(wave, model_lamost)
  noisy = measure_all(wave, sims["flux"].astype(np.float64))
  lines = {}
  for name in MEASURED:
    lines[name] = {
        "centre_vac_A": LINES[name][0],
        "real": {"ew_A": float(real[name][0]), "fwhm_A": float(real[name][1])},
        "model_R_sdss": {"ew_A": float(clean_fit[name][0]), "fwhm_A": float(clean_fit[name][1])},
        "model_R_lamost": {"ew_A": float(clean_lamost[name][0]),
                           "fwhm_A": float(clean_lamost[name][1])},
        "simulated_noisy_R_lamost": {
            "ew_A_mean": float(noisy[name][0].mean()), "ew_A_std": float(noisy[name][0].std()),
            "fwhm_A_mean": float(noisy[name][1].mean()),
            "fwhm_A_std": float(noisy[name][1].std())},
    }
  sim_snr = float(np.median(np.median(
      np.where(sims["mask"], np.nan, sims["flux"] * np.sqrt(sims["ivar"]))[
          :, (wave >= 4000) & (wave <= 5500)], axis=-1)))
  results = {
      "spectrum": {"file": spec.meta["file"], "obsid": spec.meta["obsid"],
                   "class": spec.meta["class"], "subclass": spec.meta["subclass"],
                   "snr_g_pipeline": spec.meta["snr_g"], "snr_g_measured": snr_g},
      "fit": {"teff": teff, "logg": logg, "rv_kms": rv, "chi2": float(chi2.min()),
              "dof": dof, "resolution": FLAGS.sdss_resolution,
              "teff_grid": [float(teffs[0]), float(teffs[-1]), teffs.size],
              "logg_grid": [float(loggs[0]), float(loggs[-1]), loggs.size],
              "best_on_other_branch": other_fit,
              "windows_A": {k: [c - h, c + h] for k, (c, h) in LINES.items()}},
      "simulation": {"n": FLAGS.n_sim, "seed": FLAGS.seed, "resolution": simulate.LAMOST_R,
                     "requested_snr": snr_g, "median_flux_times_sqrt_ivar": sim_snr,
                     "noise_template": "SDSS ivar resampled to the grid"},
      "lines": lines,
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=2))
  plot(workdir / "comparison.png", wave, flux, mask, model_fit, sims, results, chi2,
       teffs, loggs)
  print(json.dumps({k: v for k, v in results["fit"].items() if k != "windows_A"}))
  print(f"simulated S/N: requested {snr_g:.1f}, median flux*sqrt(ivar) {sim_snr:.1f}")
  for name, r in lines.items():
    s = r["simulated_noisy_R_lamost"]
    print(f"{name}: EW real {r['real']['ew_A']:.1f} model {r['model_R_sdss']['ew_A']:.1f} "
          f"sim {s['ew_A_mean']:.1f}+-{s['ew_A_std']:.1f} A | FWHM real "
          f"{r['real']['fwhm_A']:.1f} model {r['model_R_sdss']['fwhm_A']:.1f} "
          f"sim {s['fwhm_A_mean']:.1f}+-{s['fwhm_A_std']:.1f} A")


def plot(path, wave, flux, mask, model, sims, results, chi2, teffs, loggs):
  fig = plt.figure(figsize=(13, 9))
  grid = fig.add_gridspec(2, 3)
  ax = fig.add_subplot(grid[0, :])
  good = ~mask
  # The model times a smooth (Legendre order 3, in log) correction: how far apart the
  # SDSS calibration and the model's SED are -- the kind of tilt the response models.
  x = np.linspace(-1, 1, wave.size)
  basis = np.polynomial.legendre.legvander(x, 3)
  ratio = np.log(np.clip(flux, 1e-3 * np.median(flux), None) / model)
  coef, *_ = np.linalg.lstsq(basis[good], ratio[good], rcond=None)
  tilt = np.exp(basis @ coef)
  ax.plot(wave[good], flux[good], lw=0.5, color="k", label="SDSS 4455-55539-0692 (real)")
  sim_good = ~sims["mask"][0]
  ax.plot(wave[sim_good], sims["flux"][0][sim_good], lw=0.5, color="tab:orange", alpha=0.7,
          label="simulated (LAMOST R, same S/N, random response)")
  ax.plot(wave, model * tilt, lw=1.2, color="tab:blue", label="model x smooth tilt")
  f = results["fit"]
  ax.set_title(f"Fit: Teff = {f['teff']:.0f} K, log g = {f['logg']:.2f}, rv = {f['rv_kms']:.0f} "
               f"km/s  (chi2/dof = {f['chi2'] / f['dof']:.2f})")
  ax.set_xlabel("vacuum wavelength [A]")
  ax.set_ylabel("flux [1e-17 erg/s/cm2/A]")
  ax.legend(loc="upper right", fontsize=8)

  ax = fig.add_subplot(grid[1, :2])
  for k, (name, (centre, half)) in enumerate(LINES.items()):
    win, obs, _ = line_normalise(wave, flux, centre, half)
    _, mod, _ = line_normalise(wave, model, centre, half)
    _, sim, _ = line_normalise(wave, sims["flux"][0].astype(np.float64), centre, half)
    dv = (wave[win] - centre)
    off = 0.6 * k
    ax.plot(dv, obs + off, color="k", lw=0.8, label="real" if k == 0 else None)
    ax.plot(dv, sim + off, color="tab:orange", lw=0.6, alpha=0.8,
            label="simulated" if k == 0 else None)
    ax.plot(dv, mod + off, color="tab:blue", lw=1.2, label="model" if k == 0 else None)
    ax.text(-148, 1.02 + off, name, fontsize=9)
  ax.set_xlabel("wavelength - line centre [A]")
  ax.set_ylabel("line-normalised flux + offset")
  ax.set_xlim(-155, 155)
  ax.legend(loc="lower right", fontsize=8)

  ax = fig.add_subplot(grid[1, 2])
  near = (teffs > 0.6 * f["teff"]) & (teffs < 1.6 * f["teff"])
  dchi = chi2[:, near] - chi2.min()
  im = ax.pcolormesh(teffs[near] / 1e3, loggs, np.minimum(dchi, 500), shading="auto",
                     cmap="magma")
  ax.contour(teffs[near] / 1e3, loggs, dchi, levels=[2.3, 11.8, 100], colors="w",
             linewidths=0.8)
  ax.plot(f["teff"] / 1e3, f["logg"], "c+", ms=12)
  ax.set_xlabel("Teff [kK]")
  ax.set_ylabel("log g")
  ax.set_title("delta chi2 (contours 2.3, 11.8, 100)", fontsize=9)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  app.run(main)
