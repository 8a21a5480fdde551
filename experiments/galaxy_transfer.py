"""Galaxy morphology across surveys: train on one survey, adapt to another with N labels.

  python experiments/galaxy_transfer.py --workdir=/tmp/galaxy_transfer \\
    --config=astrotl/configs/galaxy_transfer.py:manual_dir=/path/to/galaxies

Pairs: radio = FIRST -> NVSS (FR-DEEP, FRI vs FRII); optical = SDSS GZ1 early/late ->
DECaLS rings.  Writes results.json and learning_curves.png into --workdir.
"""

import json
import pathlib
import sys
import time

from absl import flags, logging
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import galaxy_data  # noqa: E402

from astrotl import configs, models, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "astrotl/configs/galaxy_transfer.py:...")
_WORKDIR = flags.DEFINE_string("workdir", None, "results.json, plots and checkpoints go here.")

PAIRS = {"radio": ("first", "nvss"), "optical": ("gz1_early_late", "decals_rings")}


def subset(y, n, seed):
  """n indices, stratified by class (every class at least once when n allows)."""
  if n == 0:
    return np.zeros(0, int)
  rng = np.random.default_rng(seed)
  classes = np.unique(y)
  per = {c: rng.permutation(np.flatnonzero(y == c)) for c in classes}
  take = {c: max(1, int(round(n * len(per[c]) / len(y)))) for c in classes}
  while sum(take.values()) > n:
    take[max(take, key=take.get)] -= 1
  while sum(take.values()) < n:  # rounding left some over: give them to the roomiest class
    take[max(classes, key=lambda c: len(per[c]) - take[c])] += 1
  idx = np.concatenate([per[c][:take[c]] for c in classes])
  return rng.permutation(idx)


def target_splits(data, extra_test, largest_n, seed=0):
  """(pool, test): the target's test split plus up to `extra_test` held-out training
  examples, as many as leave `largest_n` examples in the fine-tuning pool."""
  n = len(data["train"]["y"])
  if largest_n > n:
    raise ValueError(f"n_target asks for {largest_n} labels but the target has {n} training "
                     "examples; lower config.experiment.n_target")
  extra_test = min(extra_test, n - largest_n)
  perm = np.random.default_rng(seed).permutation(n)
  held, pool = perm[:extra_test], perm[extra_test:]
  pick = lambda d, i: {k: v[i] for k, v in d.items()}
  test = {k: np.concatenate([data["test"][k], data["train"][k][held]]) for k in ("x", "y")}
  return pick(data["train"], pool), test


def evaluate(config, variables, x, y):
  model = train.build_model(config)
  pred = train.predict(model, variables, x).argmax(-1)
  return galaxy_data.scores(y, pred, config.model_config.num_classes)


def run_pair(name, config, workdir, data_dir):
  e = config.experiment
  src_name, tgt_name = PAIRS[name]
  src = galaxy_data.load(src_name, e.manual_dir, data_dir, e.image_size)
  tgt = galaxy_data.load(tgt_name, e.manual_dir, data_dir, e.image_size)
  pool, test = target_splits(tgt, e.extra_test, max(e.n_target))
  train_cfg = {k: v for k, v in config.to_dict().items() if k != "experiment"}
  out = {"source": src_name, "target": tgt_name, "image_size": e.image_size,
         "n_source_train": int(len(src["train"]["y"])), "n_target_pool": int(len(pool["y"])),
         "n_target_test": int(len(test["y"]))}

  t0 = time.time()
  source = train.fit(train_cfg, workdir / name / "source", {"train": src["train"]})
  out["source_seconds"] = time.time() - t0
  out["source_test"] = evaluate(config, source.best_variables, src["test"]["x"], src["test"]["y"])
  out["direct_on_target"] = evaluate(config, source.best_variables, test["x"], test["y"])
  # The PCA + logistic-regression baseline on the same splits.
  pca = e.pca_components
  out["baseline_within_source"] = galaxy_data.scores(
      src["test"]["y"], galaxy_data.pca_logistic(src["train"]["x"], src["train"]["y"],
                                                 src["test"]["x"], pca), 2)
  out["baseline_across"] = galaxy_data.scores(
      test["y"], galaxy_data.pca_logistic(src["train"]["x"], src["train"]["y"], test["x"], pca), 2)
  logging.info("%s: source test %.3f, direct on target %.3f", name,
               out["source_test"]["accuracy"], out["direct_on_target"]["accuracy"])

  runs = []
  for n in e.n_target:
    for seed in range(e.seeds):
      idx = subset(pool["y"], n, seed)
      assert len(idx) == n, (n, len(idx))
      row = {"n": int(n), "seed": seed}
      if n == 0:
        row["finetune"] = out["direct_on_target"]
        runs.append(row)
        continue
      few = {"train": {"x": pool["x"][idx], "y": pool["y"][idx]}}
      common = dict(train_cfg, num_steps=e.target_steps, seed=seed)
      t0 = time.time()
      ft = train.fit(dict(common, learning_rate=e.finetune_lr), workdir / name / f"ft_{n}_{seed}",
                     few, pretrained=source.best_variables)
      row["finetune"] = evaluate(config, ft.best_variables, test["x"], test["y"])
      row["finetune_seconds"] = time.time() - t0
      t0 = time.time()
      scratch_cfg = dict(common, transfer=dict(common["transfer"], from_scratch=True))
      sc = train.fit(scratch_cfg, workdir / name / f"scratch_{n}_{seed}", few)
      row["scratch"] = evaluate(config, sc.best_variables, test["x"], test["y"])
      row["scratch_seconds"] = time.time() - t0
      row["baseline"] = galaxy_data.scores(
          test["y"], galaxy_data.pca_logistic(few["train"]["x"], few["train"]["y"], test["x"],
                                              pca, seed), 2)
      logging.info("%s N=%d seed=%d: finetune %.3f scratch %.3f baseline %.3f", name, n, seed,
                   row["finetune"]["accuracy"], row["scratch"]["accuracy"],
                   row["baseline"]["accuracy"])
      runs.append(row)
  out["runs"] = runs
  out["summary"] = summarize(runs)
  return out


def summarize(runs):
  out = {}
  for arm in ("finetune", "scratch", "baseline"):
    per_n = {}
    for n in sorted({r["n"] for r in runs}):
      acc = [r[arm]["accuracy"] for r in runs if r["n"] == n and arm in r]
      if acc:
        per_n[str(n)] = {"mean": float(np.mean(acc)), "std": float(np.std(acc, ddof=1))
                         if len(acc) > 1 else 0.0, "seeds": len(acc)}
    out[arm] = per_n
  return out


def plot(results, path):
  pairs = [p for p in results["pairs"]]
  fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
  for ax, name in zip(axes[0], pairs):
    r = results["pairs"][name]
    for arm, label, style in (("finetune", f"fine-tuned from {r['source']}", "o-"),
                              ("scratch", "from scratch", "s--"),
                              ("baseline", "PCA + logistic", "^:")):
      s = r["summary"][arm]
      ns = sorted(int(n) for n in s)
      xs = [max(n, 5) for n in ns]  # N = 0 drawn at 5 on the log axis
      ax.errorbar(xs, [s[str(n)]["mean"] for n in ns], yerr=[s[str(n)]["std"] for n in ns],
                  fmt=style, capsize=3, label=label)
    ax.axhline(r["baseline_within_source"]["accuracy"], color="gray", lw=0.8,
               label=f"PCA+LR within {r['source']}")
    ax.set_xscale("log")
    ax.set_xlabel(f"{r['target']} training labels N (N=0 plotted at 5)")
    ax.set_ylabel(f"{r['target']} test accuracy (n={r['n_target_test']})")
    ax.set_title(f"{r['source']} -> {r['target']} ({r['image_size']} px)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  galaxy_data.enable_compile_cache(workdir / "jax_cache")
  unknown = [p for p in config.experiment.pairs if p not in PAIRS]
  if unknown:
    raise ValueError(f"config pairs {unknown} unknown; use {sorted(PAIRS)}")
  results = {"config": json.loads(config.to_json()), "pairs": {}}
  for name in config.experiment.pairs:
    results["pairs"][name] = run_pair(name, config, workdir, workdir / "tfds")
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
  plot(results, workdir / "learning_curves.png")
  logging.info("wrote %s", workdir / "results.json")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  configs.run(main)  # --config=NAME finds the packaged config
