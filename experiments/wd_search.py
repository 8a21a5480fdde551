"""White-dwarf search (Tan et al. 2023): 7-class stage 1, then transfer to a binary
white-dwarf classifier, versus training it from scratch.

  python experiments/wd_search.py --config=astrotl/configs/wd_search.py \
      --workdir=workdir/wd_search --bundle=astrotl/data/models/wd_two_stage.npz

Real: the LAMOST A-M stars (built into the lamost_lrs `mirror` dataset from
--spectra_dir) and the SDSS white dwarf used as a last check.  Simulated: every
LAMOST-like white dwarf (DA) and DA+M binary, from astrotl.preprocess.simulate with
ivar patterns and M-dwarf companions taken from real stars of the same split.

Writes results.json, learning_curve.png, reliability.png and sdss_wd.png into
--workdir, and (with --bundle) the calibrated two-stage model the scan uses.
"""

import json
import pathlib
import time

from absl import app, flags, logging
from ml_collections import config_flags
import numpy as np

from astrotl import checkpoint, metrics, parallel, surgery, train
from astrotl.preprocess import simulate, spectra

_CONFIG = config_flags.DEFINE_config_file("config", None, "astrotl/configs/wd_search.py[:arg]")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/wd_search", "Outputs go here.")
_SPECTRA = flags.DEFINE_string("spectra_dir", None, "LAMOST spectra folder (default: "
                               "../shared/data/spectra beside the checkout, else the bundled sample).")
_SDSS_WD = flags.DEFINE_string("sdss_wd", None, "A real SDSS white-dwarf spec file to score.")
_BUNDLE = flags.DEFINE_string("bundle", None, "Write the calibrated two-stage model here (.npz).")
_EVALUATE = flags.DEFINE_string("evaluate", None, "Only evaluate this model bundle on the same "
                                "splits (no training); writes bundle_eval.json.")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _default_spectra_dir():
  shared = REPO.parent / "shared" / "data" / "spectra"
  if shared.is_dir():
    return shared
  from astrotl import data
  return data.sample_dir("spectra")


def load_real(spectra_dir, data_dir, classes):
  """Real LAMOST stars per split through the lamost_lrs dataset (mirror config)."""
  import tensorflow_datasets as tfds
  from astrotl import datasets
  from astrotl.datasets.lamost_lrs import Builder
  builder = Builder(config="mirror", data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(spectra_dir)))
  mapping = {name: (name,) for name in classes if name in spectra.SUBTYPE_BASE}
  out = {}
  for split in builder.info.splits:
    d = datasets.as_numpy("lamost_lrs/mirror", split, data_dir=str(data_dir))
    label = np.array([_index(c, s, mapping, classes) for c, s in zip(d["class"], d["subclass"])])
    keep = label >= 0
    logging.info("%s: %d real stars kept, %d outside %s", split, keep.sum(), (~keep).sum(), classes)
    out[split] = {"flux": d["flux"][keep], "ivar": d["ivar"][keep], "mask": d["mask"][keep],
                  "y": label[keep], "subclass": d["subclass"][keep], "file": d["file"][keep]}
  return out


def _index(cls, subclass, mapping, classes):
  i = spectra.class_index(cls, subclass, mapping)
  return -1 if i is None else classes.index(list(mapping)[i])


def simulate_split(sim, real, n_wd, n_wdm, config, seed):
  """Simulated DA and DA+M spectra whose noise patterns and companions come from `real`."""
  rng = np.random.default_rng(seed)
  common = dict(teff_range=tuple(config.teff_range), snr_range=tuple(config.snr_range),
                ivar_templates=real["ivar"])
  wd = sim.sample(n_wd, rng, **common)
  m_stars = real["y"] == config.classes.index("M")
  if not m_stars.any():
    raise ValueError("no real M stars in this split: DA+M binaries need M-dwarf companions")
  wdm = sim.sample(n_wdm, rng, companions=real["flux"][m_stars],
                   companion_masks=real["mask"][m_stars], companion_fraction=1.0, **common)
  return wd, wdm


def calibrate_bundle(config, data, target, s1, s2_model, v1, best_bundle):
  """Temperature scaling, test scores and the SDSS white dwarf for the weights that ship."""
  classes = list(config.classes)
  # The bundle stores the big dense kernels as int8 (see checkpoint.save_bundle): calibrate
  # and evaluate exactly the weights that ship.
  v1, best_bundle = shipped(v1, best_bundle)
  z_val = logits("cnn1d", s1.model_config, v1, data["validation"]["x"])
  t1 = metrics.fit_temperature(z_val, data["validation"]["y"])
  # Calibrate the bundled stage 2 on validation, check it on test.
  z_val2 = logits("cnn1d", s2_model, best_bundle, target["validation"]["x"])
  t2 = metrics.fit_temperature(z_val2, target["validation"]["y"])
  z_test2 = logits("cnn1d", s2_model, best_bundle, target["test"]["x"])
  rel_raw = metrics.reliability(metrics.softmax(z_test2)[:, 1], target["test"]["y"] == 1)
  rel_cal = metrics.reliability(metrics.softmax(z_test2, t2)[:, 1], target["test"]["y"] == 1)
  bundle_test = binary_report(metrics.softmax(z_test2, t2)[:, 1], target["test"]["y"],
                              config.threshold)

  # The one real white dwarf: SDSS BOSS, resampled to the LAMOST grid.
  sdss_path = _SDSS_WD.value or (REPO.parent / "shared/data/spectra/sdss_boss/spec-4455-55539-0692.fits.gz")
  sdss_result = None
  if pathlib.Path(sdss_path).exists():
    x = read_sdss_inputs(sdss_path)
    p1 = metrics.softmax(logits("cnn1d", s1.model_config, v1, x), t1)[0]
    p2 = metrics.softmax(logits("cnn1d", s2_model, best_bundle, x), t2)[0, 1]
    sdss_result = {"file": str(sdss_path), "stage1": dict(zip(classes, p1.tolist())),
                   "p_wd": float(p2)}
    logging.info("SDSS white dwarf: P(WD) = %.3f, stage 1 %s", p2, sdss_result["stage1"])

  result = {"temperature_stage1": t1, "temperature_stage2": t2, "test": bundle_test,
            "ece_raw": rel_raw["ece"], "ece_calibrated": rel_cal["ece"]}
  return result, sdss_result, (rel_raw, rel_cal), v1, best_bundle, t1


def make_data(config, workdir):
  """Real stars per split and the stage-1 arrays (real + simulated), deterministic."""
  classes = list(config.classes)
  real = load_real(_SPECTRA.value or _default_spectra_dir(), workdir / "tfds", classes)
  sim = simulate.Simulator()
  data = {}
  for i, split in enumerate(("train", "validation", "test")):
    scale = 1.0 if split == "train" else 0.5
    wd, wdm = simulate_split(sim, real[split], int(config.n_sim_wd * scale),
                             int(config.n_sim_wdm * scale), config, seed=100 + i)
    data[split] = assemble(real[split], wd, wdm, classes)
  return real, data


def evaluate_bundle(path, config, real, data, workdir):
  """The shipped model as the scan uses it: stage 2 alone and the two-stage rule on the
  test split, the false-positive rate on real test stars, and the SDSS white dwarf."""
  from astrotl import bundle
  model = bundle.load_model(path)
  classes = list(config.classes)
  x, y = data["test"]["x"], data["test"]["y"]
  wd_idx = [classes.index(c) for c in model.rule["classes"]]

  def probs(stage, inputs):  # calibrated class probabilities, as the scan computes them
    net = model.networks[stage]
    return metrics.softmax(train.predict(net.model, net.variables, inputs), net.temperature)

  p1, p2 = probs("stage1", x), probs("stage2", x)[:, 1]
  truth = np.isin(y, wd_idx).astype(int)
  real_star = np.arange(len(y)) < len(real["test"]["y"])  # assemble() puts real stars first
  out = {"model": str(path), "n_test": int(len(y)), "n_real_stars": int(real_star.sum()),
         "stage1_accuracy": metrics.accuracy(y, p1.argmax(-1))}
  for rule, flag in (("stage2_only", p2 >= config.threshold),
                     ("two_stage", (p2 >= config.threshold) & np.isin(p1.argmax(-1), wd_idx))):
    rep = binary_report(flag.astype(float), truth, 0.5)
    rep["false_positive_rate_real_stars"] = float(flag[real_star].mean())
    out[rule] = rep
  sdss = _SDSS_WD.value or (REPO.parent / "shared/data/spectra/sdss_boss/spec-4455-55539-0692.fits.gz")
  if pathlib.Path(sdss).exists():
    xs = read_sdss_inputs(sdss)
    q1, q2 = probs("stage1", xs)[0], probs("stage2", xs)[0, 1]
    out["sdss_white_dwarf"] = {"p_wd": float(q2), "stage1": dict(zip(classes, q1.tolist()))}
  out["command"] = (f"python experiments/wd_search.py --config=astrotl/configs/wd_search.py "
                    f"--workdir={workdir} --evaluate={path}")
  (workdir / "bundle_eval.json").write_text(json.dumps(out, indent=1, default=_json))
  logging.info("bundle evaluation: %s", json.dumps(out, default=_json))


def tan_inputs(flux, mask):
  return spectra.tan_normalise(flux, mask).astype(np.float32)


def assemble(real, wd, wdm, classes):
  x = np.concatenate([tan_inputs(real["flux"], real["mask"]), tan_inputs(wd["flux"], wd["mask"]),
                      tan_inputs(wdm["flux"], wdm["mask"])])
  y = np.concatenate([real["y"], np.full(len(wd["flux"]), classes.index("WD")),
                      np.full(len(wdm["flux"]), classes.index("WD+M"))])
  return {"x": x, "y": y.astype(np.int32)}


def class_weights(y, k):
  counts = np.bincount(y, minlength=k).astype(float)
  w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / k, 0.0)
  return tuple(float(v) for v in w)


def binary(split, classes):
  wd = np.isin(split["y"], [classes.index("WD"), classes.index("WD+M")])
  return {"x": split["x"], "y": wd.astype(np.int32)}


def subsample(split, n, seed):
  """n examples, half white dwarfs, half not (as far as available)."""
  rng = np.random.default_rng(seed)
  pos, neg = np.flatnonzero(split["y"] == 1), np.flatnonzero(split["y"] == 0)
  k = min(n // 2, len(pos))
  idx = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)])
  rng.shuffle(idx)
  return {"x": split["x"][idx], "y": split["y"][idx]}


def logits(model_name, model_config, variables, x):
  from astrotl import models
  return train.predict(models.get(model_name, **model_config), variables, x)


def binary_report(p_wd, y, threshold):
  pred = (p_wd >= threshold).astype(int)
  pc = metrics.per_class(y, pred, 2)
  return {"accuracy": metrics.accuracy(y, pred), "wd_completeness": float(pc["completeness"][1]),
          "wd_purity": float(pc["purity"][1]), "n": int(len(y)), "n_wd": int(y.sum())}


def read_sdss_inputs(path):
  from astrotl.io import sdss
  s = sdss.read(path)
  f, _, bad = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
  return tan_inputs(f[None], bad[None])


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  classes = list(config.classes)
  t_start = time.time()

  real, data = make_data(config, workdir)
  if _EVALUATE.value:
    evaluate_bundle(_EVALUATE.value, config, real, data, workdir)
    return
  counts = {s: np.bincount(d["y"], minlength=len(classes)).tolist() for s, d in data.items()}
  logging.info("stage-1 class counts %s", counts)

  # Stage 1: the 7-class classifier.
  s1 = train.merged_config(config.stage1)
  s1.model_config = dict(config.model_config, num_classes=len(classes))
  s1.class_weights = class_weights(data["train"]["y"], len(classes))
  r1 = train.fit(s1, workdir / "stage1", {"train": data["train"], "validation": data["validation"]})
  v1 = r1.best_variables
  z_val = logits("cnn1d", s1.model_config, v1, data["validation"]["x"])
  t1 = metrics.fit_temperature(z_val, data["validation"]["y"])
  z_test = logits("cnn1d", s1.model_config, v1, data["test"]["x"])
  pred1 = z_test.argmax(-1)
  pc1 = metrics.per_class(data["test"]["y"], pred1, len(classes))
  stage1 = {"best": r1.best, "seconds": r1.seconds, "temperature": t1,
            "test_accuracy": metrics.accuracy(data["test"]["y"], pred1),
            "test_per_class": {k: dict(zip(classes, np.asarray(v, float).tolist()))
                               for k, v in pc1.items()},
            "confusion": metrics.confusion(data["test"]["y"], pred1, len(classes)).tolist()}
  logging.info("stage 1: test accuracy %.3f, T=%.2f", stage1["test_accuracy"], t1)

  # Stage 2: binary WD classifier from N target labels, transfer variants vs scratch.
  target = {s: binary(d, classes) for s, d in data.items()}
  variants = {
      "finetune_all": {"skip": ("head/.*",)},
      "frozen_stem": {"skip": ("head/.*",), "freeze": "block_.*"},
      "n_blocks_2": {"skip": ("head/.*",), "n_blocks": 2},
      "scratch": {"from_scratch": True},
  }
  s2_model = dict(config.model_config, num_classes=2)
  runs = []
  best_bundle = None
  for n in config.target_sizes:
    for seed in config.seeds:
      subset = subsample(target["train"], n, seed)
      for name in config.variants:
        c = train.merged_config(config.stage2)
        c.model_config = s2_model
        c.seed = int(seed)
        c.transfer.update(variants[name])
        run_dir = workdir / "stage2" / f"{name}_n{n}_s{seed}"
        r = train.fit(c, run_dir, {"train": subset, "validation": target["validation"]},
                      pretrained=None if name == "scratch" else v1)
        z = logits("cnn1d", s2_model, r.best_variables, target["test"]["x"])
        rep = binary_report(metrics.softmax(z)[:, 1], target["test"]["y"], config.threshold)
        step, secs = metrics.first_reaching(r.history, config.target_accuracy)
        rep.update(variant=name, n_train=n, seed=int(seed), best=r.best, seconds=r.seconds,
                   steps_to_target=step, seconds_to_target=secs)
        runs.append(rep)
        logging.info("stage 2 %s n=%d seed=%d: test acc %.3f, completeness %.3f, purity %.3f",
                     name, n, seed, rep["accuracy"], rep["wd_completeness"], rep["wd_purity"])
        if name == "finetune_all" and n == max(config.target_sizes) and seed == config.seeds[0]:
          best_bundle = r.best_variables

  bundle_result, sdss_result, rels = None, None, None
  if best_bundle is not None:  # the fine-tune-all run at the largest N, seed 0, was made
    bundle_result, sdss_result, rels, v1, best_bundle, t1 = calibrate_bundle(
        config, data, target, s1, s2_model, v1, best_bundle)
  summary = summarise(runs, config)
  results = {
      "command": "python experiments/wd_search.py --config=astrotl/configs/wd_search.py "
                 f"--workdir={workdir}" + (f" --bundle={_BUNDLE.value}" if _BUNDLE.value else ""),
      "config": config.to_dict(), "data": {
          "real": {s: {"n": int(len(real[s]["y"])),
                       "by_class": np.bincount(real[s]["y"], minlength=len(classes)).tolist()}
                   for s in real},
          "stage1_counts": counts, "classes": classes,
          "note": "A-M spectra are real LAMOST stars; every WD and WD+M spectrum is simulated "
                  "(DA models + real LAMOST noise patterns and M-dwarf companions)."},
      "stage1": stage1, "stage2_runs": runs, "stage2_summary": summary,
      "bundle": bundle_result,
      "sdss_white_dwarf": sdss_result, "seconds_total": time.time() - t_start,
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=1, default=_json))
  plot(workdir, summary, config, *(rels or (None, None)))
  if sdss_result:
    plot_sdss(workdir, read_sdss_inputs(sdss_result["file"])[0], sdss_result)

  if _BUNDLE.value and bundle_result is None:
    raise app.UsageError("--bundle needs the finetune_all variant in config.variants")
  if _BUNDLE.value:
    t2 = bundle_result["temperature_stage2"]
    bundle_test = bundle_result["test"]
    meta = {"stage1": {"model": "cnn1d", "config": dict(s1.model_config), "classes": classes,
                       "temperature": t1},
            "stage2": {"model": "cnn1d", "config": s2_model, "classes": ["other", "WD"],
                       "positive_index": 1, "temperature": t2},
            "input_pixels": spectra.TAN_NPIX,
            "trained_by": results["command"],
            "training_data": results["data"]["note"],
            "test": {"stage1_accuracy_float32": stage1["test_accuracy"], "stage2": bundle_test},
            "storage": "float16; dense kernels int8 with per-column scales"}
    checkpoint.save_bundle(_BUNDLE.value, {"stage1": v1, "stage2": best_bundle}, meta, int8=INT8)
    logging.info("wrote the two-stage model to %s", _BUNDLE.value)


INT8 = (r"stage[12]/params/dense/kernel",)  # 95% of the parameters; 4x smaller as int8


def shipped(v1, v2):
  """The two stages as the bundle will hold them (float16, int8 dense kernels)."""
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    path = pathlib.Path(d) / "b.npz"
    checkpoint.save_bundle(path, {"stage1": v1, "stage2": v2}, {}, int8=INT8)
    trees, _ = checkpoint.load_bundle(path)
  return trees["stage1"], trees["stage2"]


def _json(o):
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  return str(o)


def summarise(runs, config):
  out = {}
  for name in config.variants:
    for n in config.target_sizes:
      sel = [r for r in runs if r["variant"] == name and r["n_train"] == n]
      if not sel:
        continue
      row = {}
      for key in ("accuracy", "wd_completeness", "wd_purity", "seconds"):
        v = np.array([r[key] for r in sel], float)
        row[key] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v))}
      reached = [r["steps_to_target"] for r in sel if r["steps_to_target"] is not None]
      row["reached_target"] = f"{len(reached)}/{len(sel)}"
      row["steps_to_target_mean"] = float(np.mean(reached)) if reached else None
      secs = [r["seconds_to_target"] for r in sel if r["seconds_to_target"] is not None]
      row["seconds_to_target_mean"] = float(np.mean(secs)) if secs else None
      out[f"{name}/n{n}"] = row
  return out


def plot(workdir, summary, config, rel_raw, rel_cal):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name in config.variants:
    ns = [n for n in config.target_sizes if f"{name}/n{n}" in summary]
    for ax, key in zip(axes, ("accuracy", "wd_completeness")):
      m = [summary[f"{name}/n{n}"][key]["mean"] for n in ns]
      s = [summary[f"{name}/n{n}"][key]["std"] for n in ns]
      ax.errorbar(ns, m, yerr=s, marker="o", capsize=3, label=name,
                  ls="--" if name == "scratch" else "-")
  for ax, key in zip(axes, ("test accuracy", "WD completeness")):
    ax.set_xscale("log")
    ax.set_xlabel("labelled target spectra (N)")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.suptitle("Stage 2 (binary WD): transfer from the 7-class model vs scratch "
               f"(mean ± std over {len(config.seeds)} seeds)")
  fig.tight_layout()
  fig.savefig(workdir / "learning_curve.png", dpi=110)
  plt.close(fig)

  if rel_raw is None:
    return
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  for rel, label in ((rel_raw, f"raw (ECE {rel_raw['ece']:.3f})"),
                     (rel_cal, f"temperature-scaled (ECE {rel_cal['ece']:.3f})")):
    ok = rel["count"] > 0
    ax.plot(rel["confidence"][ok], rel["accuracy"][ok], marker="o", label=label)
  ax.plot([0, 1], [0, 1], color="grey", ls=":")
  ax.set_xlabel("predicted P(WD)")
  ax.set_ylabel("fraction that are white dwarfs")
  ax.set_title("Reliability of stage 2 on the test split")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(workdir / "reliability.png", dpi=110)
  plt.close(fig)


def plot_sdss(workdir, x, result):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  wave = spectra.wavelength_grid()[:len(x)]
  fig, ax = plt.subplots(figsize=(9, 3))
  ax.plot(wave, x, lw=0.6, color="k")
  for line in (4102, 4341, 4862, 6564):
    ax.axvline(line, color="tab:red", lw=0.5, alpha=0.6)
  ax.set_title(f"SDSS white dwarf on the LAMOST grid: P(WD) = {result['p_wd']:.3f}", fontsize=9)
  ax.set_xlabel("wavelength [A]")
  fig.tight_layout()
  fig.savefig(workdir / "sdss_wd.png", dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
