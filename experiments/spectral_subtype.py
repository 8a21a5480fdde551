r"""MK subtype regression on real LAMOST stars with the Wang et al. (2021) 1D ResNet.

Studies, all on the same star-grouped, letter-stratified 7:1:2 splits:
  kernels    ResNet kernel size 3/5/7/9 (Log-Cosh, clean labels), every era together
  loss       Log-Cosh vs MSE, clean and with 5% of training labels shifted by 5-10 subtypes
  baselines  k-nearest neighbours and gradient-boosted trees (scikit-learn) on the same split
  transfer   pretrain on the DR8 v1 files, fine-tune on the pilot/DR1 files (pipeline v2.6.4
             vs v2.9.8: a domain shift) versus training from scratch, over training-set sizes
  cam        Grad-CAM of test stars, per spectral letter, against the main lines

Inputs: every LAMOST LRS star in <data_dir>/spectra/index.csv with an MK subclass, read with
astrotl.io.lamost, resampled to the common grid and continuum-normalised.
Writes results.json and PNG plots into --workdir.

  python experiments/spectral_subtype.py --workdir=workdir/spectral_subtype \
      --config=astrotl/configs/spectral_subtype.py
"""

import csv
import json
import logging
import os
import pathlib
import shutil
import time

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags
import numpy as np

from astrotl import configs, explain, metrics, train
from astrotl.io import lamost
from astrotl.preprocess import spectra

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[1] / "astrotl/configs/spectral_subtype.py"),
    "Experiment config (path.py:arg).")
_WORKDIR = flags.DEFINE_string("workdir", "./workdir/spectral_subtype", "Output directory.")

ERAS = {"lamost_dr8v1_image_format": "dr8", "lamost_dr1_pilot_B6212": "pilot"}


def data_root(configured: str) -> pathlib.Path:
  repo = pathlib.Path(__file__).resolve().parents[1]
  for root in (configured, os.environ.get("ASTROTL_SHARED_DATA"), repo.parent / "shared" / "data"):
    if root and (pathlib.Path(root) / "spectra" / "index.csv").exists():
      return pathlib.Path(root)
  raise app.UsageError("no spectra/index.csv found: set --config.data_dir=DIR or "
                       "$ASTROTL_SHARED_DATA to the shared data root")


def load_stars(root: pathlib.Path, clip, bin_size: int) -> dict:
  """Every LAMOST LRS star with an MK subtype: continuum-normalised, binned, on the common grid."""
  rows = list(csv.DictReader(open(root / "spectra" / "index.csv")))
  out = {k: [] for k in ("x", "subtype", "letter", "era", "group", "snr", "file", "subclass")}
  skipped = []
  for row in rows:
    if row["survey"] != "LAMOST-LRS":
      skipped.append((row["file"], f"survey {row['survey']}"))
      continue
    s = lamost.read(root / "spectra" / row["file"])
    subtype = spectra.subtype_number(s.meta["subclass"] or "")
    if subtype is None or (s.meta["class"] or "").upper() != "STAR":
      skipped.append((row["file"], f"class {s.meta['class']} subclass {s.meta['subclass']}"))
      continue
    flux, ivar, mask = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    norm, _ = spectra.continuum_normalise(flux, ivar, mask)
    out["x"].append(spectra.binned(np.clip(norm, *clip), bin_size))
    out["subtype"].append(subtype)
    out["letter"].append(spectra.spectral_letter(s.meta["subclass"]))
    out["era"].append(ERAS.get(row["file"].split("/")[0], "other"))
    # Repeat visits share a designation; grouping keeps them in one split.
    out["group"].append(s.meta["designation"] or row["file"])
    out["snr"].append(s.meta["snr_g"] or 0.0)
    out["file"].append(row["file"])
    out["subclass"].append(s.meta["subclass"])
  data = {k: np.asarray(v) for k, v in out.items()}
  data["x"] = data["x"].astype(np.float32)
  data["skipped"] = skipped
  return data


def split(groups, letters, fractions, seed) -> list:
  """Index arrays per fraction: whole groups, shuffled within each spectral letter."""
  rng = np.random.default_rng(seed)
  parts = [[] for _ in fractions]
  edges = np.cumsum(fractions) / np.sum(fractions)
  first_letter = {}
  for g, l in zip(groups, letters):
    first_letter.setdefault(g, l)
  for letter in sorted(set(first_letter.values())):
    gs = sorted(g for g, l in first_letter.items() if l == letter)
    gs = [gs[i] for i in rng.permutation(len(gs))]
    cut = np.round(edges * len(gs)).astype(int)
    for i, (lo, hi) in enumerate(zip(np.r_[0, cut[:-1]], cut)):
      parts[i].extend(gs[lo:hi])
  index = {g: i for i, part in enumerate(parts) for g in part}
  which = np.array([index[g] for g in groups])
  return [np.flatnonzero(which == i) for i in range(len(fractions))]


def with_label_noise(y, fraction, shift, seed):
  """A copy of y with `fraction` of it moved by +-shift[0]..shift[1] subtypes (kept in 0..69)."""
  rng = np.random.default_rng([seed, 7])
  y = y.copy()
  idx = rng.choice(len(y), int(round(fraction * len(y))), replace=False)
  delta = rng.integers(shift[0], shift[1] + 1, len(idx)) * rng.choice([-1, 1], len(idx))
  y[idx] = np.clip(y[idx] + delta, 0, 69)
  return y, idx


class Runner:
  """Trains one config on index sets and scores it on the test set, in subtype units."""

  def __init__(self, config, data, workdir):
    self.c, self.d, self.workdir = config, data, pathlib.Path(workdir) / "runs"
    self.seconds = 0.0

  def fit(self, name, train_idx, val_idx, seed, y=None, pretrained=None, **overrides):
    y = self.d["subtype"] if y is None else y
    off = self.c.label_offset
    cfg = train.merged_config(self.c.train)
    cfg.seed = seed
    for key, value in overrides.items():
      if key == "kernel_size":
        cfg.model_config.kernel_size = value
      else:
        setattr(cfg, key, value)
    workdir = self.workdir / name
    shutil.rmtree(workdir, ignore_errors=True)  # a rerun starts from scratch, never resumes
    split_data = {
        "train": {"x": self.d["x"][train_idx], "y": (y[train_idx] - off).astype(np.float32)},
        "validation": {"x": self.d["x"][val_idx],
                       "y": (self.d["subtype"][val_idx] - off).astype(np.float32)}}
    result = train.fit(cfg, workdir, split_data, pretrained=pretrained)
    self.seconds += result.seconds
    logging.info("%s: best %s (%.0f s)", name, result.best, result.seconds)
    return train.build_model(cfg), result.best_variables

  def predict(self, model, variables, idx):
    out = train.predict(model, variables, self.d["x"][idx])
    return out.reshape(len(idx), -1)[:, 0] + self.c.label_offset

  def score(self, model, variables, idx):
    pred = self.predict(model, variables, idx)
    return metrics.regression(self.d["subtype"][idx], pred), pred


def summarise(runs: list) -> dict:
  """Mean and std over seeds of every metric."""
  keys = runs[0].keys()
  return {k: {"mean": float(np.mean([r[k] for r in runs])),
              "std": float(np.std([r[k] for r in runs])), "n": len(runs)} for k in keys}


def baselines(c, d, tr, te) -> dict:
  from sklearn.ensemble import HistGradientBoostingRegressor  # pylint: disable=g-import-not-at-top
  from sklearn.neighbors import KNeighborsRegressor  # pylint: disable=g-import-not-at-top
  out = {}
  x, y = d["x"], d["subtype"]
  knn = KNeighborsRegressor(c.knn_k, weights="distance").fit(x[tr], y[tr])
  out[f"knn_{c.knn_k}"] = metrics.regression(y[te], knn.predict(x[te]))
  # 8-pixel means: trees on 3909 raw pixels spend their splits on noise.
  xb = x[:, :x.shape[1] // 8 * 8].reshape(len(x), -1, 8).mean(-1)
  gbt = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=0)
  out["gradient_boosted_trees"] = metrics.regression(y[te], gbt.fit(xb[tr], y[tr]).predict(xb[te]))
  return out


def plot_pred_vs_true(path, y, pred, era, title):
  coef = np.polyfit(y, pred, 2)
  fig, ax = plt.subplots(figsize=(5.2, 5))
  for e, colour in (("dr8", "tab:blue"), ("pilot", "tab:orange"), ("other", "tab:green")):
    m = era == e
    if m.any():
      ax.scatter(y[m], pred[m], s=12, alpha=0.7, color=colour, label=e)
  grid = np.linspace(y.min(), y.max(), 100)
  ax.plot(grid, grid, "k--", lw=0.8, label="y = x")
  ax.plot(grid, np.polyval(coef, grid), "r-", lw=1.2,
          label=f"quadratic fit {coef[0]:.4f}x$^2$ + {coef[1]:.2f}x + {coef[2]:.1f}")
  ticks = [20, 30, 40, 50, 60]
  for a in (ax.set_xticks, ax.set_yticks):
    a(ticks)
  ax.set_xticklabels(["A0", "F0", "G0", "K0", "M0"])
  ax.set_yticklabels(["A0", "F0", "G0", "K0", "M0"])
  ax.set_xlabel("LAMOST subclass")
  ax.set_ylabel("predicted")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return coef.tolist()


def plot_transfer(path, table, sizes):
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for method, colour in (("scratch", "tab:gray"), ("finetune", "tab:red")):
    m = [table[method][str(n)]["mae"]["mean"] for n in sizes]
    s = [table[method][str(n)]["mae"]["std"] for n in sizes]
    ax.errorbar(sizes, m, yerr=s, marker="o", capsize=3, color=colour, label=method)
  ax.set_xlabel("pilot/DR1 training stars")
  ax.set_ylabel("test MAE (subtypes)")
  ax.legend()
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def plot_mean_cams(path, wave, cams, letters):
  fig, ax = plt.subplots(figsize=(11, 3.5))
  for letter in sorted(set(letters)):
    ax.plot(wave, cams[letters == letter].mean(0), lw=0.8,
            label=f"{letter} ({np.sum(letters == letter)})")
  for name, w in explain.LINES.items():
    ax.axvline(w, color="k", lw=0.4, ls=":")
    ax.text(w, 1.02, name, fontsize=6, ha="center", transform=ax.get_xaxis_transform())
  ax.set_xlabel("wavelength (Angstrom)")
  ax.set_ylabel("mean Grad-CAM (away from the mean type)")
  ax.legend(fontsize=7, ncol=5)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def main(argv):
  del argv
  c = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  root = data_root(c.data_dir)
  d = load_stars(root, c.clip, c.bin)
  n = len(d["subtype"])
  logging.info("%d stars; skipped %s", n, d["skipped"])
  runner = Runner(c, d, workdir)
  tr, va, te = split(d["group"], d["letter"], c.split, seed=0)
  res = {"data": {"root_index": "spectra/index.csv", "stars": n,
                  "letters": {l: int(np.sum(d["letter"] == l)) for l in sorted(set(d["letter"]))},
                  "eras": {e: int(np.sum(d["era"] == e)) for e in sorted(set(d["era"]))},
                  "skipped": d["skipped"], "split_sizes": [len(tr), len(va), len(te)],
                  "test_files": d["file"][te].tolist()},
         "config": c.to_dict()}

  # --- kernel sizes -------------------------------------------------------------------
  kernels, keep = {}, {}
  for k in c.kernels:
    runs = []
    for seed in c.seeds:
      model, v = runner.fit(f"kernel{k}_seed{seed}", tr, va, seed, kernel_size=k)
      m, pred = runner.score(model, v, te)
      runs.append(m)
      if k == c.kernel and seed == c.seeds[0]:
        keep = {"model": model, "variables": v, "pred": pred, "metrics": m}
    kernels[str(k)] = {"per_seed": runs, "summary": summarise(runs)}
  res["kernels"] = kernels
  res["pred_vs_true_quadratic"] = plot_pred_vs_true(
      workdir / "pred_vs_true.png", d["subtype"][te], keep["pred"], d["era"][te],
      f"resnet1d k={c.kernel}, test set ({len(te)} stars): MAE {keep['metrics']['mae']:.2f}")

  # --- loss under label noise -------------------------------------------------------------
  loss = {}
  for name in ("logcosh", "mse"):
    for noisy in (False, True):
      runs = []
      for seed in c.seeds:
        y = d["subtype"]
        if noisy:
          ytr, _ = with_label_noise(d["subtype"][tr], c.noise_fraction, c.noise_shift, seed)
          y = d["subtype"].copy()
          y[tr] = ytr
        if name == "logcosh" and not noisy:
          runs.append(kernels[str(c.kernel)]["per_seed"][c.seeds.index(seed)])
          continue
        model, v = runner.fit(f"{name}_{'noisy' if noisy else 'clean'}_seed{seed}", tr, va,
                              seed, y=y, loss=name, kernel_size=c.kernel)
        runs.append(runner.score(model, v, te)[0])
      loss[f"{name}_{'noisy' if noisy else 'clean'}"] = {"per_seed": runs,
                                                          "summary": summarise(runs)}
  res["loss"] = loss

  # --- baselines -----------------------------------------------------------------------------
  try:
    res["baselines"] = baselines(c, d, tr, te)
  except ImportError as e:
    res["baselines"] = {"skipped": f"scikit-learn not installed ({e})"}

  # --- transfer across pipeline eras --------------------------------------------------------
  dr8 = np.flatnonzero(d["era"] == "dr8")
  pilot = np.flatnonzero(d["era"] == "pilot")
  ptr, pva, pte = (pilot[i] for i in split(d["group"][pilot], d["letter"][pilot], c.split, 0))
  dtr, dva = (dr8[i] for i in split(d["group"][dr8], d["letter"][dr8], (0.9, 0.1), 0))
  sizes = [s or len(ptr) for s in c.transfer_sizes]
  transfer = {"pilot_split_sizes": [len(ptr), len(pva), len(pte)],
              "dr8_pretrain_sizes": [len(dtr), len(dva)], "scratch": {}, "finetune": {},
              "pretrained_only": {}}
  for seed in c.transfer_seeds:
    pmodel, pre = runner.fit(f"pretrain_dr8_seed{seed}", dtr, dva, seed, kernel_size=c.kernel)
    transfer["pretrained_only"][str(seed)] = runner.score(pmodel, pre, pte)[0]
    order = np.random.default_rng([seed, 11]).permutation(len(ptr))
    for size in sizes:
      sub = ptr[np.sort(order[:size])]
      for method, p in (("scratch", None), ("finetune", pre)):
        model, v = runner.fit(f"{method}_n{size}_seed{seed}", sub, pva, seed, pretrained=p,
                              kernel_size=c.kernel)
        transfer[method].setdefault(str(size), []).append(runner.score(model, v, pte)[0])
  for method in ("scratch", "finetune"):
    transfer[method] = {s: {**summarise(r), "per_seed": r} for s, r in transfer[method].items()}
  transfer["pretrained_only"]["summary"] = summarise(list(transfer["pretrained_only"].values()))
  res["transfer"] = transfer
  plot_transfer(workdir / "transfer.png", transfer, sizes)

  # --- class-activation maps --------------------------------------------------------------------
  # A regression map with the plain sign only shows what pushes the prediction to later
  # types; for stars predicted earlier than the training mean the evidence is what pulls
  # it down, so each star is explained in the direction it moved from the mean.
  wave = spectra.binned(spectra.wavelength_grid(), c.bin)
  xs, letters = d["x"][te], d["letter"][te]
  centre = float(np.mean(d["subtype"][tr]))
  signs = np.where(keep["pred"] < centre, -1.0, 1.0)
  cams = explain.cam(keep["model"], keep["variables"], xs, sign=signs)
  plot_mean_cams(workdir / "cam_mean.png", wave, cams, letters)
  by_letter = lambda m: {l: explain.line_contrast(wave, m[letters == l])
                         for l in sorted(set(letters))}
  res["cam"] = {"training_mean_subtype": centre,
                "line_contrast_by_letter": by_letter(cams),
                "line_contrast_later": by_letter(explain.cam(keep["model"], keep["variables"], xs)),
                "line_contrast_earlier": by_letter(
                    explain.cam(keep["model"], keep["variables"], xs, sign=-1)),
                "examples": {}}
  for letter in c.cam_examples:
    idx = np.flatnonzero(letters == letter)
    if not idx.size:
      continue
    i = idx[np.argmax(d["snr"][te][idx])]
    j = te[i]
    path = workdir / f"cam_{letter}.png"
    explain.plot_cam(wave, d["x"][j], cams[i], path,
                     title=f"{d['file'][j]}  {d['subclass'][j]} (true {d['subtype'][j]:.0f}, "
                     f"predicted {keep['pred'][i]:.1f}), SNR_g {d['snr'][j]:.0f}; map: what "
                     f"moves it {'earlier' if signs[i] < 0 else 'later'} than {centre:.1f}")
    res["cam"]["examples"][letter] = {"file": str(d["file"][j]), "subclass": str(d["subclass"][j]),
                                      "predicted": float(keep["pred"][i]), "png": path.name,
                                      "line_contrast": explain.line_contrast(wave, cams[i])}

  res["seconds"] = {"training": runner.seconds, "total": time.time() - t0}
  (workdir / "results.json").write_text(json.dumps(res, indent=1))
  logging.info("wrote %s in %.0f s", workdir / "results.json", time.time() - t0)


if __name__ == "__main__":
  configs.run(main)  # --config=NAME finds the packaged config
