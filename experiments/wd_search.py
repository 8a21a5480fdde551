"""White-dwarf search (Tan et al. 2023), trained to hold on real spectra.

  python experiments/wd_search.py --config=astrotl/configs/wd_search.py \
      --workdir=workdir/wd_search --bundle=astrotl/data/models/wd_two_stage.npz

Stage 1 is a 9-class stellar classifier (A, F, G, K, M, OB, sdOB, WD, WD+M); stage 2, the
binary white-dwarf classifier, is stage 1's conv trunk, frozen, with its own dense layer
and head (so the scan runs the trunk once for both).  Training spectra, all made
LAMOST-like by the same steps (`astrotl.preprocess.degrade`: the measured LAMOST
response, noise of real LAMOST ivar shapes down to S/N 4, and half of them blurred to a
resolving power between CALSPEC's and LAMOST's), so that no class can be told by its
source:

- real LAMOST A-M stars, at their own S/N and degraded copies;
- real HST CALSPEC white dwarfs (DA, DB, DO), hot subdwarfs, O/B, A, F/G/K and M stars
  (`../shared/data/spectra/real_wd_validation`), many noisy draws of each;
- simulated DA white dwarfs and DA+M binaries (Warwick models, real M-dwarf companions).

Every real object (a LAMOST star, grouped by designation; a CALSPEC object) is in one of
--folds folds.  Fold k's model trains on the other folds; `cv.json` maps every object to
the model that never saw it, and `experiments/wd_real_check.py --cv=cv.json` scores each
object with it.  --cv_folds=0,1 trains only some folds (to save time): the other folds'
objects map to null and are not scored.  The shipped model trains on all folds.  The objects in
`real_spectra.RESERVED` are in no fold and no training set, so the tests check the shipped
model on objects it never saw.  The stage-2 study (transfer vs scratch, N target labels)
runs on fold 0: source = fold 0's stage 1, test = fold 0's held-out objects.

  --annotate=<wd_real_check results.json> writes the measured false-positive rate and the
  expected purity into the bundle's metadata (the scan reports them); --reference adds the
  anomaly reference (`astrotl.similar.add_reference`: embeddings of the training spectra)
  that the scan's --embeddings anomaly score needs.
"""

import json
import pathlib
import shutil
import sys
import time
import zlib

from absl import app, flags, logging
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=g-import-not-at-top
import real_spectra  # noqa: E402  pylint: disable=g-import-not-at-top

from astrotl import bundle, checkpoint, configs, metrics, train  # noqa: E402
from astrotl.preprocess import degrade, lines, simulate, spectra  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "astrotl/configs/wd_search.py[:arg]")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/wd_search", "Outputs go here.")
_DATA = flags.DEFINE_string("data_dir", None, "Shared data (default ../shared/data).")
_BUNDLE = flags.DEFINE_string("bundle", None, "Write the shipped two-stage model here (.npz).")
_ONLY = flags.DEFINE_list("only", ["folds", "summary", "final", "study"], "Parts to run "
                          "(summary: calibration and the line-feature baseline on the folds' "
                          "held-out rows).")
_CV_FOLDS = flags.DEFINE_list("cv_folds", None, "Train only these folds (default all). The "
                              "objects of the others map to null in cv.json: no model that "
                              "never saw them exists, so wd_real_check does not score them.")
_ANNOTATE = flags.DEFINE_string("annotate", None, "wd_real_check results.json whose rates "
                                "go into --bundle's metadata (nothing is trained).")
_REFERENCE = flags.DEFINE_bool("reference", False, "Add an anomaly reference to --bundle: "
                               "the embeddings of its training spectra (nothing is trained).")

REPO = pathlib.Path(__file__).resolve().parents[1]
LETTER_CLASSES = ("A", "F", "G", "K", "M")
# Tan's input with the median filter first: a cosmic ray cannot set the min-max scale.
INPUT = {"type": "spectrum", "normalise": "tan_robust", "pixels": spectra.TAN_NPIX}
KOESTER = "spectra/wd_models/koester_{}"
CALSPEC_LABEL = {"WD": "WD", "hot_subdwarf": "sdOB", "OB": "OB", "A": "A"}
INT8 = (r"stage[12]/params/dense/kernel",)  # 95% of the parameters; 4x smaller as int8
REFERENCE_SIZE = 4096  # anomaly reference rows: 2 MB in the bundle, 4 ms a batch on a CPU


# --- the real objects ---------------------------------------------------------------------

def real_objects(data_dir, classes):
  """Every usable real object: dicts of key (the --cv key of wd_real_check), group (one
  per physical star), label, source ("LAMOST" / "CALSPEC") and its spectrum on the grid
  (flux, ivar, mask at its own S/N; CALSPEC at its own resolution)."""
  from astrotl import io as aio
  from astrotl.io import calspec
  out = []
  for row in real_spectra.lamost_files(data_dir, "all"):
    s = aio.read(row["path"])
    letter = spectra.spectral_letter(s.meta.get("subclass") or "")
    if (s.meta.get("class") or "").upper() != "STAR" or letter not in LETTER_CLASSES:
      continue
    f, v, m = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    group = s.meta.get("designation") or row["object"]
    out.append({"key": row["object"], "group": f"lamost:{group}", "label": letter,
                "source": "LAMOST", "flux": f, "ivar": v, "mask": m})
  for row in real_spectra.calspec_files(data_dir):
    label = CALSPEC_LABEL.get(row["group"])
    if row["group"] in ("FGK", "M_L_T"):
      label = spectra.spectral_letter(row["subtype"])
    if label not in classes:
      continue  # the PN nucleus; L/T dwarfs
    s = calspec.read(row["path"])
    f, v, m = degrade.to_grid(s.wavelength, s.flux, s.ivar, s.mask, row["observed"])
    out.append({"key": row["object"], "group": f"calspec:{row['object']}", "label": label,
                "source": "CALSPEC", "subtype": row["subtype"], "flux": f, "ivar": v, "mask": m})
  return out


def reserved(obj):
  return obj["key"] in real_spectra.RESERVED


def assign_folds(objects, k, seed):
  """group -> fold, every label's groups spread evenly over the folds."""
  rng = np.random.default_rng(seed)
  by_label = {}
  for o in objects:
    if not reserved(o):
      by_label.setdefault(o["label"], set()).add(o["group"])
  fold = {}
  offset = 0
  for label in sorted(by_label):
    groups = sorted(by_label[label])
    rng.shuffle(groups)
    for i, g in enumerate(groups):
      fold.setdefault(g, (i + offset) % k)
    offset += len(groups)
  return fold


# --- LAMOST-like training spectra ---------------------------------------------------------

def _rng(seed, *parts):
  return np.random.default_rng([seed] + [zlib.crc32(str(p).encode()) for p in parts])


def _snr_draws(rng, n, own, config):
  """n S/N values log-uniform in config.snr_range, each below its spectrum's own S/N."""
  hi = np.minimum(np.broadcast_to(np.asarray(own, float), (n,)), config.snr_range[1])
  lo = np.minimum(config.snr_range[0], hi)
  return np.exp(rng.uniform(np.log(np.maximum(lo, 1e-3)), np.log(np.maximum(hi, 1e-3)), n))


def _blurred(rng, flux, ivar, mask, config):
  """Half of the spectra (config.blur_fraction) at R uniform in config.blur_resolution."""
  n = len(flux)
  r = np.where(rng.random(n) < config.blur_fraction,
               rng.uniform(*config.blur_resolution, n), np.inf)
  return degrade.blur(flux, ivar, mask, r)


def augment(obj, templates, config, seed):
  """LAMOST-like training spectra of one real object: (flux, ivar, mask) (n, npix)."""
  rng = _rng(seed, obj["key"])
  own = spectra.snr(obj["flux"], obj["ivar"], obj["mask"])
  if obj["source"] == "LAMOST":
    n = config.lamost_copies
    rep = lambda a: np.repeat(a[None], n, 0)
    f, v, m = _blurred(rng, rep(obj["flux"]), rep(obj["ivar"]), rep(obj["mask"]), config)
    own = spectra.snr(f, v, m)
    f, v, m, _ = degrade.degrade(f, v, m, _snr_draws(rng, n, own, config), rng)
    # A mild extra response: real stars already carry LAMOST's own.
    curves = simulate.legendre_response(rng, n, config.real_response_sigma)
    f, v = f * curves, v / curves ** 2
    return tuple(np.concatenate([a[None], b]) for a, b in
                 ((obj["flux"], f), (obj["ivar"], v), (obj["mask"], m)))
  # The hot stars that imitate white dwarfs are a handful of objects: more draws of each,
  # or the network (stage 2 above all) barely sees them among the ordinary stars.
  n = config.calspec_draws * (config.hard_negative_factor
                              if obj["label"] in config.hard_negatives else 1)
  snr = _snr_draws(rng, n, own, config)
  tmpl = templates[rng.integers(0, len(templates), n)]
  return degrade.lamost_like(None, obj["flux"], rng, snr, tmpl, mask=obj["mask"],
                             ivar=obj["ivar"], response="empirical")


def simulators(data_dir):
  """The white-dwarf model grids: the bundled Warwick DA grid, and Koester's DA and DB
  grids from the shared data (training only: they are not shipped)."""
  from astrotl.io import wd_models
  out = {"warwick_da": simulate.Simulator()}
  for kind in ("da", "db"):
    path = pathlib.Path(data_dir) / KOESTER.format(kind)
    out[f"koester_{kind}"] = simulate.Simulator(wd_models.read_koester_grid(path, kind))
  return out


def _sim_wd(sim, n, rng, pools, config, teff_range, companions=None):
  """n model white dwarfs (optionally + an M dwarf) made LAMOST-like."""
  teff = np.exp(rng.uniform(*np.log(teff_range), n))
  logg = rng.uniform(*config.logg_range, n)
  model = sim.model(teff, logg, rng.uniform(-100, 100, n))
  mask = np.zeros(model.shape, bool)
  if companions is not None:
    comp, cmask = companions
    pick = rng.integers(0, len(comp), n)
    c = np.where(cmask[pick], 0.0, comp[pick])
    med = np.array([np.median(row[~bad]) for row, bad in zip(c, cmask[pick])])
    ratio = np.exp(rng.uniform(np.log(0.1), np.log(3.0), n))
    model = model + (ratio / med)[:, None] * c
    mask = cmask[pick]
  model, _, mask = _blurred(rng, model, np.ones_like(model), mask, config)  # before noise
  snr = np.exp(rng.uniform(*np.log(config.snr_range), n))
  tmpl = pools["templates"][rng.integers(0, len(pools["templates"]), n)]
  return degrade.lamost_like(None, model, rng, snr, tmpl, mask=mask, response="empirical")


def simulated(counts, companions, pools, config, seed):
  """Simulated white dwarfs made LAMOST-like like the real spectra: {kind: (flux, ivar,
  mask)} for DA (half Warwick, half Koester models), DB (Koester) and DA+M (Warwick + a
  real M dwarf).  Model temperatures stop where the lines fade (DA 6,000 K, DB 12,000 K):
  cooler white dwarfs are line-less DCs, which this model leaves out (see README)."""
  sims = pools["sims"]
  rng = _rng(seed, "simulated")
  n_da = counts["DA"]
  plan = {"DA warwick": (sims["warwick_da"], n_da - n_da // 2, config.teff_range, None),
          "DA koester": (sims["koester_da"], n_da // 2, config.teff_range, None),
          "DB koester": (sims["koester_db"], counts["DB"], config.db_teff_range, None),
          "DA+M": (sims["warwick_da"], counts["DA+M"] if companions else 0, config.teff_range,
                   companions)}
  return {k: _sim_wd(sim, n, rng, pools, config, tr, comp)
          for k, (sim, n, tr, comp) in plan.items() if n > 0}


def featureless(n, pools, config, seed):
  """Spectra without absorption lines, made LAMOST-like like the rest (class "other"):
  blackbodies (3,000-60,000 K), power laws (F_lambda ~ lambda^-4..2) and smooth random
  curves; a fraction config.emission_fraction carries emission lines, half a Balmer
  series (+He I, as in Be stars and CVs), half broad lines at random wavelengths (QSOs).
  No white dwarf hotter than ~12,000 K looks like this; in a survey these are QSOs,
  BL Lacs, CVs, bad fibres and badly calibrated hot stars."""
  rng = _rng(seed, "featureless")
  wave = spectra.wavelength_grid()
  kind = rng.choice(3, n, p=(0.5, 0.35, 0.15))
  bb = simulate.blackbody(np.exp(rng.uniform(np.log(3000.0), np.log(60000.0), n)), wave)
  pl = degrade.tilt(wave, rng.uniform(-4.0, 2.0, n))
  smooth = simulate.legendre_response(rng, n, 0.5)
  cont = np.where((kind == 0)[:, None], bb, np.where((kind == 1)[:, None], pl, smooth))
  cont /= np.median(cont, axis=-1, keepdims=True)
  emission = np.zeros_like(cont)
  em = np.flatnonzero(rng.random(n) < config.emission_fraction)
  balmer = (6564.6, 4862.7, 4341.7, 4102.9, 3971.2, 5877.3, 6679.9)
  decrement = (1.0, 0.45, 0.25, 0.16, 0.11, 0.12, 0.05)
  for i in em:
    if rng.random() < 0.5:
      lines = [(c, a * rng.uniform(0.5, 4.0), rng.uniform(100, 1000))
               for c, a in zip(balmer, decrement)]
    else:
      lines = [(rng.uniform(wave[0], wave[-1]), rng.uniform(0.2, 2.0), rng.uniform(1000, 6000))
               for _ in range(rng.integers(1, 4))]
    for centre, amp, vel in lines:
      sigma = centre * vel / 299792.458
      emission[i] += amp * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)
  model = cont * (1.0 + emission)
  snr = np.exp(rng.uniform(*np.log(config.snr_range), n))
  tmpl = pools["templates"][rng.integers(0, len(pools["templates"]), n)]
  return degrade.lamost_like(None, model, rng, snr, tmpl, response="empirical")


def perturb(rng, flux, ivar, mask, config):
  """Every spectrum tilted by (lambda / 5500 A)^alpha, alpha uniform in +-config.tilt (flux
  calibration and reddening, so the continuum slope cannot decide), and a fraction
  config.spike_fraction given one or two narrow spikes 3-20x the continuum, 1-5 pixels
  wide (cosmic rays and sky-line residuals, left unmasked as a survey often leaves them)."""
  flux, ivar = np.array(flux, np.float64), np.array(ivar, np.float64)
  n, npix = flux.shape
  curve = degrade.tilt(spectra.wavelength_grid(npix), rng.uniform(-config.tilt, config.tilt, n))
  flux, ivar = flux * curve, ivar / curve ** 2
  top = min(npix, spectra.TAN_NPIX)
  for i in np.flatnonzero(rng.random(n) < config.spike_fraction):
    good = ~mask[i, :top]
    level = np.median(np.abs(flux[i, :top][good])) if good.any() else 0.0
    for _ in range(rng.integers(1, 3)):
      w = int(rng.integers(1, 6))
      at = int(rng.integers(0, top - w))
      flux[i, at:at + w] += rng.uniform(3.0, 20.0) * level
  return flux.astype(np.float32), ivar.astype(np.float32), mask


def build(objects, groups, pools, config, seed, raw=False):
  """Network inputs x, labels y (stage-1 class index), source, kind, object and line
  features (`astrotl.preprocess.lines`) of every training spectrum from the objects of
  `groups`, fresh simulations and featureless spectra; with raw=True also their flux,
  ivar and mask (as the scan would read them)."""
  classes = list(config.classes)
  rng = _rng(seed, "perturb")
  parts = []  # (flux, ivar, mask, label, source, kind, object)
  for o in objects:
    if o["group"] in groups:
      f, v, m = augment(o, pools["templates"], config, seed)
      parts.append((f, v, m, o["label"], o["source"], o.get("subtype") or o["label"], o["key"]))
  # Companions of the DA+M binaries: real M dwarfs of these groups only.
  m_stars = [o for o in objects if o["group"] in groups and o["source"] == "LAMOST"
             and o["label"] == "M"]
  scale = len(groups) / max(len({o["group"] for o in objects}), 1)
  counts = {"DA": int(config.n_sim_wd * scale), "DB": int(config.n_sim_db * scale),
            "DA+M": int(config.n_sim_wdm * scale)}
  companions = (np.stack([o["flux"] for o in m_stars]),
                np.stack([o["mask"] for o in m_stars])) if m_stars else None
  for kind, (f, v, m) in simulated(counts, companions, pools, config, seed).items():
    parts.append((f, v, m, "WD+M" if kind == "DA+M" else "WD", "simulated", kind, kind))
  n_flat = int(config.n_featureless * scale)
  if n_flat and "other" in classes:
    f, v, m = featureless(n_flat, pools, config, seed)
    parts.append((f, v, m, "other", "simulated", "featureless", "featureless"))
  out = {k: [] for k in ("x", "y", "source", "kind", "object", "features", "flux", "ivar",
                         "mask")}
  for f, v, m, label, source, kind, obj in parts:
    f, v, m = perturb(rng, f, v, m, config)
    out["x"].append(spectra.network_input(f, v, m, INPUT).astype(np.float32))
    out["features"].append(lines.line_features(f, v, m))  # for the line-feature baseline
    out["y"].append(np.full(len(f), classes.index(label), np.int32))
    for key, value in (("source", source), ("kind", kind), ("object", obj)):
      out[key].append(np.full(len(f), value, dtype=object))
    if raw:
      out["flux"].append(f), out["ivar"].append(v), out["mask"].append(m)
  return {k: np.concatenate(v) for k, v in out.items() if v}


def split_validation(groups, objects, fraction, seed):
  """(train groups, validation groups): a fraction of every label's groups for validation."""
  rng = np.random.default_rng(seed)
  label = {o["group"]: o["label"] for o in objects}
  val = set()
  for lab in sorted(set(label[g] for g in groups)):
    gs = sorted(g for g in groups if label[g] == lab)
    rng.shuffle(gs)
    val |= set(gs[:max(1, int(round(fraction * len(gs))))] if len(gs) > 2 else [])
  return set(groups) - val, val


# --- training -----------------------------------------------------------------------------

def class_weights(y, k):
  counts = np.bincount(y, minlength=k).astype(float)
  w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / k, 0.0)
  return tuple(float(v) for v in w)


def binary(split, classes):
  wd = np.isin(split["y"], [classes.index("WD"), classes.index("WD+M")])
  return {"x": split["x"], "y": wd.astype(np.int32)}


def logits(model_name, model_config, variables, x):
  from astrotl import models
  return train.predict(models.get(model_name, **model_config), variables, x)


def train_model(config, workdir, data):
  """Stage 1, then stage 2 on stage 1's frozen conv trunk; calibrated on validation, with
  the weights as the bundle stores them.  Returns (stage-1 and stage-2 variables,
  temperatures, a report)."""
  classes = list(config.classes)
  s1 = train.merged_config(config.stage1)
  s1.model_config = dict(config.model_config, num_classes=len(classes))
  s1.class_weights = class_weights(data["train"]["y"], len(classes))
  r1 = train.fit(s1, workdir / "stage1", {"train": data["train"], "validation": data["validation"]})
  target = {k: binary(v, classes) for k, v in data.items()}
  s2 = train.merged_config(config.stage2)
  s2.model_config = dict(config.model_config, num_classes=2)
  # No class weights: P(WD) then refers to the training mix (its WD fraction is the
  # bundle's `prior`), from which p_wd_survey moves it to a survey's by Bayes' rule.
  s2.class_weights = None
  s2.transfer.update({"skip": ("head/.*",), "freeze": "block_.*"})
  r2 = train.fit(s2, workdir / "stage2", {"train": target["train"],
                                          "validation": target["validation"]},
                 pretrained=r1.best_variables)
  v1, v2 = shipped(r1.best_variables, r2.best_variables)
  t1 = metrics.fit_temperature(logits("cnn1d", s1.model_config, v1, data["validation"]["x"]),
                               data["validation"]["y"])
  t2 = metrics.fit_temperature(logits("cnn1d", s2.model_config, v2, target["validation"]["x"]),
                               target["validation"]["y"])
  report = {"stage1_best": r1.best, "stage2_best": r2.best, "temperature_stage1": t1,
            "temperature_stage2": t2, "prior": float(np.mean(target["train"]["y"])),
            "seconds": r1.seconds + r2.seconds,
            "n_train": int(len(data["train"]["y"])), "n_validation": int(len(data["validation"]["y"])),
            "train_counts": dict(zip(classes, np.bincount(data["train"]["y"],
                                                           minlength=len(classes)).tolist()))}
  return (v1, v2), (t1, t2), (s1.model_config, s2.model_config), report


def shipped(v1, v2):
  """The two stages as the bundle will hold them (float16, int8 dense kernels)."""
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    path = pathlib.Path(d) / "b.npz"
    checkpoint.save_bundle(path, {"stage1": v1, "stage2": v2}, {}, int8=INT8)
    trees, _ = checkpoint.load_bundle(path)
  return trees["stage1"], trees["stage2"]


def make_bundle(variables, temperatures, model_configs, config, about, prior):
  classes = list(config.classes)
  meta = {
      "format": bundle.FORMAT, "name": "wd_two_stage",
      "input": dict(INPUT),
      "networks": {
          "stage1": {"model": "cnn1d", "config": dict(model_configs[0]), "output": "classes",
                     "classes": classes, "temperature": temperatures[0]},
          "stage2": {"model": "cnn1d", "config": dict(model_configs[1]), "output": "classes",
                     "classes": ["other", "WD"], "positive": "WD", "temperature": temperatures[1],
                     "prior": prior, "survey_prior": config.survey_prior}},
      "rule": {"type": "two_stage", "score": "p_wd", "threshold": float(config.threshold),
               "agree": "class1", "classes": ["WD", "WD+M"],
               "min_snr": float(config.min_snr) or None, "veto": list(config.veto)},
      "about": about}
  return bundle.Model({"stage1": variables[0], "stage2": variables[1]}, meta)


def fold_data(objects, train_groups, pools, config, seed):
  tr, val = split_validation(train_groups, objects, config.validation_fraction, seed)
  return {"train": build(objects, tr, pools, config, seed),
          "validation": build(objects, val, pools, config, seed + 1)}


# --- the stage-2 study: transfer vs scratch -------------------------------------------------

def subsample(split, n, seed):
  """n examples, half white dwarfs, half not (as far as available)."""
  rng = np.random.default_rng(seed)
  pos, neg = np.flatnonzero(split["y"] == 1), np.flatnonzero(split["y"] == 0)
  k = min(n // 2, len(pos))
  idx = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)])
  rng.shuffle(idx)
  return {"x": split["x"][idx], "y": split["y"][idx]}


def binary_report(p_wd, y, threshold):
  pred = (p_wd >= threshold).astype(int)
  pc = metrics.per_class(y, pred, 2)
  return {"accuracy": metrics.accuracy(y, pred), "wd_completeness": float(pc["completeness"][1]),
          "wd_purity": float(pc["purity"][1]), "n": int(len(y)), "n_wd": int(y.sum())}


def study(config, workdir, v1, data, test):
  """Stage 2 from N target labels: the transfer variants against training from scratch."""
  classes = list(config.classes)
  target = {k: binary(v, classes) for k, v in data.items()}
  test_b = binary(test, classes)
  variants = {
      "finetune_all": {"skip": ("head/.*",)},
      "frozen_stem": {"skip": ("head/.*",), "freeze": "block_.*"},
      "n_blocks_2": {"skip": ("head/.*",), "n_blocks": 2},
      "scratch": {"from_scratch": True},
  }
  runs = []
  for n in config.target_sizes:
    for seed in config.seeds:
      subset = subsample(target["train"], n, seed)
      for name in config.variants:
        c = train.merged_config(config.study)
        c.model_config = dict(config.model_config, num_classes=2)
        c.seed = int(seed)
        c.transfer.update(variants[name])
        r = train.fit(c, workdir / "study" / f"{name}_n{n}_s{seed}",
                      {"train": subset, "validation": target["validation"]},
                      pretrained=None if name == "scratch" else v1)
        z = logits("cnn1d", c.model_config, r.best_variables, test_b["x"])
        p = metrics.softmax(z)[:, 1]
        rep = binary_report(p, test_b["y"], config.threshold)
        real = test["source"] != "simulated"
        rep["false_positive_rate_real"] = float(np.mean(p[real & (test_b["y"] == 0)] >= config.threshold))
        step, secs = metrics.first_reaching(r.history, config.target_accuracy)
        rep.update(variant=name, n_train=n, seed=int(seed), best=r.best, seconds=r.seconds,
                   steps_to_target=step, seconds_to_target=secs)
        runs.append(rep)
        logging.info("study %s n=%d seed=%d: acc %.3f compl %.3f fp(real) %.3f", name, n, seed,
                     rep["accuracy"], rep["wd_completeness"], rep["false_positive_rate_real"])
  return runs, summarise(runs, config)


def summarise(runs, config):
  out = {}
  for name in config.variants:
    for n in config.target_sizes:
      sel = [r for r in runs if r["variant"] == name and r["n_train"] == n]
      if not sel:
        continue
      row = {}
      for key in ("accuracy", "wd_completeness", "wd_purity", "false_positive_rate_real", "seconds"):
        v = np.array([r[key] for r in sel], float)
        row[key] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v))}
      reached = [r["steps_to_target"] for r in sel if r["steps_to_target"] is not None]
      row["reached_target"] = f"{len(reached)}/{len(sel)}"
      row["steps_to_target_mean"] = float(np.mean(reached)) if reached else None
      out[f"{name}/n{n}"] = row
  return out


def plot_study(workdir, summary, config):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  keys = ("accuracy", "wd_completeness", "false_positive_rate_real")
  for name in config.variants:
    ns = [n for n in config.target_sizes if f"{name}/n{n}" in summary]
    for ax, key in zip(axes, keys):
      m = [summary[f"{name}/n{n}"][key]["mean"] for n in ns]
      s = [summary[f"{name}/n{n}"][key]["std"] for n in ns]
      ax.errorbar(ns, m, yerr=s, marker="o", capsize=3, label=name,
                  ls="--" if name == "scratch" else "-")
  for ax, key in zip(axes, ("test accuracy", "WD completeness", "false positives, real non-WDs")):
    ax.set_xscale("log")
    ax.set_xlabel("labelled target spectra (N)")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.suptitle("Stage 2 from N labels: transfer from stage 1 vs scratch (fold 0's held-out "
               f"objects; mean ± std over {len(config.seeds)} seeds)")
  fig.tight_layout()
  fig.savefig(workdir / "learning_curve.png", dpi=110)
  plt.close(fig)


# --- the cross-validated held-out rows: calibration and the baseline ------------------------

# Each fold's held-out rows are also kept here, in the repository: a fold takes most of an
# hour on two cores, so the cross-validation is done (and committed) in parts.
HELD_OUT = REPO / "experiments" / "results" / "wd_search" / "held_out"


def read_rows(workdir, folds):
  """Every fold's held-out rows: the workdir's, else the committed copy (HELD_OUT)."""
  import csv
  import gzip
  rows = []
  for k in range(folds):
    path = workdir / f"fold_{k}" / "held_out_rows.csv.gz"
    if not path.exists():
      path = HELD_OUT / f"fold_{k}.csv.gz"
    if path.exists():
      with gzip.open(path, "rt", newline="") as f:
        rows += [dict(r, fold=k) for r in csv.DictReader(f)]
  return rows


def _auc(p, y):
  """Area under the ROC curve (ties counted half)."""
  import scipy.stats
  r = scipy.stats.rankdata(p)
  n1, n0 = int(np.sum(y)), int(np.sum(1 - y))
  return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / max(n1 * n0, 1))


def held_out_summary(workdir, config):
  """What the folds' held-out rows say: reliability of P(WD) at the training mix (its ECE),
  the CNN's rule against the line-feature baseline per kind of spectrum, and AUCs."""
  rows = read_rows(workdir, config.folds)
  if not rows:
    return None
  wd = np.array([int(r["wd"]) for r in rows])
  p = np.array([float(r["p_wd"]) for r in rows])
  cand = np.array([int(r["candidate"]) for r in rows])
  p_lines = np.array([float(r["p_wd_lines"]) for r in rows])
  rel = metrics.reliability(p, wd.astype(bool))
  # The baseline's trees are balanced (class_weight), so 0.5 is not its comparable
  # cut: also give it the threshold that flags as many non-WDs as the CNN's rule does.
  fp_cnn = float(np.mean(cand[wd == 0]))
  matched = float(np.quantile(p_lines[wd == 0], 1 - fp_cnn)) if fp_cnn > 0 else float(
      p_lines[wd == 0].max() + 1e-9)
  def group(r):  # one table row per kind of spectrum
    if r["source"] == "simulated":
      return f"simulated {r['kind']}"
    if r["source"] == "CALSPEC" and r["label"] == "WD":
      return f"CALSPEC {r['kind'][:2] if r['kind'].startswith('D') else 'WD ' + r['kind']}"
    return f"{r['source']} {r['label']}"

  groups = [group(r) for r in rows]
  snr = np.array([float(r["snr"]) for r in rows])
  by_kind = {}
  for kind in sorted(set(groups)):
    sel = np.array([g == kind for g in groups])
    objects = {r["object"] for r, s in zip(rows, sel) if s}
    hi = sel & (snr >= 10)
    by_kind[kind] = {
        "wd": bool(wd[sel][0]), "n": int(sel.sum()), "n_objects": len(objects),
        "cnn_rule": float(cand[sel].mean()),
        # P(WD) >= 0.5 whatever stage 1 says: how much the rule leans on stage 1's class
        "stage2_alone": float(np.mean(p[sel] >= 0.5)),
        "stage2_alone_snr10": float(np.mean(p[hi] >= 0.5)) if hi.any() else None,
        "lines_at_0.5": float(np.mean(p_lines[sel] >= 0.5)),
        "lines_at_matched": float(np.mean(p_lines[sel] >= matched))}
  return {
      "n_rows": len(rows), "folds": sorted({r["fold"] for r in rows}),
      "training_mix_wd_fraction": float(wd.mean()),
      "reliability": {k: np.asarray(v).tolist() for k, v in rel.items()},
      "ece": rel["ece"],
      "auc": {"cnn_p_wd": _auc(p, wd), "lines_p_wd": _auc(p_lines, wd)},
      "false_positive_rate": {"cnn_rule": fp_cnn,
                              "lines_at_0.5": float(np.mean(p_lines[wd == 0] >= 0.5))},
      "recall": {"cnn_rule": float(cand[wd == 1].mean()),
                 "lines_at_0.5": float(np.mean(p_lines[wd == 1] >= 0.5)),
                 "lines_at_matched": float(np.mean(p_lines[wd == 1] >= matched))},
      "lines_matched_threshold": matched, "by_kind": by_kind}


# --- the run --------------------------------------------------------------------------------

def config_folds() -> int:
  return _CONFIG.value.folds if _CONFIG.value is not None else 5


def annotate(bundle_path, results_path):
  """Puts wd_real_check's measured rates for the bundle's own rule into its metadata."""
  res = json.loads(pathlib.Path(results_path).read_text())
  model = bundle.load_model(bundle_path)
  # wd_real_check.OWN_RULE_POOLED: one A-M star rate per S/N; per-letter cells of 2-7 objects
  # give posteriors so wide that the point value falls outside their interval
  name = "the model's own rule, A-M stars pooled"
  by_fraction = {frac: by_rule[name] for frac, by_rule in res["purity"].items()}
  about = dict(model.meta["about"])
  fp = next(iter(by_fraction.values()))["false_positive_rate"]  # the same at every fraction
  n_stars = res["cells"]["LAMOST A-M (all)"]["native"]["n_objects"]
  n_models = len({v for v in res.get("cv", {}).values() if v})  # fold models that scored
  about["false_positive_rate"] = {
      "median": fp["median"], "low": fp["95"][0], "high": fp["95"][1],
      "description": f"fraction of non-white-dwarf LAMOST spectra flagged, for the DR9 mix of "
                     f"classes and S/N in {res['command'].split()[1]} ({name}); median and 95% "
                     "interval of a Monte Carlo over the measured rates"}
  about["expected_purity"] = {
      "by_wd_fraction": {frac: {"median": p["purity"]["median"], "low": p["purity"]["95"][0],
                                "high": p["purity"]["95"][1],
                                "completeness": p["completeness"]["median"],
                                "completeness_95": p["completeness"]["95"]}
                         for frac, p in by_fraction.items()},
      "note": "white-dwarf fraction 0.005: Tan et al.'s pre-selected sample; 0.0005: a whole "
              f"LAMOST survey. Real objects scored by {n_models} cross-validation fold "
              f"model(s) that never saw them ({config_folds()} folds in all). Intervals come "
              f"from how few real test objects there are ({n_stars} LAMOST stars, a few O/B "
              "stars and hot subdwarfs), not only from measured false positives"}
  about["real_spectrum_check"] = {"command": res["command"], "cells": {
      k: {s: c["rate"] for s, c in v.items()} for k, v in res["cells"].items()}}
  model.with_meta(about=about).save(bundle_path, int8=INT8)
  logging.info("wrote the measured rates into %s", bundle_path)


def add_reference(bundle_path, config, data_dir):
  """Gives the bundle an anomaly reference: the primary network's embeddings of the final
  model's training spectra, rebuilt exactly as `main` built them (same seeds)."""
  import jax
  from astrotl import similar
  objects, fold, pools = setup(config, data_dir)
  x = fold_data(objects, set(fold), pools, config, config.seed + 1000)["train"]["x"]
  model = bundle.load_model(bundle_path)
  net = model.primary
  fn = jax.jit(lambda v, xb: net.model.apply(v, xb, output="embedding"))
  emb = np.concatenate([np.asarray(fn(net.variables, x[i:i + 256]), np.float32)
                        for i in range(0, len(x), 256)])
  about = model.meta["about"]["training_data"]
  similar.add_reference(model, embeddings=emb, size=REFERENCE_SIZE, training_data=about).save(
      bundle_path, int8=INT8)
  logging.info("added an anomaly reference of %d of %d training spectra to %s",
               min(len(emb), REFERENCE_SIZE), len(emb), bundle_path)


def setup(config, data_dir):
  """(real objects, group -> fold, pools: LAMOST noise templates and model-grid simulators)."""
  objects = real_objects(data_dir, list(config.classes))
  fold = assign_folds(objects, config.folds, config.seed)
  lamost_ivar = [np.where(o["mask"], 0.0, o["ivar"]) for o in objects if o["source"] == "LAMOST"]
  # noise shapes only (no labels involved)
  return objects, fold, {"templates": np.stack(lamost_ivar), "sims": simulators(data_dir)}


def fit_line_baseline(data, config):
  """The baseline an astronomer would try first, on the CNN's own training spectra (train
  and validation: the trees stop early on their own share): gradient-boosted trees on
  line-profile features (`astrotl.preprocess.lines`, experiments/line_baseline.py)."""
  import line_baseline  # pylint: disable=g-import-not-at-top
  classes = list(config.classes)
  x = np.concatenate([data[k]["features"] for k in ("train", "validation")])
  y = np.concatenate([binary(data[k], classes)["y"] for k in ("train", "validation")])
  return line_baseline.fit(x, y, seed=config.seed)


def score_held_out(bundle_path, lines_model, objects, held, pools, config, seed):
  """Spectra built like the training set from a fold's held-out objects (and that fold's
  share of simulated white dwarfs and featureless spectra), scored exactly as the scan
  scores them (wd_real_check.score: the bundle's jit function and its own rule), and by
  the line-feature baseline (p_wd_lines).  Rows for the calibration and baseline tables."""
  import line_baseline  # pylint: disable=g-import-not-at-top
  import wd_real_check  # pylint: disable=g-import-not-at-top
  test = build(objects, held, pools, config, seed, raw=True)
  out = wd_real_check.score(str(bundle_path), test["flux"], test["ivar"], test["mask"])
  p_lines = line_baseline.predict_proba(lines_model, test["features"])
  classes = list(config.classes)
  return [{"object": o, "source": src, "kind": kind, "label": classes[y],
           "wd": int(classes[y] in ("WD", "WD+M")), "snr": round(float(sn), 2),
           "p_wd": round(float(p), 5), "class1": c, "candidate": int(cand),
           "p_wd_lines": round(float(pl), 5)}
          for o, src, kind, y, sn, p, c, cand, pl in zip(
              test["object"], test["source"], test["kind"], test["y"], out["snr"], out["p_wd"],
              out["pred_class"], out["candidate"], p_lines)]


def write_rows(path, rows):
  import csv
  import gzip
  path.parent.mkdir(parents=True, exist_ok=True)
  with gzip.open(path, "wt", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def main(argv):
  del argv
  config = _CONFIG.value
  data_dir = real_spectra.shared_data(_DATA.value)
  if _ANNOTATE.value or _REFERENCE.value:
    if not _BUNDLE.value:
      raise app.UsageError("--annotate and --reference need --bundle")
    if _ANNOTATE.value:
      annotate(_BUNDLE.value, _ANNOTATE.value)
    if _REFERENCE.value:
      add_reference(_BUNDLE.value, config, data_dir)
    return
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  objects, fold, pools = setup(config, data_dir)
  counts = {}
  for o in objects:
    counts.setdefault(o["source"], {}).setdefault(o["label"], 0)
    counts[o["source"]][o["label"]] += 1
  logging.info("real objects: %s; reserved: %s", counts,
               [o["key"] for o in objects if reserved(o)])
  results_path = workdir / "results.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  results.update(config=config.to_dict(), objects=counts, cv_folds=_CV_FOLDS.value,
                 reserved=[o["key"] for o in objects if reserved(o)])
  cv = {}

  def save():
    results["seconds_total"] = time.time() - t0
    results_path.write_text(json.dumps(results, indent=1, default=common.json_default))

  fold_models = {}
  run_folds = ([int(k) for k in _CV_FOLDS.value] if _CV_FOLDS.value is not None
               else list(range(config.folds)))
  for k in range(config.folds):
    path = workdir / f"fold_{k}" / "model.npz"
    groups = {g for g, f in fold.items() if f != k}
    held = {g for g, f in fold.items() if f == k}
    if k not in run_folds:
      cv.update({o["key"]: None for o in objects if o["group"] in held})
      continue
    rows_path = workdir / f"fold_{k}" / "held_out_rows.csv.gz"
    if "folds" in _ONLY.value and not (path.exists() and rows_path.exists()):
      data = fold_data(objects, groups, pools, config, config.seed + 10 * k)
      if not path.exists():
        variables, temps, cfgs, report = train_model(config, workdir / f"fold_{k}", data)
        make_bundle(variables, temps, cfgs, config, {
            "training_data": f"cross-validation fold {k} of {config.folds}: every object but "
                            "this fold's", "held_out_groups": sorted(held)},
                    report["prior"]).save(path, int8=INT8)
        results.setdefault("folds", {})[str(k)] = report
        save()
      lines_model = fit_line_baseline(data, config)
      del data
      write_rows(rows_path, score_held_out(path, lines_model, objects, held, pools, config,
                                           config.seed + 10 * k + 7))
      HELD_OUT.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(rows_path, HELD_OUT / f"fold_{k}.csv.gz")
      logging.info("fold %d: held-out rows in %s (and %s)", k, rows_path, HELD_OUT)
    if not path.exists():  # not trained yet (e.g. --only=final): no model has held them out
      cv.update({o["key"]: None for o in objects if o["group"] in held})
      continue
    fold_models[k] = path
    for o in objects:
      if o["group"] in held:
        full = path.resolve()
        cv[o["key"]] = str(full.relative_to(REPO.resolve()) if full.is_relative_to(
            REPO.resolve()) else full)
  (workdir / "cv.json").write_text(json.dumps(cv, indent=1))
  (workdir / "lamost_files.txt").write_text(
      "\n".join(o["key"] for o in objects if o["source"] == "LAMOST") + "\n")

  if "summary" in _ONLY.value:
    summary = held_out_summary(workdir, config)
    if summary:
      results["held_out"] = summary
      save()
      logging.info("held-out rows of folds %s: ECE %.3f, AUC CNN %.4f / lines %.4f",
                   summary["folds"], summary["ece"], summary["auc"]["cnn_p_wd"],
                   summary["auc"]["lines_p_wd"])

  if "final" in _ONLY.value and _BUNDLE.value:
    groups = set(fold)
    data = fold_data(objects, groups, pools, config, config.seed + 1000)
    variables, temps, cfgs, report = train_model(config, workdir / "final", data)
    del data
    train_counts = report["train_counts"]
    trained = {}  # objects per source and class, the reserved ones left out
    for o in objects:
      if not reserved(o):
        trained.setdefault(o["source"], {}).setdefault(o["label"], 0)
        trained[o["source"]][o["label"]] += 1
    about = {
        "trained_by": "python experiments/wd_search.py --config=astrotl/configs/wd_search.py "
                      f"--workdir={workdir} --bundle={_BUNDLE.value}",
        "training_data": (
            f"real LAMOST A-M stars (pilot/DR1-DR9 and DR10 A/F/G: "
            f"{trained.get('LAMOST', {})}), each also degraded to S/N "
            f"{config.snr_range[0]:g}-{config.snr_range[1]:g}; real HST CALSPEC spectra "
            f"({trained.get('CALSPEC', {})} objects: white dwarfs DA/DB/DO, hot subdwarfs, O/B, "
            "A-M stars) made LAMOST-like at S/N "
            f"{config.snr_range[0]:g}-{config.snr_range[1]:g}; simulated DA (Warwick and "
            f"Koester, {config.teff_range[0]:g}-{config.teff_range[1]:g} K) and DB (Koester, "
            f"{config.db_teff_range[0]:g}-{config.db_teff_range[1]:g} K) white dwarfs and DA+M "
            "binaries; featureless and emission-line continua (class 'other'); all with the "
            "measured LAMOST response, LAMOST noise shapes, half blurred to R 700-1800, every "
            f"spectrum tilted by lambda^alpha (|alpha| <= {config.tilt:g}) and "
            f"{config.spike_fraction:.0%} given narrow spikes. Out of scope: DC white dwarfs "
            "(line-less: not told from other featureless spectra), DQ/DZ and magnetic white "
            "dwarfs; not in training: CVs, real QSOs and galaxies."),
        "train_counts": train_counts,
        "reserved_objects": [o["key"] for o in objects if reserved(o)]}
    make_bundle(variables, temps, cfgs, config, about, report["prior"]).save(_BUNDLE.value, int8=INT8)
    results["final"] = report
    save()
    logging.info("wrote %s", _BUNDLE.value)

  if "study" in _ONLY.value and fold_models:
    groups = {g for g, f in fold.items() if f != 0}
    held = {g for g, f in fold.items() if f == 0}
    data = fold_data(objects, groups, pools, config, config.seed)
    test = build(objects, held, pools, config, config.seed + 7)
    source = bundle.load_model(fold_models[0]).networks["stage1"].variables
    runs, summary = study(config, workdir, source, data, test)
    results.update(study_runs=runs, study_summary=summary)
    save()
    plot_study(workdir, summary, config)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  configs.run(main)  # --config=NAME finds the packaged config
