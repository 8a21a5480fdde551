r"""MK subtypes and stellar parameters of real LAMOST stars with the Wang et al. (2021) 1D ResNet.

Data (`subtype_data`): the LAMOST LRS stars of <data_dir>/spectra/index.csv with an MK
subclass and the LAMOST DR10 A/F/G stars (with the DR10 pipeline's Teff, log g, [Fe/H]),
continuum-normalised and binned on the common grid; one star-grouped 7:1:2 split, stratified
by letter (separately for DR10 and index.csv stars).  Every ResNet trains on augmented
spectra: radial-velocity shifts and added noise down to S/N 10 (`subtype_data.Augmented`).

Studies (--only=, default all):
  kernels    ResNet kernel size 3/5/7/9 (Log-Cosh, clean labels); the chosen kernel also
             without augmentation
  loss       Log-Cosh vs MSE, clean and with 5% of training labels shifted by 5-10 subtypes
  baselines  k-nearest neighbours and gradient-boosted trees (scikit-learn) on the same split
  params     a 3-output ResNet for Teff, log g, [Fe/H] of the DR10 stars, against boosted
             trees and The Cannon; robust scatter and bias per label.  --bundle=PATH saves
             it as the `lamost_params` bundle
  transfer   the params network fine-tuned (new head) to subtypes of the index.csv eras with
             30, 100 and all their training labels, against training from scratch
  cam        Grad-CAM of test stars, per spectral letter, against the main lines
Subtype metrics are in subtypes, overall and per letter, on the test stars.

Writes results.json (after each study; with the command, times and seeds) and PNG plots
into --workdir.

  python experiments/spectral_subtype.py --workdir=workdir/spectral_subtype \
      --config=astrotl/configs/spectral_subtype.py [--only=params --bundle=lamost_params.npz]
"""

import json
import logging
import pathlib
import platform
import shlex
import shutil
import sys
import time

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=g-import-not-at-top
import real_spectra  # noqa: E402  pylint: disable=g-import-not-at-top
import stellar_params  # noqa: E402  pylint: disable=g-import-not-at-top
import subtype_data  # noqa: E402  pylint: disable=g-import-not-at-top

from astrotl import configs, explain, metrics, parallel, train  # noqa: E402
from astrotl.preprocess import spectra  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[1] / "astrotl/configs/spectral_subtype.py"),
    "Experiment config (path.py:arg).")
_WORKDIR = flags.DEFINE_string("workdir", "./workdir/spectral_subtype", "Output directory.")
STUDIES = ("kernels", "loss", "baselines", "params", "transfer", "cam")
_ONLY = flags.DEFINE_list("only", list(STUDIES), f"Studies to run, of {', '.join(STUDIES)}.")
_BUNDLE = flags.DEFINE_string("bundle", "", "With the params study: save its network (seed "
                              "seeds[0]) as the lamost_params bundle at this path (.npz).")


def subtype_scores(y, pred, letters) -> dict:
  """metrics.regression overall, and per spectral letter with its count."""
  out = metrics.regression(y, pred)
  out["by_letter"] = {l: {**metrics.regression(y[letters == l], pred[letters == l]),
                          "n": int(np.sum(letters == l))} for l in sorted(set(letters))}
  return out


def summarise(runs: list):
  """Mean, std and count over seeds of every (nested) metric."""
  if isinstance(runs[0], dict):
    return {k: summarise([r[k] for r in runs]) for k in runs[0]}
  return {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "n": len(runs)}


class Runner:
  """Trains one config on index sets; every run is logged in `runs` (name, seed, time)."""

  def __init__(self, config, data, workdir):
    self.c, self.d, self.workdir = config, data, pathlib.Path(workdir) / "runs"
    self.seconds = 0.0
    self.runs = []
    self.pretrained = {}  # seed -> variables of the params network (transfer reuses them)

  def fit(self, name, train_idx, val_idx, seed, y, y_val=None, pretrained=None, outputs=1,
          kernel_size=None, augment=None, **overrides):
    """y (and y_val, default y): targets of every star in network units."""
    y_val = y if y_val is None else y_val
    augment = self.c.augment.enabled if augment is None else augment
    cfg = train.merged_config(self.c.train)
    cfg.seed = seed
    cfg.model_config.kernel_size = kernel_size or self.c.kernel
    cfg.model_config.num_classes = outputs
    for key, value in overrides.items():
      setattr(cfg, key, value)
    workdir = self.workdir / name
    shutil.rmtree(workdir, ignore_errors=True)  # a rerun starts from scratch, never resumes
    rows = (subtype_data.Augmented(self.d, train_idx, y[train_idx], self.c, seed) if augment
            else {"x": self.d["x"][train_idx], "y": y[train_idx].astype(np.float32)})
    split_data = {"train": rows, "validation": {"x": self.d["x"][val_idx],
                                                "y": y_val[val_idx].astype(np.float32)}}
    result = train.fit(cfg, workdir, split_data, pretrained=pretrained)
    self.seconds += result.seconds
    self.runs.append({"name": name, "seed": seed, "steps": cfg.num_steps, "augment": augment,
                      "kernel": cfg.model_config.kernel_size, "loss": cfg.loss,
                      "train_stars": len(train_idx), "pretrained": pretrained is not None,
                      "best": result.best,
                      "seconds": result.seconds})
    logging.info("%s: best %s (%.0f s)", name, result.best, result.seconds)
    return train.build_model(cfg), result.best_variables, cfg

  def predict(self, model, variables, idx):
    out = train.predict(model, variables, self.d["x"][idx])
    return out.reshape(len(idx), -1)

  def subtype_y(self, subtype=None):
    return ((self.d["subtype"] if subtype is None else subtype) - self.c.label_offset).astype(
        np.float32)

  def score(self, model, variables, idx):
    pred = self.predict(model, variables, idx)[:, 0] + self.c.label_offset
    return subtype_scores(self.d["subtype"][idx], pred, self.d["letter"][idx]), pred

  def params_y(self, rows):
    """(standardised Teff, log g, [Fe/H] of every star, mean, std) over `rows`."""
    mean, std = stellar_params.standardise(self.d["params"], rows)
    return ((self.d["params"] - mean) / std).astype(np.float32), mean, std

  def fit_params(self, seed, tr, va):
    """The 3-output params network of `seed` (trained once, kept for transfer)."""
    ys, _, _ = self.params_y(tr)
    model, v, cfg = self.fit(f"params_seed{seed}", tr, va, seed, ys, outputs=3,
                             loss=self.c.params_loss)
    self.pretrained[seed] = v
    return model, v, cfg


# --- studies ---------------------------------------------------------------------------------

def kernel_study(c, runner, tr, va, te):
  kernels, keep = {}, {}
  y = runner.subtype_y()
  for k in c.kernels:
    runs = []
    for seed in c.seeds:
      model, v, _ = runner.fit(f"kernel{k}_seed{seed}", tr, va, seed, y, kernel_size=k)
      m, pred = runner.score(model, v, te)
      runs.append(m)
      if k == c.kernel and seed == c.seeds[0]:
        keep = {"model": model, "variables": v, "pred": pred, "metrics": m}
    kernels[str(k)] = {"per_seed": runs, "summary": summarise(runs)}
  out = {"kernels": kernels}
  if c.augment_ablation:
    runs = [runner.score(*runner.fit(f"kernel{c.kernel}_noaug_seed{seed}", tr, va, seed, y,
                                     augment=False)[:2], te)[0] for seed in c.seeds]
    out["no_augment"] = {"kernel": c.kernel, "per_seed": runs, "summary": summarise(runs)}
  return out, keep


def loss_study(c, d, runner, tr, va, te, kernels):
  loss = {}
  clean = runner.subtype_y()
  for name in ("logcosh", "mse"):
    for noisy in (False, True):
      runs = []
      for seed in c.seeds:
        if name == "logcosh" and not noisy and kernels and str(c.kernel) in kernels:
          runs.append(kernels[str(c.kernel)]["per_seed"][c.seeds.index(seed)])
          continue
        y = clean
        if noisy:
          sub = d["subtype"].copy()
          sub[tr], _ = subtype_data.with_label_noise(d["subtype"][tr], c.noise_fraction,
                                                     c.noise_shift, seed)
          y = runner.subtype_y(sub)
        model, v, _ = runner.fit(f"{name}_{'noisy' if noisy else 'clean'}_seed{seed}", tr, va,
                                 seed, y, y_val=clean, loss=name)
        runs.append(runner.score(model, v, te)[0])
      loss[f"{name}_{'noisy' if noisy else 'clean'}"] = {"per_seed": runs,
                                                          "summary": summarise(runs)}
  return loss


def baselines(c, d, tr, te) -> dict:
  from sklearn.ensemble import HistGradientBoostingRegressor  # pylint: disable=g-import-not-at-top
  from sklearn.neighbors import KNeighborsRegressor  # pylint: disable=g-import-not-at-top
  out = {}
  x, y, letters = d["x"], d["subtype"], d["letter"][te]
  with stellar_params.one_thread():
    knn = KNeighborsRegressor(c.knn_k, weights="distance").fit(x[tr], y[tr])
    out[f"knn_{c.knn_k}"] = subtype_scores(y[te], knn.predict(x[te]), letters)
    # 8-pixel means: trees on 1954 binned pixels spend their splits on noise.
    xb = x[:, :x.shape[1] // 8 * 8].reshape(len(x), -1, 8).mean(-1)
    gbt = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=0)
    out["gradient_boosted_trees"] = subtype_scores(
        y[te], gbt.fit(xb[tr], y[tr]).predict(xb[te]), letters)
    # How well the labels themselves follow physics: the subclass of the DR10 stars from
    # the DR10 pipeline's own Teff, log g, [Fe/H] (no spectrum), on the same split.  LAMOST
    # subclasses come from a coarse template grid, so this is a floor no spectrum model
    # needs to beat, but it says how far below ~1 subtype an MAE can meaningfully go.
    ptr, pte = (i[np.isfinite(d["params"][i]).all(1)] for i in (tr, te))
    from_params = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=0)
    out["subclass_from_dr10_parameters"] = subtype_scores(
        y[pte], from_params.fit(d["params"][ptr], y[ptr]).predict(d["params"][pte]),
        d["letter"][pte])
    # the spectrum trees on those same stars, to compare like with like
    out["gradient_boosted_trees_dr10_stars"] = subtype_scores(
        y[pte], gbt.predict(xb[pte]), d["letter"][pte])
  return out


def params_study(c, d, runner, tr, va, te, root, bundle_path, command):
  dr10 = d["era"] == "dr10"
  ptr, pva, pte = (i[dr10[i]] for i in (tr, va, te))
  _, mean, std = runner.params_y(ptr)
  y = d["params"]
  out = {"stars": [len(ptr), len(pva), len(pte)], "labels": list(subtype_data.PARAMS),
         "units": list(subtype_data.UNITS), "train_mean": mean.tolist(),
         "train_std": std.tolist(), "test_files": d["file"][pte].tolist()}
  runs, first = [], None
  for seed in c.seeds:
    model, v, cfg = runner.fit_params(seed, ptr, pva)
    pred = runner.predict(model, v, pte) * std + mean
    runs.append(stellar_params.scores(y[pte], pred))
    first = first or (v, cfg, pred)
  out["resnet"] = {"per_seed": runs, "summary": summarise(runs)}
  with stellar_params.one_thread():
    try:
      out["boosted_trees"] = stellar_params.scores(
          y[pte], stellar_params.boosted_trees(d["x"], y, ptr, pte))
    except ImportError as e:
      out["boosted_trees"] = {"skipped": f"scikit-learn not installed ({e})"}
    pred, details = stellar_params.the_cannon(d, ptr, pte)
  out["cannon"] = {**stellar_params.scores(y[pte], pred), "details": details}
  if bundle_path:
    v, cfg, pred = first
    about = {"trained_by": "experiments/spectral_subtype.py, params study", "command": command,
             "training_data": f"{len(ptr)} LAMOST DR10 A/F/G stars (spectra/lamost_dr10_afg), "
                              f"validation {len(pva)}, test {len(pte)}, split by designation",
             "labels": "LAMOST DR10 stellar pipeline Teff, log g, [Fe/H]",
             "seed": c.seeds[0], "steps": cfg.num_steps, "augment": c.augment.to_dict(),
             "evaluation": {"test": runs[0], "metric": "scatter = 1.4826 MAD, bias = median "
                                                        "of predicted - DR10"}}
    model = stellar_params.make_bundle(v, cfg.model_config.to_dict(), c, mean, std, about)
    path = model.save(bundle_path)
    files = [root / "spectra" / f for f in d["file"][pte][:16]]
    out["bundle"] = {"path": str(path), **stellar_params.check_bundle(path, files, pred[:16])}
  return out


def transfer_study(c, d, runner, tr, va, te):
  """Subtypes of the index.csv eras from the params network with a new head vs from scratch."""
  target = np.isin(d["era"], list(c.transfer_eras))
  dr10 = d["era"] == "dr10"
  ttr, tva, tte = (i[target[i]] for i in (tr, va, te))
  ptr, pva = (i[dr10[i]] for i in (tr, va))
  sizes = sorted({min(s or len(ttr), len(ttr)) for s in c.transfer_sizes})
  y = runner.subtype_y()
  out = {"eras": list(c.transfer_eras), "stars": [len(ttr), len(tva), len(tte)],
         "pretrain_stars": [len(ptr), len(pva)], "sizes": sizes, "steps": c.transfer_steps,
         "scratch": {}, "finetune": {}}
  for seed in c.transfer_seeds:
    pre = runner.pretrained.get(seed)
    if pre is None:
      pre = runner.fit_params(seed, ptr, pva)[1]
    order = np.random.default_rng([seed, 11]).permutation(len(ttr))
    for size in sizes:
      sub = ttr[np.sort(order[:size])]
      for method, p in (("scratch", None), ("finetune", pre)):
        model, v, _ = runner.fit(f"{method}_n{size}_seed{seed}", sub, tva, seed, y, pretrained=p,
                                 num_steps=c.transfer_steps)
        out[method].setdefault(str(size), []).append(runner.score(model, v, tte)[0])
  for method in ("scratch", "finetune"):
    out[method] = {s: {"summary": summarise(r), "per_seed": r} for s, r in out[method].items()}
  return out


def cam_study(c, d, keep, tr, te, workdir):
  # A regression map with the plain sign only shows what pushes the prediction to later
  # types; for stars predicted earlier than the training mean the evidence is what pulls
  # it down, so each star is explained in the direction it moved from the mean.
  wave = spectra.binned(spectra.wavelength_grid(), c.bin)
  xs, letters = d["x"][te], d["letter"][te]
  centre = float(np.mean(d["subtype"][tr]))
  signs = np.where(keep["pred"] < centre, -1.0, 1.0)
  model, v = keep["model"], keep["variables"]
  cams = explain.cam(model, v, xs, sign=signs)
  plot_mean_cams(workdir / "cam_mean.png", wave, cams, letters)
  by_letter = lambda m: {l: explain.line_contrast(wave, m[letters == l])
                         for l in sorted(set(letters))}
  out = {"training_mean_subtype": centre, "line_contrast_by_letter": by_letter(cams),
         "line_contrast_later": by_letter(explain.cam(model, v, xs)),
         "line_contrast_earlier": by_letter(explain.cam(model, v, xs, sign=-1)), "examples": {}}
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
    out["examples"][letter] = {"file": str(d["file"][j]), "subclass": str(d["subclass"][j]),
                               "predicted": float(keep["pred"][i]), "png": path.name,
                               "line_contrast": explain.line_contrast(wave, cams[i])}
  return out


# --- plots -----------------------------------------------------------------------------------

def plot_pred_vs_true(path, y, pred, era, title):
  coef = np.polyfit(y, pred, 2)
  fig, ax = plt.subplots(figsize=(5.2, 5))
  for e, colour in (("dr10", "tab:purple"), ("dr8", "tab:blue"), ("pilot", "tab:orange"),
                    ("other", "tab:green")):
    m = era == e
    if m.any():
      ax.scatter(y[m], pred[m], s=10, alpha=0.6, color=colour, label=e)
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


def plot_transfer(path, table, sizes, eras):
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for method, colour in (("scratch", "tab:gray"), ("finetune", "tab:red")):
    m = [table[method][str(n)]["summary"]["mae"]["mean"] for n in sizes]
    s = [table[method][str(n)]["summary"]["mae"]["std"] for n in sizes]
    ax.errorbar(sizes, m, yerr=s, marker="o", capsize=3, color=colour, label=method)
  ax.set_xlabel(f"{'/'.join(eras)} training stars")
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


# --- main ------------------------------------------------------------------------------------

def counts(values) -> dict:
  return {str(v): int(np.sum(values == v)) for v in sorted(set(values))}


def main(argv):
  del argv
  c = _CONFIG.value
  studies = [s.strip() for s in _ONLY.value if s.strip()]
  unknown = sorted(set(studies) - set(STUDIES))
  if unknown:
    raise app.UsageError(f"--only: unknown studies {unknown}; known: {', '.join(STUDIES)}")
  if _BUNDLE.value and "params" not in studies:
    raise app.UsageError("--bundle needs the params study (--only=...,params)")
  if "cam" in studies and "kernels" not in studies:
    raise app.UsageError("the cam study maps the kernels study's model: add kernels to --only")
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  # Runs of one architecture compile the same programs (scratch and fine-tuned alike).
  parallel.enable_compilation_cache()
  t0 = time.time()
  command = shlex.join([pathlib.Path(sys.executable).name] + sys.argv)
  try:
    root = real_spectra.shared_data(c.data_dir or None)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from None
  d = subtype_data.load_stars(root, c)
  tr, va, te = subtype_data.split(d["group"], subtype_data.strata(d), c.split, seed=0)
  res = {"run": {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "host": platform.node(), "studies": studies,
                 "seeds": {"split": 0, "runs": list(c.seeds), "transfer": list(c.transfer_seeds),
                           "augment": "(run seed, batch) per training run"}},
         "data": {"root": str(root), "stars": len(d["subtype"]), "letters": counts(d["letter"]),
                  "eras": counts(d["era"]), "skipped": d["skipped"],
                  "split_sizes": [len(tr), len(va), len(te)],
                  "test_letters": counts(d["letter"][te]), "test_files": d["file"][te].tolist()},
         "config": c.to_dict()}
  runner = Runner(c, d, workdir)
  seconds = {"load": time.time() - t0}

  def save(study):
    seconds[study] = time.time() - t0 - sum(seconds.values())
    res["runs"] = runner.runs
    res["seconds"] = {"training": runner.seconds, "total": time.time() - t0, **seconds}
    res["run"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (workdir / "results.json").write_text(json.dumps(res, indent=1, default=common.json_default))

  keep = None
  if "kernels" in studies:
    out, keep = kernel_study(c, runner, tr, va, te)
    res.update(out)
    res["pred_vs_true_quadratic"] = plot_pred_vs_true(
        workdir / "pred_vs_true.png", d["subtype"][te], keep["pred"], d["era"][te],
        f"resnet1d k={c.kernel}, test set ({len(te)} stars): MAE {keep['metrics']['mae']:.2f}")
    save("kernels")
  if "loss" in studies:
    res["loss"] = loss_study(c, d, runner, tr, va, te, res.get("kernels"))
    save("loss")
  if "baselines" in studies:
    try:
      res["baselines"] = baselines(c, d, tr, te)
    except ImportError as e:
      res["baselines"] = {"skipped": f"scikit-learn not installed ({e})"}
    save("baselines")
  if "params" in studies:
    res["params"] = params_study(c, d, runner, tr, va, te, root, _BUNDLE.value, command)
    save("params")
  if "transfer" in studies:
    res["transfer"] = transfer_study(c, d, runner, tr, va, te)
    plot_transfer(workdir / "transfer.png", res["transfer"], res["transfer"]["sizes"],
                  c.transfer_eras)
    save("transfer")
  if "cam" in studies:
    res["cam"] = cam_study(c, d, keep, tr, te, workdir)
    save("cam")
  logging.info("wrote %s in %.0f s", workdir / "results.json", time.time() - t0)


if __name__ == "__main__":
  configs.run(main)  # --config=NAME finds the packaged config
