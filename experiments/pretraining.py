"""Does pretraining on unrelated images help a galaxy classifier?  (Schneider et al. 2023)

  python experiments/pretraining.py --workdir=/tmp/pretraining \\
    --config=astrotl/configs/pretraining.py:manual_dir=/path/to/galaxies

Generic images: scikit-learn's digits (in the wheel; see astrotl/configs/pretraining.py).
Writes results.json, validation_curves.png and test_accuracy.png into --workdir.
"""

import json
import pathlib
import sys

from absl import flags, logging
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from ml_collections import config_flags
import numpy as np
from scipy import stats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import galaxy_data  # noqa: E402

from astrotl import configs, metrics, train  # noqa: E402
from astrotl.preprocess import images as prep  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "astrotl/configs/pretraining.py:...")
_WORKDIR = flags.DEFINE_string("workdir", None, "results.json, plots and checkpoints go here.")


def digits(size: int, channels: int = 3):
  """sklearn digits as (N, size, size, channels) float32 in [0, 1], labels 0..9."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x = np.asarray(prep.resize(d.images[..., None] / 16.0, size))
  return np.repeat(x, channels, axis=-1).astype(np.float32), d.target.astype(np.int32)


def mean_ci(values, level=0.95):
  v = np.asarray(values, float)
  half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
  return {"mean": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)],
          "values": [float(a) for a in v]}


def main(argv):
  del argv
  config = _CONFIG.value
  e = config.experiment
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  galaxy_data.enable_compile_cache(workdir / "jax_cache")
  base = {k: v for k, v in config.to_dict().items() if k != "experiment"}

  # 1. pretrain on digits (10 classes), once: the "ImageNet weights" everyone starts from
  x, y = digits(e.image_size)
  perm = np.random.default_rng(0).permutation(len(y))
  dig = {"train": {"x": x[perm[:1500]], "y": y[perm[:1500]]},
         "validation": {"x": x[perm[1500:]], "y": y[perm[1500:]]}}
  pre_cfg = dict(base, num_steps=e.pretrain_steps, model_config=dict(base["model_config"],
                                                                      num_classes=10))
  pre = train.fit(pre_cfg, workdir / "pretrain_digits", dig)
  logging.info("digits pretraining: val accuracy %.3f in %.0f s", pre.best["val_accuracy"],
               pre.seconds)

  # 2. GZ1 early/late: a fixed training subset, validation subset and the test split
  gz = galaxy_data.load("gz1_early_late", e.manual_dir, workdir / "tfds", e.image_size)
  perm = np.random.default_rng(0).permutation(len(gz["train"]["y"]))
  tr, va = perm[:e.n_train], perm[e.n_train:e.n_train + e.n_val]
  data = {"train": {k: gz["train"][k][tr] for k in ("x", "y")},
          "validation": {k: gz["train"][k][va] for k in ("x", "y")}}
  test = gz["test"]
  model = train.build_model(train.merged_config(base))

  runs = []
  for seed in range(e.seeds):
    row = {"seed": seed}
    for arm in ("pretrained", "scratch"):
      cfg = dict(base, seed=seed)
      pretrained = pre.best_variables if arm == "pretrained" else None
      r = train.fit(cfg, workdir / f"{arm}_{seed}", data, pretrained=pretrained)
      pred = train.predict(model, r.best_variables, test["x"]).argmax(-1)
      row[arm] = {"test": galaxy_data.scores(test["y"], pred, 2), "best_val": r.best,
                  "to_target": {str(t): dict(zip(("step", "seconds"),
                                                 metrics.first_reaching(r.history, t)))
                                for t in e.targets},
                  "seconds": r.seconds,
                  "val_curve": [(h["step"], h["val_accuracy"]) for h in r.history
                                if "val_accuracy" in h]}
    logging.info("seed %d: pretrained %.3f scratch %.3f", seed,
                 row["pretrained"]["test"]["accuracy"], row["scratch"]["test"]["accuracy"])
    runs.append(row)

  acc = {arm: [r[arm]["test"]["accuracy"] for r in runs] for arm in ("pretrained", "scratch")}
  diff = np.subtract(acc["pretrained"], acc["scratch"])
  summary = {arm: mean_ci(acc[arm]) for arm in acc}
  summary["difference"] = mean_ci(diff)
  summary["paired_t"] = dict(zip(("statistic", "p"), map(float, stats.ttest_rel(
      acc["pretrained"], acc["scratch"]))))
  summary["wilcoxon"] = (dict(zip(("statistic", "p"), map(float, stats.wilcoxon(diff))))
                         if np.any(diff != 0) else {"statistic": 0.0, "p": 1.0})
  summary["to_target"] = {}
  for t in e.targets:
    for arm in ("pretrained", "scratch"):
      hits = [r[arm]["to_target"][str(t)] for r in runs if r[arm]["to_target"][str(t)]["step"]]
      summary["to_target"][f"{arm}@{t}"] = {
          "reached": f"{len(hits)}/{len(runs)}",
          "median_steps": float(np.median([h["step"] for h in hits])) if hits else None,
          "median_seconds": float(np.median([h["seconds"] for h in hits])) if hits else None}
  summary["pretrain_cost"] = {"steps": e.pretrain_steps, "seconds": pre.seconds,
                              "digits_val_accuracy": pre.best["val_accuracy"]}
  summary["majority_class_test_accuracy"] = float(max(np.mean(test["y"]), 1 - np.mean(test["y"])))
  summary["baseline_pca_logistic"] = galaxy_data.scores(
      test["y"], galaxy_data.pca_logistic(data["train"]["x"], data["train"]["y"], test["x"], 20), 2)
  results = {"config": json.loads(config.to_json()), "n_train": int(len(tr)),
             "n_val": int(len(va)), "n_test": int(len(test["y"])), "generic_images":
             "sklearn.datasets.load_digits (1797 8x8, 10 classes), resized, 3 channels",
             "runs": runs, "summary": summary}
  (workdir / "results.json").write_text(json.dumps(results, indent=1))
  plot(results, workdir)
  logging.info("summary: %s", json.dumps(summary))


def plot(results, workdir):
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, color in (("pretrained", "C0"), ("scratch", "C1")):
    curves = np.array([[a for _, a in r[arm]["val_curve"]] for r in results["runs"]])
    steps = [s for s, _ in results["runs"][0][arm]["val_curve"]]
    ax.plot(steps, curves.mean(0), color=color, label=f"{arm} (mean of {len(curves)} seeds)")
    ax.fill_between(steps, curves.min(0), curves.max(0), color=color, alpha=0.2)
  for t in results["config"]["experiment"]["targets"]:
    ax.axhline(t, color="gray", ls=":", lw=0.8)
  ax.set_xlabel("training step on GZ1")
  ax.set_ylabel(f"GZ1 early/late validation accuracy (n={results['n_val']})")
  ax.set_title("AlexNet-style: digits-pretrained vs from scratch")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(workdir / "validation_curves.png", dpi=110)
  plt.close(fig)

  s = results["summary"]
  fig, ax = plt.subplots(figsize=(4.5, 4))
  for i, arm in enumerate(("pretrained", "scratch")):
    ax.scatter(np.full(len(s[arm]["values"]), i), s[arm]["values"], alpha=0.6)
    lo, hi = s[arm]["ci95"]
    ax.errorbar(i + 0.15, s[arm]["mean"], yerr=[[s[arm]["mean"] - lo], [hi - s[arm]["mean"]]],
                fmt="o", color="k", capsize=4)
  ax.axhline(s["baseline_pca_logistic"]["accuracy"], color="gray", ls="--", label="PCA + logistic")
  ax.axhline(s["majority_class_test_accuracy"], color="gray", ls=":", label="majority class")
  ax.set_xticks([0, 1], ["pretrained", "scratch"])
  ax.set_ylabel(f"GZ1 test accuracy (n={results['n_test']})")
  ax.set_title(f"paired t p={s['paired_t']['p']:.3g}, Wilcoxon p={s['wilcoxon']['p']:.3g}",
               fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(workdir / "test_accuracy.png", dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  configs.run(main)  # --config=NAME finds the packaged config
