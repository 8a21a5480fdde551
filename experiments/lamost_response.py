r"""What LAMOST's instrument response looks like, measured against HST CALSPEC stars.

LAMOST LRS fluxes are only relatively calibrated and its stars are reddened.  For every
real LAMOST A-M star, the smooth ratio of its spectrum to each CALSPEC star of the same
MK type (same letter, within one subtype; STIS data only) is a sample of "response x
reddening x type mismatch".  The same ratio between pairs of CALSPEC stars of matching
type measures the type-mismatch part alone.  The script fits each log ratio with Legendre
P_0..P_5 over the common grid (on 60-pixel block medians away from strong lines, sky and
telluric bands, with 3-sigma clipping), averages per LAMOST star, and writes:

- the mean and covariance of the P_1..P_5 coefficients, LAMOST/CALSPEC and
  CALSPEC/CALSPEC, and their difference (the response model of
  `astrotl.preprocess.degrade`, whose EMPIRICAL_MEAN / EMPIRICAL_COV are these numbers);
- the tilt ln(R(4000 A) / R(8500 A)) of each set and of the simulator's Legendre response;
- response.png (measured curves and draws).

  python experiments/lamost_response.py --workdir=experiments/results/lamost_response
"""

import json
import pathlib
import sys

from absl import app, flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import real_spectra  # noqa: E402  pylint: disable=g-import-not-at-top

from astrotl import io as aio  # noqa: E402
from astrotl.io import calspec  # noqa: E402
from astrotl.preprocess import degrade, simulate, spectra  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdir/lamost_response", "Output directory.")
flags.DEFINE_string("data_dir", None, "Shared data folder (default ../shared/data).")
flags.DEFINE_integer("degree", 5, "Legendre degree of the log ratio.")
flags.DEFINE_float("subtype_tolerance", 1.0, "Largest MK subtype difference of a match.")

BLOCK = 60  # pixels per block median (about 55 A at 4000 A)
LINES = (3835, 3890, 3934, 3969, 4102, 4341, 4862, 5175, 5893, 6564, 8500, 8544, 8664)
SKIP = ((6860, 6960), (7150, 7350), (7590, 7700), (8100, 8350), (8950, 9100))  # tellurics
FIT_FROM = 3800.0  # below, LAMOST's blue end is too noisy in red stars


def fit_mask(wave):
  ok = wave > FIT_FROM
  for line in LINES:
    ok &= np.abs(wave - line) > 30
  for lo, hi in SKIP:
    ok &= ~((wave > lo) & (wave < hi))
  return ok


def fit_log_ratio(ratio, good, x, ok, degree):
  """Legendre coefficients (P_0..P_degree) of ln(ratio) from clipped block medians."""
  g = good & ok & np.isfinite(ratio) & (ratio > 0)
  block = np.arange(ratio.size) // BLOCK
  xs, ys = [], []
  for b in np.unique(block[g]):
    s = g & (block == b)
    if s.sum() > BLOCK // 3:
      xs.append(x[s].mean())
      ys.append(np.median(np.log(ratio[s])))
  xs, ys = np.array(xs), np.array(ys)
  keep = np.ones(xs.size, bool)
  for _ in range(4):
    c = np.polynomial.legendre.legfit(xs[keep], ys[keep], degree)
    res = ys - np.polynomial.legendre.legval(xs, c)
    keep = np.abs(res) < 3 * 1.4826 * np.median(np.abs(res[keep])) + 1e-3
  return c


def same_type(a, b, tol):
  return a is not None and b is not None and a < 70 and b < 70 and \
      int(a // 10) == int(b // 10) and abs(a - b) <= tol


def coefficients(first, second, x, ok, degree, tol, pairs_within=False):
  """Per spectrum of `first`: mean P_1.. coefficients of ln(first / second) over its
  same-type matches in `second`.  Entries are (name, subtype number, flux, mask)."""
  out = []
  for i, (_, sa, fa, ma) in enumerate(first):
    cs = [fit_log_ratio(fa / np.where(fb > 0, fb, np.nan), ~ma & ~mb, x, ok, degree)[1:]
          for j, (_, sb, fb, mb) in enumerate(second)
          if (not pairs_within or j > i) and same_type(sa, sb, tol)]
    if cs:
      out.append(np.mean(cs, axis=0))
  return np.array(out)


def robust(c):
  """Rows within 5 MAD of the median in every coefficient (drops failed matches)."""
  med = np.median(c, axis=0)
  mad = 1.4826 * np.median(np.abs(c - med), axis=0)
  return c[np.all(np.abs(c - med) < 5 * mad, axis=1)]


def main(argv):
  del argv
  workdir = pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data = real_spectra.shared_data(FLAGS.data_dir)
  wave = spectra.wavelength_grid()
  x = np.linspace(-1.0, 1.0, wave.size)
  ok = fit_mask(wave)
  lamost, cal = [], []
  for row in real_spectra.lamost_files(data, "all"):
    s = aio.read(row["path"])
    sub = spectra.subtype_number(row["subclass"] or s.meta["subclass"] or "")
    f, _, m = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    lamost.append((row["file"], sub, f.astype(np.float64), m))
  for row in real_spectra.calspec_files(data):
    if row["group"] not in ("A", "FGK", "M_L_T") or "STIS" not in row["optical_data_3700_9000"]:
      continue
    s = calspec.read(row["path"])
    f, _, m = degrade.to_grid(s.wavelength, s.flux, s.ivar, s.mask, row["observed"])
    cal.append((row["object"], spectra.subtype_number(row["subtype"]), f.astype(np.float64), m))
  tol, deg = FLAGS.subtype_tolerance, FLAGS.degree
  lc = robust(coefficients(lamost, cal, x, ok, deg, tol))
  cc = robust(coefficients(cal, cal, x, ok, deg, tol, pairs_within=True))
  cov_l, cov_c = np.cov(lc.T), np.cov(cc.T)
  w, u = np.linalg.eigh(cov_l - cov_c)
  cov = (u * np.maximum(w, 0.0)) @ u.T  # nearest positive semi-definite
  mean = lc.mean(axis=0)

  rng = np.random.default_rng(0)
  basis = simulate.legendre_basis(wave.size, deg)
  sets = {"lamost_over_calspec": np.exp(lc @ basis.T),
          "calspec_over_calspec": np.exp(cc @ basis.T),
          "empirical_model_draws": np.exp(rng.multivariate_normal(mean, cov, 20000) @ basis.T),
          "simulator_sigma_0.1": simulate.legendre_response(rng, 20000, 0.1)}
  tilts = {}
  for k, curves in sets.items():
    t = real_spectra.tilt(curves, wave)
    tilts[k] = {"n": len(t), "mean": float(t.mean()), "std": float(t.std()),
                "percentiles_5_25_50_75_95": np.percentile(t, [5, 25, 50, 75, 95]).tolist()}
  results = {
      "command": f"python experiments/lamost_response.py --workdir={workdir}",
      "n_lamost_stars_matched": int(len(lc)), "n_calspec_templates": len(cal),
      "n_calspec_stars_matched": int(len(cc)), "degree": deg, "subtype_tolerance": tol,
      "lamost_over_calspec": {"mean": lc.mean(0).tolist(), "cov": cov_l.tolist()},
      "calspec_over_calspec": {"mean": cc.mean(0).tolist(), "cov": cov_c.tolist()},
      "empirical_response": {"mean": mean.round(4).tolist(), "cov": cov.round(5).tolist(),
                             "note": "cov = cov(LAMOST/CALSPEC) - cov(CALSPEC/CALSPEC), "
                                     "projected onto the positive semi-definite matrices"},
      "tilt_ln_R4000_over_R8500": tilts,
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=1))
  plot(workdir / "response.png", wave, sets, tilts)
  print(json.dumps({k: results[k] for k in ("n_lamost_stars_matched", "n_calspec_stars_matched",
                                            "empirical_response")}, indent=1))
  for k, t in tilts.items():
    print(f"{k}: tilt std {t['std']:.3f}, 5-95% {t['percentiles_5_25_50_75_95'][0]:+.2f} .. "
          f"{t['percentiles_5_25_50_75_95'][-1]:+.2f}")


def plot(path, wave, sets, tilts):
  fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
  titles = {"lamost_over_calspec": "LAMOST / CALSPEC, same type (per LAMOST star)",
            "calspec_over_calspec": "CALSPEC / CALSPEC, same type",
            "empirical_model_draws": "empirical model (degrade.response_curves): draws"}
  for ax, (key, title) in zip(axes, titles.items()):
    curves = sets[key][:150]
    for c in curves:
      ax.plot(wave, c, lw=0.4, alpha=0.35, color="k")
    sim = sets["simulator_sigma_0.1"][:3]
    if key == "empirical_model_draws":
      for c in sim:
        ax.plot(wave, c, lw=0.8, color="tab:orange")
    ax.set_title(f"{title}\nln R(4000)/R(8500): std {tilts[key]['std']:.2f}", fontsize=9)
    ax.set_xlabel("wavelength [A]")
    ax.set_yscale("log")
  axes[0].set_ylabel("smooth ratio (normalised)")
  axes[2].text(0.02, 0.02, f"orange: simulator sigma=0.1 (tilt std "
               f"{tilts['simulator_sigma_0.1']['std']:.2f})", transform=axes[2].transAxes,
               fontsize=8, color="tab:orange")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  app.run(main)
