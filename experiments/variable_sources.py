"""Variable sources (Kim et al. 2021): transfer the published UPSILoN-T network (trained
on OGLE + EROS-2) to other surveys, versus the same MLP trained from scratch.

  python experiments/variable_sources.py --config=astrotl/configs/variable_sources.py \\
      --workdir=workdir/variable_sources

Data: the variable_stars TFDS dataset, built into --workdir/tfds from --manual_dir (the
shared `lightcurves/` folder; EROS-1 has no licence, so it is read from there, never
copied into the package).  Inputs are the 16 UPSILoN features stored in the dataset.

For each target (dataset, band):
- zero-shot floor: UPSILoN-T as published, its 21 classes mapped onto the target's
  (config.superclasses); "strict" counts a prediction of an unmapped class as wrong,
  "restricted" takes the best mapped superclass (summed probabilities).  Scored with
  UPSILoN-T's preprocessing and with statistics re-fitted on the target.
- transfer: head (head/dense, head/bn) re-initialised for the target classes, then
  fine-tune all / head only / Zoobot n_blocks, and scratch (random init), on stratified
  subsets of the train split (config.fractions, at least one star per class) for every
  seed.  Preprocessing statistics are re-fitted on the target (config.preprocess_from:
  `train_split` = all training light curves, labels unused; `labelled` = the labelled
  subset only; `upsilont` = keep UPSILoN-T's).  Fixed step count, final weights, scored
  on the test split (the validation split is not used, so no model selection).

Writes results.json, learning_curve.png and confusion_<target>.png into --workdir.
"""

import json
import pathlib
import sys
import time

from absl import flags, logging
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=g-import-not-at-top

from astrotl import configs, losses, metrics, models, train  # noqa: E402
from astrotl.datasets import as_numpy, variable_stars  # noqa: E402
from astrotl.io import weights  # noqa: E402
from astrotl.preprocess import features as F  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "astrotl/configs/variable_sources.py[:arg]")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/variable_sources", "Outputs go here.")
_MANUAL = flags.DEFINE_string("manual_dir", None, "The lightcurves folder (default: "
                              "../shared/data/lightcurves beside the checkout).")

REPO = pathlib.Path(__file__).resolve().parents[1]
OTHER = "other"


def load(name, band, data_dir, manual_dir):
  """{split: {"x": features dict, "y", "id"}} of one band, curves with finite features only."""
  builder = variable_stars.build(name, manual_dir, data_dir)
  classes = list(builder.info.metadata["classes"])
  out, dropped = {}, {}
  for split in builder.info.splits:
    d = as_numpy(f"variable_stars/{name}", split, data_dir=str(data_dir),
                 features=(f"features_{band}", f"reason_{band}", "label", "id"))
    feats = d[f"features_{band}"].astype(np.float64)
    keep = (d[f"reason_{band}"] == 0) & np.isfinite(feats).all(1)
    dropped[split] = int((~keep).sum())
    out[split] = {"x": {k: feats[keep, i] for i, k in enumerate(F.FEATURES)},
                  "y": d["label"][keep].astype(np.int32), "id": d["id"][keep]}
  return out, classes, dropped


def take(x, idx):
  return {k: v[idx] for k, v in x.items()}


def stratified_subset(y, fraction, seed, num_classes):
  """Indices of round(fraction * n_c) (at least 1) random members of each class c."""
  rng = np.random.default_rng(seed)
  idx = []
  for c in range(num_classes):
    members = np.flatnonzero(y == c)
    if len(members):
      k = min(len(members), max(1, int(round(fraction * len(members)))))
      idx.append(rng.choice(members, k, replace=False))
  return np.sort(np.concatenate(idx))


def score(y, pred, classes):
  """Every reported metric; `pred` may use index len(classes) for "other"."""
  k = len(classes)
  n = k + 1 if np.any(pred == k) else k
  pc = metrics.per_class(y, pred, n)
  f1 = np.nan_to_num(pc["f1"][:k])
  return {"accuracy": metrics.accuracy(y, pred), "mc": metrics.mc_score(y, pred, n),
          "mcc": metrics.mcc(y, pred, n), "macro_f1": float(np.mean(f1)),
          "completeness": dict(zip(classes, pc["completeness"][:k].tolist())),
          "purity": dict(zip(classes, pc["purity"][:k].tolist())),
          "other_fraction": float(np.mean(pred == k)),
          "confusion": metrics.confusion(y, pred, k + 1)[:k].tolist()}


def zero_shot(probs, y, classes, up_classes, superclasses):
  """Strict and restricted scores of UPSILoN-T probabilities mapped onto `classes`."""
  mapping = dict(superclasses)
  missing = [c for c in classes if c not in mapping]
  if missing:
    raise ValueError(f"config.superclasses has no UPSILoN-T classes for {missing}")
  member = np.zeros((len(up_classes), len(classes)))
  for j, c in enumerate(classes):
    for u in mapping[c]:
      member[up_classes.index(u), j] = 1.0
  top = probs.argmax(-1)
  strict = np.where(member[top].any(-1), member[top].argmax(-1), len(classes))
  restricted = (probs @ member).argmax(-1)
  others = {}
  for u in top[strict == len(classes)]:
    others[up_classes[u]] = others.get(up_classes[u], 0) + 1
  counts = np.bincount(top, minlength=len(up_classes))
  return {"strict": score(y, strict, classes), "restricted": score(y, restricted, classes),
          "unmapped_predictions": dict(sorted(others.items(), key=lambda kv: -kv[1])),
          "predicted_counts": {u: int(n) for u, n in zip(up_classes, counts) if n}}


def inputs(x, pre):
  return F.upsilont_inputs(x, pre).astype(np.float32)


def variant_transfer(name):
  """The config.transfer overrides of a variant name, or None if unknown."""
  fixed = {"finetune_all": {}, "head_only": {"freeze": "block_.*"},
           "scratch": {"from_scratch": True}}
  if name in fixed:
    return fixed[name]
  if name.startswith("n_blocks_") and name[len("n_blocks_"):].isdigit():
    return {"n_blocks": int(name[len("n_blocks_"):])}
  return None


def run_target(name, band, config, up_vars, up_pre, workdir, manual_dir):
  data, classes, dropped = load(name, band, workdir / "tfds", manual_dir)
  k = len(classes)
  tag = f"{name}_{band}"
  train_split, test = data["train"], data["test"]
  result = {"classes": classes, "dropped_nonfinite": dropped,
            "n": {s: np.bincount(d["y"], minlength=k).tolist() for s, d in data.items()}}
  up_model = models.get("mlp", num_classes=len(up_pre["classes"]),
                        first_eps=weights.UPSILONT_FIRST_EPS)
  target_pre = F.fit_preprocess(train_split["x"], up_pre)
  result["zero_shot"] = {}
  for label, pre in (("upsilont_preprocess", up_pre), ("refit_preprocess", target_pre)):
    z = train.predict(up_model, up_vars, inputs(test["x"], pre))
    result["zero_shot"][label] = zero_shot(metrics.softmax(z), test["y"], classes,
                                           up_pre["classes"], config.superclasses)
  zs = result["zero_shot"]["upsilont_preprocess"]["strict"]
  logging.info("%s zero-shot (strict): accuracy %.3f, Mc %.3f", tag, zs["accuracy"], zs["mc"])

  runs, seen_sizes = [], set()
  for fraction in config.fractions:
    for seed in config.seeds:
      idx = stratified_subset(train_split["y"], fraction, 1000 + seed, k)
      if seed == config.seeds[0]:
        if len(idx) in seen_sizes:
          logging.info("%s: fraction %g gives %d stars again; skipped", tag, fraction, len(idx))
          break
        seen_sizes.add(len(idx))
      y = train_split["y"][idx]
      if config.preprocess_from == "train_split":
        pre = target_pre
      elif config.preprocess_from == "labelled":
        pre = F.fit_preprocess(take(train_split["x"], idx), up_pre)
      elif config.preprocess_from == "upsilont":
        pre = up_pre
      else:
        raise ValueError(f"config.preprocess_from={config.preprocess_from!r}: use "
                         "train_split, labelled or upsilont")
      subset = {"x": inputs(take(train_split["x"], idx), pre), "y": y}
      x_test = inputs(test["x"], pre)
      for variant in config.variants:
        recipe = variant_transfer(variant)
        if recipe is None:
          raise ValueError(f"config.variants: unknown {variant!r}; use finetune_all, "
                           "head_only, n_blocks_<N> or scratch")
        c = train.merged_config(config.train)
        c.model_config = dict(config.train.model_config, num_classes=k)
        c.seed = int(seed)
        c.transfer.update(recipe)
        if config.balanced:
          c.class_weights = losses.balanced_weights(y, k)
        r = train.fit(c, workdir / "runs" / tag / f"{variant}_f{fraction:g}_s{seed}",
                      {"train": subset}, pretrained=None if variant == "scratch" else up_vars)
        model = models.get("mlp", **c.model_config)
        pred = train.predict(model, r.best_variables, x_test).argmax(-1)
        rep = score(test["y"], pred, classes)
        rep.update(variant=variant, fraction=float(fraction), n_labelled=int(len(idx)),
                   seed=int(seed), seconds=r.seconds, final_loss=r.history[-1]["loss"])
        runs.append(rep)
        logging.info("%s %s f=%g (n=%d) seed=%d: Mc %.3f, macro-F1 %.3f, acc %.3f", tag,
                     variant, fraction, len(idx), seed, rep["mc"], rep["macro_f1"],
                     rep["accuracy"])
  result["runs"] = runs
  result["summary"] = summarise(runs)
  result["preprocess_refit"] = {k_: target_pre[k_] for k_ in
                                ("log10_min_offsets", "norm_median", "norm_std")}
  return tag, result


def summarise(runs):
  out = {}
  for r in runs:
    out.setdefault(f"{r['variant']}/f{r['fraction']:g}", []).append(r)
  table = {}
  for key, sel in out.items():
    row = {"n_labelled": sel[0]["n_labelled"], "seeds": len(sel)}
    for m in ("mc", "macro_f1", "accuracy"):
      v = np.array([r[m] for r in sel])
      row[m] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                "max": float(v.max())}
    table[key] = row
  return table


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  manual_dir = pathlib.Path(_MANUAL.value or REPO.parent / "shared" / "data" / "lightcurves")
  if not manual_dir.is_dir():
    raise FileNotFoundError(f"{manual_dir}: lightcurves folder not found; pass --manual_dir")
  t0 = time.time()
  up_vars, up_pre = weights.upsilont()
  results = {"command": "python " + " ".join(sys.argv),
             "config": config.to_dict(), "targets": {}, "zero_shot_only": {}}
  for name, band in config.targets:
    tag, res = run_target(name, band, config, up_vars, up_pre, workdir, manual_dir)
    results["targets"][tag] = res
    plot_confusions(workdir, tag, res)
  up_model = models.get("mlp", num_classes=len(up_pre["classes"]),
                        first_eps=weights.UPSILONT_FIRST_EPS)
  for name, band in config.zero_shot_only:
    data, classes, dropped = load(name, band, workdir / "tfds", manual_dir)
    test = data["test"]
    z = train.predict(up_model, up_vars, inputs(test["x"], up_pre))
    res = zero_shot(metrics.softmax(z), test["y"], classes, up_pre["classes"], config.superclasses)
    res.update(classes=classes, n=int(len(test["y"])), dropped_nonfinite=dropped,
               predictions=dict(zip(test["id"].tolist(),
                                    [up_pre["classes"][i] for i in z.argmax(-1)])))
    results["zero_shot_only"][f"{name}_{band}"] = res
    logging.info("%s_%s zero-shot: strict accuracy %.3f", name, band, res["strict"]["accuracy"])
  results["seconds_total"] = time.time() - t0
  (workdir / "results.json").write_text(json.dumps(results, indent=1, default=common.json_default))
  plot_learning_curves(workdir, results, config)


def plot_learning_curves(workdir, results, config):
  import matplotlib
  import matplotlib.ticker
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tags = list(results["targets"])
  if not tags:
    return
  fig, axes = plt.subplots(2, len(tags), figsize=(max(4.6 * len(tags), 6.5), 7.5),
                           squeeze=False)
  for col, tag in enumerate(tags):
    res = results["targets"][tag]
    for row, metric in enumerate(("mc", "macro_f1")):
      ax = axes[row, col]
      for vi, variant in enumerate(config.variants):
        sel = [r for r in res["runs"] if r["variant"] == variant]
        ns = sorted({r["n_labelled"] for r in sel})
        vals = [[r[metric] for r in sel if r["n_labelled"] == n] for n in ns]
        color = f"C{vi}"
        for n, v in zip(ns, vals):
          ax.scatter([n] * len(v), v, s=8, color=color, alpha=0.35)
        ax.errorbar(ns, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals],
                    color=color, marker="o", capsize=3, label=variant,
                    ls="--" if variant == "scratch" else "-")
      floor = res["zero_shot"]["upsilont_preprocess"]["strict"][metric]
      ax.axhline(floor, color="grey", ls=":", label="zero-shot UPSILoN-T")
      ax.set_xscale("log")
      ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      ax.set_xlabel("labelled training stars")
      ax.set_ylabel({"mc": "Mc = (MCC + 1) / 2", "macro_f1": "macro-F1"}[metric])
      ax.set_title(f"{tag} (test n={sum(res['n']['test'])})", fontsize=9)
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("UPSILoN-T transfer vs scratch\nmean ± std over seeds (dots: single seeds)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(workdir / "learning_curve.png", dpi=110)
  plt.close(fig)


def plot_confusions(workdir, tag, res):
  """Zero-shot (strict), and the full-label finetune_all and scratch runs of the first seed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  classes = res["classes"]
  full = max(r["fraction"] for r in res["runs"])
  first = min(r["seed"] for r in res["runs"])
  panels = [("zero-shot UPSILoN-T", res["zero_shot"]["upsilont_preprocess"]["strict"])]
  for variant in ("finetune_all", "scratch"):
    sel = [r for r in res["runs"] if r["variant"] == variant and r["fraction"] == full
           and r["seed"] == first]
    if sel:
      panels.append((f"{variant}, {sel[0]['n_labelled']} labels", sel[0]))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4), squeeze=False)
  for ax, (title, rep) in zip(axes[0], panels):
    m = np.asarray(rep["confusion"], float)
    frac = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
    for i in range(m.shape[0]):
      for j in range(m.shape[1]):
        ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(m.shape[1]), classes + [OTHER], rotation=45, fontsize=7)
    ax.set_yticks(range(m.shape[0]), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nMc {rep['mc']:.3f}, macro-F1 {rep['macro_f1']:.3f}", fontsize=8)
  fig.suptitle(f"{tag}: test-split confusion (row-normalised colour, counts)", fontsize=9)
  fig.tight_layout()
  fig.savefig(workdir / f"confusion_{tag}.png", dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  configs.run(main)  # --config=NAME finds the packaged config
