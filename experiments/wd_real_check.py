r"""The white-dwarf model on real spectra: recall, false positives and expected purity.

  python experiments/wd_real_check.py --workdir=workdir/wd_real_check \
      [--model=bundle.npz] [--cv=cv.json] [--lamost_files=test_stars.txt] [--draws=20]

Every real spectrum is scored by `score`, the one function that touches the scan: raw
arrays through the scan model's own jit function and its default candidate rule.

- HST CALSPEC spectra (white dwarfs DA/DB/DO/unknown, PN nucleus, hot subdwarfs, O/B, A,
  F/G/K, M) and SDSS spectra (QSOs, galaxies, the BOSS white dwarf) become LAMOST-like
  (`astrotl.preprocess.degrade.lamost_like`: observed range only, SDSS convolved to
  R = 1800, an instrument response, noise shaped like the ivar of a random one of all real
  LAMOST stars) at each --snrs value, --draws times with independent response and noise.  An S/N above a
  spectrum's own is skipped (it cannot be made).
- Real LAMOST stars (the test split of the lamost_lrs mirror dataset by default, or
  --lamost_files) at their native S/N and degraded (`degrade.degrade`) to each
  --lamost_snrs value below their own, --draws times.
- --cv maps an object (CALSPEC object_prefix, SDSS object = first file's name, LAMOST file)
  to the bundle that must score it (one that never saw it); others get --model.  An object
  mapped to null was trained on by every model at hand and is not scored.

Rates are per object: each object counts once, with the fraction of its draws flagged (draws
of one object are correlated).  95% intervals are Wilson score intervals with n = number
of objects.  The expected purity of a LAMOST DR9 scan mixes these rates over an assumed
population (--population, --wd_fraction, --wd_mix) and S/N distribution (--snr_mix, by
default from the snrg column of a LAMOST catalogue extract); its interval is Monte Carlo
over Jeffreys Beta posteriors of every rate (n = objects).

Writes results.json, table.md (also printed), rows.csv.gz (one row per scored spectrum),
rates_vs_snr.png and objects.png into --workdir.
"""

import collections
import csv
import gzip
import json
import pathlib
import sys
import time
import zlib

from absl import app, flags, logging
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=g-import-not-at-top
import real_spectra  # noqa: E402  pylint: disable=g-import-not-at-top

from astrotl.preprocess import degrade, simulate, spectra  # noqa: E402

FLAGS = flags.FLAGS

# Population of LAMOST DR9 v1.0 LRS (fractions of all spectra; white dwarfs come on top,
# see --wd_fraction).  Sources:
#   STAR/GALAXY/QSO: 10,907,516 / 242,569 / 76,167 of 11,226,252 spectra, LAMOST DR9 v1.0
#     LRS data-production description (www.lamost.org/dr9/v1.0/).
#   OB: 22,901 OB spectra in LAMOST DR5 (~9.0e6 spectra; Liu et al. 2019, ApJS 241, 32).
#   hot_subdwarf: ~1e3-2e3 hot subdwarfs in published LAMOST catalogues among ~1e7 spectra
#     (order of magnitude, not verified here).
#   A and M: assumed 5% and 7% of stars (rough: sizes of LAMOST's A-star and M-star
#     catalogues relative to the general catalogue, not verified here).
#   F:G:K = 1280:1075:763, the AFGK stars of the LearningLAMOST DR1 catalogue extract
#     (spectra/catalogs/learninglamost_my_data3.csv.gz).
POPULATION = "A:0.0486,F:0.3499,G:0.2939,K:0.2086,M:0.0680,OB:0.0025,hot_subdwarf:0.0002," \
             "QSO:0.0068,GALAXY:0.0216"
# White-dwarf subtypes we can measure, roughly as in magnitude-limited spectroscopic samples
# (Kepler et al. 2016, 2019: DA ~80-85%, DB ~8%, DO <1%); DC/DQ/DZ (~10%) have no real
# spectrum here and are left out, so "recall" means recall of DA/DB/DO white dwarfs.
WD_MIX = "DA:0.90,DB:0.09,DO:0.01"
SNR_CATALOG = "spectra/catalogs/learninglamost_my_data3.csv.gz"
LAMOST_LETTERS = ("A", "F", "G", "K", "M")
# Which measured rows stand for each population class.
SOURCE_OF = {"A": "LAMOST A", "F": "LAMOST F", "G": "LAMOST G", "K": "LAMOST K", "M": "LAMOST M",
             "OB": "CALSPEC O/B", "hot_subdwarf": "CALSPEC hot subdwarf", "QSO": "SDSS QSO",
             "GALAXY": "SDSS galaxy"}
OWN_RULE = "the model's own rule"
OWN_RULE_POOLED = "the model's own rule, A-M stars pooled"
POOLED_STARS = "LAMOST A-M (all)"
CALSPEC_GROUPS = {"hot_subdwarf": "CALSPEC hot subdwarf", "OB": "CALSPEC O/B", "A": "CALSPEC A",
                  "FGK": "CALSPEC F/G/K", "M_L_T": "CALSPEC M/L/T",
                  "PN_nucleus": "CALSPEC PN nucleus"}


def define_flags():
  """Flags, defined only when run as a program so that tests can import `score`."""
  f = flags
  f.DEFINE_string("workdir", "workdir/wd_real_check", "Output directory.")
  f.DEFINE_string("data_dir", None, "Shared data folder (default ../shared/data).")
  f.DEFINE_string("model", None, "Model bundle (default: the bundled model).")
  f.DEFINE_string("cv", None, "JSON {object: bundle path}: objects scored by another bundle.")
  f.DEFINE_integer("draws", 20, "Noise/response draws per object and S/N.")
  f.DEFINE_integer("seed", 0, "Random seed.")
  f.DEFINE_list("snrs", ["5", "10", "20", "40"], "S/N of the LAMOST-like CALSPEC/SDSS spectra.")
  f.DEFINE_list("lamost_snrs", ["5", "8", "10", "20", "40"], "S/N real LAMOST stars are "
                "degraded to.")
  f.DEFINE_string("lamost_split", "test", "lamost_lrs mirror split of the LAMOST stars "
                  "(train, validation, test, all), unless --lamost_files is given.")
  f.DEFINE_string("lamost_files", None, "Text/CSV file listing the LAMOST files to use.")
  f.DEFINE_string("response", "empirical", "Instrument response: empirical, none, or a "
                  "float (the simulator's Legendre sigma).")
  f.DEFINE_list("wd_fraction", ["0.005", "0.0005"], "White-dwarf fractions of the scanned "
                "spectra: 0.5% in Tan et al.'s pre-selected 1.12 M spectra, about 0.05% over "
                "a whole LAMOST survey (Guo et al. 2022: ~2,900 in DR5's ~9 M).")
  f.DEFINE_string("population", POPULATION, "class:fraction of the non-WD spectra.")
  f.DEFINE_string("wd_mix", WD_MIX, "subtype:fraction of the white dwarfs.")
  f.DEFINE_string("snr_mix", None, "snr:fraction over --snrs (default: the snrg column of "
                  f"{SNR_CATALOG}, each spectrum at the nearest --snrs value in log).")
  f.DEFINE_list("min_snr", ["10"], "Rule variants: also report a minimum-S/N rule at these.")
  f.DEFINE_integer("mc", 20000, "Monte Carlo draws for the purity interval.")
  f.DEFINE_integer("batch_size", 256, "Spectra per device step (as the scan).")
  f.DEFINE_integer("spikes", 3, "Copies of each real LAMOST star with one injected spike.")
  f.DEFINE_integer("cam_draws", 3, "Grad-CAM Balmer share on this many draws of each DA (at "
                   "S/N 20) and of each LAMOST A star (native); 0: none.")


# --- all contact with the scan ------------------------------------------------------------

_MODELS = {}


def score(model, flux, ivar, mask, u=None, batch_size=256, survey_class=None):
  """Scores spectra exactly as `python -m astrotl.scan` does; the only function here that
  touches the scan.

  model: a bundle path or name, None (the bundled model) or a loaded `astrotl.bundle.Model`.
  flux, ivar, mask: (n, npix) on the common grid (u None), or raw arrays (n, RAW_LEN) at
  grid-pixel positions u, as `astrotl.io.batch.decode` gives them.
  Returns dict(candidate (n,) bool by the model's own candidate rule (astrotl.rules), as
  the scan applies it; p_wd (n,); stage1 (n, classes) probabilities; pred_class; classes).
  """
  import jax
  from astrotl import inference, parallel, rules
  model = loaded(model)
  if not hasattr(model, "_real_check_fn"):
    mesh = parallel.make_mesh(jax.local_devices())
    model._real_check_fn = (mesh, model.make_fn(mesh), parallel.replicate(model.variables(), mesh))
  mesh, fn, variables = model._real_check_fn
  n_dev = mesh.devices.size
  batch_size = max(n_dev, batch_size // n_dev * n_dev)
  u, flux, ivar, mask = raw_arrays(flux, ivar, mask, u)
  n = len(flux)
  wave = 10.0 ** (spectra.LOGLAM0 + spectra.DLOGLAM * u.astype(np.float64))
  outs = []
  for i in range(0, n, batch_size):
    host = {"u": u[i:i + batch_size],
            "flux": np.nan_to_num(np.asarray(flux[i:i + batch_size], np.float32)),
            "ivar": np.nan_to_num(np.asarray(ivar[i:i + batch_size], np.float32)),
            "mask": np.asarray(mask[i:i + batch_size], bool)}
    m = len(host["u"])
    snr = spectra.snr(host["flux"], host["ivar"], host["mask"], wave[i:i + m]).astype(np.float32)
    host, _ = parallel.pad_rows(host, batch_size)
    arrays = parallel.shard_batch(host, mesh, batch_size)
    out = fn(variables, *(arrays[k] for k in inference.DEVICE_KEYS))
    outs.append({"snr": snr, **{k: np.asarray(jax.device_get(v))[:m] for k, v in out.items()}})
  outs = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  cols = model.outputs_to_columns(outs)
  if survey_class is not None:
    cols["survey_class"] = np.broadcast_to(np.asarray(survey_class, str), (n,))
  stage1 = next(iter(model.networks))
  return {"candidate": rules.select(model.rule, cols), "p_wd": cols[model.rule["score"]],
          "stage1": outs[stage1], "pred_class": cols[model.rule["agree"]],
          "classes": list(model.classes), "snr": cols["snr"]}


def loaded(model):
  """A bundle path or name (None: the bundled model) as a Model, loaded once."""
  from astrotl import bundle
  if isinstance(model, bundle.Model):
    return model
  key = "wd_two_stage" if model is None else str(model)
  if key not in _MODELS:
    _MODELS[key] = bundle.load_model(key)
  return _MODELS[key]


def raw_arrays(flux, ivar, mask, u=None):
  """(u, flux, ivar, mask) as `astrotl.io.batch.decode` gives them, (n, RAW_LEN): arrays on
  the common grid (u None) are padded as decode pads a spectrum already on the grid."""
  from astrotl.io import batch as io_batch
  flux = np.atleast_2d(flux)
  n = len(flux)
  ivar, mask = (np.broadcast_to(a, flux.shape) for a in (ivar, mask))
  if u is None:
    raw = io_batch.RAW_LEN
    pad = raw - flux.shape[1]
    u = np.broadcast_to(np.arange(raw, dtype=np.float32), (n, raw))
    flux = np.pad(np.asarray(flux, np.float32), ((0, 0), (0, pad)))
    ivar = np.pad(np.asarray(ivar, np.float32), ((0, 0), (0, pad)))
    mask = np.pad(np.asarray(mask, bool), ((0, 0), (0, pad)), constant_values=True)
  return np.asarray(u, np.float32), flux, ivar, mask


# Balmer windows of the Grad-CAM share: the line-feature windows of Halpha-Hdelta and
# Hepsilon (astrotl.preprocess.lines.LINES), fixed before any map was looked at.
CAM_LINES = ("ha", "hb", "hg", "hd", "he")


def cam_balmer_share(model, items):
  """Grad-CAM of the positive class of the model's white-dwarf network on (u, f, v, m)
  items: per item, the map's share in the Balmer windows over the windows' share of the
  pixels (1 = no preference for the lines); NaN where every map is empty (nothing in the
  spectrum raises the white-dwarf score: most ordinary stars)."""
  from astrotl import explain, inference
  from astrotl.preprocess import lines
  model = loaded(model)
  net = next(n for n in model.networks.values() if n.meta.get("positive"))
  target = net.classes.index(net.meta["positive"])
  out = []
  for u, f, v, m in items:
    u, f, v, m = raw_arrays(f, v, m, u)
    raw = {"u": u, "flux": np.nan_to_num(f).astype(np.float32),
           "ivar": np.nan_to_num(v).astype(np.float32), "mask": np.asarray(m, bool)}
    x = inference.network_inputs(raw, model.input)
    wave = spectra.binned(spectra.wavelength_grid(), int(model.input.get("bin", 1)))[:x.shape[1]]
    window = np.zeros(len(wave), bool)
    for name, centre, half, *_ in lines.LINES:
      if name in CAM_LINES:
        window |= np.abs(wave - centre) <= half
    maps = explain.cam(net.model, net.variables, x, target=target)
    total = maps.sum(1)
    share = np.where(total > 0, maps[:, window].sum(1) / np.maximum(total, 1e-12), np.nan)
    ratio = share / window.mean()
    out.append(float(np.nanmean(ratio)) if np.isfinite(ratio).any() else float("nan"))
  return out


# --- the spectra ------------------------------------------------------------------------

def rng_for(seed, name, snr):
  """A generator per (object file, S/N): results do not depend on which others are run."""
  return np.random.default_rng([seed, zlib.crc32(str(name).encode()), int(round(snr * 100))])


def lamost_templates(data_dir):
  """ivar patterns (k, npix) on the grid of every real LAMOST star: the noise shapes."""
  from astrotl import io as aio
  out = []
  for row in real_spectra.lamost_files(data_dir, "all"):
    s = aio.read(row["path"])
    if (s.meta.get("class") or "").upper() != "STAR":
      continue
    _, v, m = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    out.append(np.where(m, 0.0, v))
  return np.stack(out)


def converted(spec, snrs, draws, seed, templates, response, observed=None, resolution=None):
  """LAMOST-like draws of one real spectrum (an astrotl.io.Spectrum) at each S/N it
  reaches.  Returns (its own S/N, [(snr, flux, ivar, mask)]) with (draws, npix) arrays."""
  f, v, m = degrade.to_grid(spec.wavelength, spec.flux, spec.ivar, spec.mask, observed,
                            resolution)
  return converted_grid(spec.meta["file"], f, v, m, snrs, draws, seed, templates, response)


def converted_grid(name, f, v, m, snrs, draws, seed, templates, response):
  """`converted` for a spectrum already on the grid (v None: noise-free, e.g. a model)."""
  own = np.inf if v is None else spectra.snr(f, v, m)
  out = []
  for snr in snrs:
    if not own >= snr:
      continue
    rng = rng_for(seed, name, snr)
    tmpl = templates[rng.integers(0, len(templates), draws)]
    out.append((snr,) + degrade.lamost_like(None, f, rng, np.full(draws, float(snr)), tmpl,
                                            mask=m, ivar=v, response=response))
  return own, out


def lamost_draws(path, snrs, draws, seed):
  """A real LAMOST file as the scan decodes it: native raw arrays, and `draws` degraded
  copies at each S/N below its own.  Returns (own S/N, meta, [(snr, u, flux, ivar, mask)])."""
  from astrotl.io import batch as io_batch
  raw, meta = io_batch.decode(path)
  wave = 10.0 ** (spectra.LOGLAM0 + spectra.DLOGLAM * raw["u"].astype(np.float64))
  own = spectra.snr(raw["flux"], raw["ivar"], raw["mask"], wave)
  rows = [("native",) + tuple(raw[k][None] for k in ("u", "flux", "ivar", "mask"))]
  for snr in snrs:
    if not own > snr:
      continue
    f, v, m, _ = degrade.degrade(np.repeat(raw["flux"][None], draws, 0), raw["ivar"],
                                 raw["mask"], snr, rng_for(seed, path.name, snr), wave)
    rows.append((snr, np.repeat(raw["u"][None], draws, 0), f, v, m))
  return own, meta, rows


def spiked(native, n, rng):
  """n copies of a star's native raw arrays (u, flux, ivar, mask: (1, m)), each with one
  unmasked spike 5-20x its median flux, 1-3 pixels wide, somewhere in the network's
  pixels (a cosmic ray or a sky-line residual)."""
  u, f, v, m = (np.repeat(a, n, 0) for a in native)
  f = f.astype(np.float64)
  inside = np.flatnonzero((u[0] < spectra.TAN_NPIX) & ~m[0])
  level = np.median(np.abs(f[0, inside])) if inside.size else 1.0
  for i in range(n):
    w = int(rng.integers(1, 4))
    at = inside[rng.integers(0, max(inside.size - w, 1))] if inside.size else 0
    f[i, at:at + w] += rng.uniform(5.0, 20.0) * level
  return u, f.astype(np.float32), v, m


PHYSICS_DA = ("WD DA lines cut", "WD DA tilted +1.5", "WD DA tilted -1.5")
PHYSICS_SYNTHETIC = ("synthetic blackbody 12-40 kK", "synthetic power law or flat",
                     "WD DC (Koester models)")


def physics(data, snrs, draws, templates, response, bundle_for, add):
  """The physics checks of the white-dwarf model, as rows like the others:
  - every CALSPEC DA with its Balmer lines cut out (`degrade.cut_lines`), and tilted by
    (lambda / 5500 A)^+-1.5, each scored by the model that never saw that DA;
  - featureless blackbodies (12,000-40,000 K) and power laws F_lambda ~ lambda^-3..+1
    (0 = flat), and line-less cool Koester models (DC white dwarfs: DA 4,000-5,000 K,
    DB 8,000-11,000 K), scored by --model."""
  from astrotl.io import calspec, wd_models
  wave = spectra.wavelength_grid()
  for row in real_spectra.calspec_files(data):
    if row["group"] != "WD" or row["subtype"] != "DA":
      continue
    spec = calspec.read(row["path"])
    f, v, m = degrade.to_grid(spec.wavelength, spec.flux, spec.ivar, spec.mask, row["observed"])
    curves = {"WD DA lines cut": np.ones_like(f), "WD DA tilted +1.5": degrade.tilt(wave, 1.5),
              "WD DA tilted -1.5": degrade.tilt(wave, -1.5)}
    for label in PHYSICS_DA:
      g = degrade.cut_lines(wave, f) if label.endswith("cut") else f * curves[label]
      _, outs = converted_grid(f"{row['file']}:{label}", g, v / curves[label] ** 2, m, snrs,
                               draws, FLAGS.seed, templates, response)
      for snr, ff, vv, mm in outs:
        add(bundle_for(row["object"]), {"source": "CALSPEC", "label": label,
                                        "object": row["object"], "file": row["file"],
                                        "subtype": "DA", "snr": snr}, None, ff, vv, mm)
  models = {f"blackbody {t:g} K": simulate.blackbody(t, wave)
            for t in (12000, 15000, 20000, 25000, 30000, 40000)}
  models.update({f"power law {b:+g}": degrade.tilt(wave, b) for b in (-3, -2, -1, 0, 1)})
  for kind, teffs in (("da", (4000, 4500, 5000)), ("db", (8000, 9500, 11000))):
    path = data / "spectra" / "wd_models" / f"koester_{kind}"
    if path.is_dir():
      sim = simulate.Simulator(wd_models.read_koester_grid(path, kind))
      models.update({f"D{kind[-1].upper()} {t} K log g 8": sim.model(t, 8.0) for t in teffs})
  for name, model in models.items():
    label = PHYSICS_SYNTHETIC[0 if name.startswith("black") else 1 if name.startswith("power")
                              else 2]
    _, outs = converted_grid(name, model, None, None, snrs, draws, FLAGS.seed, templates,
                             response)
    for snr, ff, vv, mm in outs:
      add(FLAGS.model or "wd_two_stage", {"source": "synthetic", "label": label,
                                          "object": name, "file": name, "subtype": "",
                                          "snr": snr}, None, ff, vv, mm)


# --- statistics -------------------------------------------------------------------------

def wilson(p, n, z=1.959964):
  """Wilson score interval for a proportion p observed over n (n may be fractional)."""
  if n <= 0:
    return float("nan"), float("nan")
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def cell(fractions):
  """Rate over objects (each the fraction of its draws flagged) with its interval."""
  fr = np.asarray(list(fractions.values()), float)
  n = len(fr)
  p = float(fr.mean()) if n else float("nan")
  lo, hi = wilson(p, n)
  return {"rate": p, "low": lo, "high": hi, "n_objects": n,
          "per_object": {k: round(float(v), 4) for k, v in fractions.items()}}


def parse_mix(text):
  out = {}
  for item in text.split(","):
    k, v = item.split(":")
    out[k.strip()] = float(v)
  return out


def snr_mix_from_catalog(path, snrs):
  """Fraction of catalogue spectra nearest (in log) to each S/N of `snrs`."""
  with gzip.open(path, "rt", newline="") as f:
    snrg = np.array([float(r["snrg"]) for r in csv.DictReader(f) if r.get("snrg")])
  snrs = np.asarray(snrs, float)
  nearest = np.argmin(np.abs(np.log(np.maximum(snrg, 1e-3))[:, None] - np.log(snrs)[None]), 1)
  counts = np.bincount(nearest, minlength=len(snrs))
  return {float(s): float(c / counts.sum()) for s, c in zip(snrs, counts)}, {
      "n": int(snrg.size), "median": float(np.median(snrg)),
      "below_first": float(np.mean(snrg < snrs[0]))}


def purity(cells, snrs, population, wd_fraction, wd_mix, snr_mix, n_mc, seed, min_snr=0.0,
           veto=(), pool=None):
  """Expected purity, false-positive rate and completeness of a scan with this mix: the
  median and 95% interval of a Monte Carlo over Jeffreys Beta posteriors of every rate
  (n = objects).

  cells: {row label: {snr: cell}}.  A class missing at some S/N takes its nearest measured
  S/N.  min_snr: spectra below it are never candidates.  veto: classes the survey CLASS
  removes (assumed perfectly: none of them flagged, no white dwarf lost).  pool: a row
  (POOLED_STARS) whose rates stand for every A-M class, instead of one row per letter:
  per-letter cells of 2-7 objects at high S/N give Beta posteriors so wide that they,
  not any measured false positive, set the interval.
  """
  rng = np.random.default_rng(seed)
  weight = {s: w for s, w in snr_mix.items() if s >= min_snr}

  def rate_draws(label, snr):
    row = cells.get(label, {})
    have = [s for s in row if s != "native" and row[s]["n_objects"] > 0]
    if not have:
      return None, None, None
    s = min(have, key=lambda h: abs(np.log(h) - np.log(snr)))
    c = row[s]
    k, n = c["rate"] * c["n_objects"], c["n_objects"]
    return c["rate"], rng.beta(k + 0.5, n - k + 0.5, n_mc), s

  wd_mc, unmeasured = np.zeros(n_mc), []
  for sub, frac in wd_mix.items():
    if rate_draws(f"WD {sub}", 1.0)[0] is None:
      unmeasured.append(f"WD {sub}")
      continue
    for s, w in weight.items():
      wd_mc += frac * w * rate_draws(f"WD {sub}", s)[1]
  other = (1 - wd_fraction)
  fp_mc, by_class, fallback = np.zeros(n_mc), {}, []
  for cls, frac in population.items():
    if cls in veto:
      by_class[cls] = np.zeros(n_mc)
      continue
    source = pool if pool and cls in LAMOST_LETTERS else SOURCE_OF[cls]
    if rate_draws(source, 1.0)[0] is None:
      unmeasured.append(cls)
      continue
    mc = np.zeros(n_mc)
    for s, w in weight.items():
      _, d, used = rate_draws(source, s)
      if used != s:
        fallback.append(f"{cls} at S/N {s:g} uses S/N {used:g}")
      mc += other * frac * w * d
    fp_mc += mc
    by_class[cls] = mc
  tp_mc = wd_fraction * wd_mc
  pur_mc = tp_mc / np.maximum(tp_mc + fp_mc, 1e-300)

  def summary(x):
    return {"median": float(np.median(x)), "95": np.percentile(x, [2.5, 97.5]).tolist()}

  # Medians of the Monte Carlo draws, never plug-in values: with few objects per cell a
  # plug-in rate can fall outside its own interval.
  return {
      "false_positive_rate": summary(fp_mc / other), "purity": summary(pur_mc),
      "completeness": summary(wd_mc),
      "candidates_per_million": {"white dwarfs": 1e6 * float(np.median(tp_mc)),
                                 **{k: 1e6 * float(np.median(v)) for k, v in by_class.items()}},
      "wd_fraction": wd_fraction, "min_snr": min_snr, "veto": list(veto), "pool": pool,
      "snr_fallbacks": fallback, "left_out_unmeasured": unmeasured}


# --- the run ----------------------------------------------------------------------------

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  t0 = time.time()
  workdir = pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data = real_spectra.shared_data(FLAGS.data_dir)
  snrs = [float(s) for s in FLAGS.snrs]
  lamost_snrs = [float(s) for s in FLAGS.lamost_snrs]
  response = {"empirical": "empirical", "none": None}.get(FLAGS.response)
  if FLAGS.response not in ("empirical", "none"):
    response = float(FLAGS.response)
  cv = json.loads(pathlib.Path(FLAGS.cv).read_text()) if FLAGS.cv else {}
  draws = FLAGS.draws

  cv_used = set()

  skipped = []  # trained on by every model at hand (cv null): not scored

  def bundle_for(*names):
    for name in names:
      if name in cv:
        cv_used.add(name)
        if cv[name] is None:
          skipped.append(names[0])
        return cv[name]
    return FLAGS.model or "wd_two_stage"

  rows = []  # one dict per scored spectrum
  pending = collections.defaultdict(list)  # bundle -> [(row meta, u or None, f, v, m)]

  def flush(bundle, force=False):
    items = pending[bundle]
    total = sum(len(it[2]) for it in items)
    if not items or (total < 4 * FLAGS.batch_size and not force):
      return
    for u_is_raw in (False, True):
      sel = [it for it in items if (it[1] is not None) == u_is_raw]
      if not sel:
        continue
      cat = lambda j: np.concatenate([it[j] for it in sel])
      out = score(bundle, cat(2), cat(3), cat(4), cat(1) if u_is_raw else None,
                  FLAGS.batch_size)
      i = 0
      for meta, _, f, _, _ in sel:
        for d in range(len(f)):
          rows.append(dict(meta, draw=d, candidate=bool(out["candidate"][i]),
                           p_wd=float(out["p_wd"][i]), pred_class=str(out["pred_class"][i])))
          i += 1
    pending[bundle] = []

  cam_items = collections.defaultdict(list)  # (bundle, kind) -> [(object, (u, f, v, m))]

  def add(bundle, meta, u, f, v, m):
    if bundle is None:
      return
    kind = ("DA" if meta["label"].startswith("WD DA") and meta["snr"] == 20.0 else
            "LAMOST A" if meta["label"] == "LAMOST A" and meta["snr"] == "native" else None)
    if kind and FLAGS.cam_draws:
      k = FLAGS.cam_draws
      cam_items[(bundle, kind)].append(
          (meta["object"], (None if u is None else u[:k], f[:k], v[:k], m[:k])))
    pending[bundle].append((meta, u, f, v, m))
    flush(bundle)

  logging.info("reading LAMOST noise templates")
  templates = lamost_templates(data)
  own_snr = {}
  from astrotl.io import calspec, sdss
  for row in real_spectra.calspec_files(data):
    spec = calspec.read(row["path"])
    label = ("WD " + row["subtype"]) if row["group"] == "WD" else CALSPEC_GROUPS[row["group"]]
    own, outs = converted(spec, snrs, draws, FLAGS.seed, templates, response, row["observed"])
    own_snr[row["file"]] = own
    bundle = bundle_for(row["object"])
    for snr, f, v, m in outs:
      add(bundle, {"source": "CALSPEC", "label": label, "object": row["object"],
                   "file": row["file"], "subtype": row["subtype"], "snr": snr}, None, f, v, m)
  for row in real_spectra.sdss_files(data):
    spec = sdss.read(row["path"])
    label = {"WD": "WD DA (SDSS BOSS)", "QSO": "SDSS QSO", "GALAXY": "SDSS galaxy"}[row["group"]]
    own, outs = converted(spec, snrs, draws, FLAGS.seed, templates, response,
                          resolution=real_spectra.SDSS_R)
    own_snr[row["file"]] = own
    bundle = bundle_for(row["object"], row["file"])
    for snr, f, v, m in outs:
      add(bundle, {"source": "SDSS", "label": label, "object": row["object"],
                   "file": row["file"], "subtype": row["subtype"], "snr": snr}, None, f, v, m)
  physics(data, snrs, draws, templates, response, bundle_for, add)
  lamost = real_spectra.lamost_files(data, FLAGS.lamost_split, FLAGS.lamost_files)
  for row in lamost:
    own, meta, outs = lamost_draws(row["path"], lamost_snrs, draws, FLAGS.seed)
    own_snr[row["file"]] = own
    letter = spectra.spectral_letter(row["subclass"] or meta.get("subclass") or "")
    cls = (meta.get("class") or "").upper()
    label = "LAMOST QSO" if cls == "QSO" else (f"LAMOST {letter}" if cls == "STAR" and
                                                letter in LAMOST_LETTERS else "LAMOST other")
    bundle = bundle_for(row["file"], row["path"].name)
    for snr, u, f, v, m in outs:
      add(bundle, {"source": "LAMOST", "label": label, "object": row["file"],
                   "file": row["file"], "subtype": row["subclass"] or "", "snr": snr},
          u, f, v, m)
    if label[7:] in LAMOST_LETTERS and FLAGS.spikes:
      u, f, v, m = spiked(outs[0][1:], FLAGS.spikes, rng_for(FLAGS.seed, row["file"], 0))
      add(bundle, {"source": "LAMOST", "label": "LAMOST A-M spiked", "object": row["file"],
                   "file": row["file"], "subtype": row["subclass"] or "", "snr": "native"},
          u, f, v, m)
  for bundle in list(pending):
    flush(bundle, force=True)
  logging.info("scored %d spectra in %.0f s", len(rows), time.time() - t0)
  cam = collections.defaultdict(dict)  # kind -> object -> mean share ratio of its draws
  for (bundle, kind), items in cam_items.items():
    for obj, ratio in zip([o for o, _ in items], cam_balmer_share(bundle, [it for _, it in items])):
      cam[kind][obj] = ratio
  cam_summary = {}
  for kind, v in cam.items():
    got = [r for r in v.values() if np.isfinite(r)]
    cam_summary[kind] = {"n_objects": len(v), "n_empty_maps": len(v) - len(got),
                         "median": float(np.median(got)) if got else None,
                         "q25_q75": [float(q) for q in np.percentile(got, [25, 75])] if got
                         else None}
  logging.info("Grad-CAM Balmer share / pixel share: %s", cam_summary)

  cells = tabulate(rows)
  population = parse_mix(FLAGS.population)
  wd_mix = parse_mix(FLAGS.wd_mix)
  if FLAGS.snr_mix:
    snr_mix, snr_source = {float(k): v for k, v in parse_mix(FLAGS.snr_mix).items()}, \
        {"flag": FLAGS.snr_mix}
  else:
    snr_mix, snr_source = snr_mix_from_catalog(data / SNR_CATALOG, snrs)
    snr_source["catalog"] = SNR_CATALOG
  variants = {"default rule": {}}
  for m in FLAGS.min_snr:
    variants[f"S/N >= {float(m):g}"] = {"min_snr": float(m)}
  variants["CLASS veto QSO/GALAXY"] = {"veto": ("QSO", "GALAXY")}
  for m in FLAGS.min_snr:
    variants[f"S/N >= {float(m):g} + veto"] = {"min_snr": float(m), "veto": ("QSO", "GALAXY")}
  from astrotl import bundle, rules
  model = bundle.load_model(FLAGS.model or "wd_two_stage")
  own = {"min_snr": float((model.rule or {}).get("min_snr") or 0.0),
         "veto": tuple((model.rule or {}).get("veto") or ())}
  variants[OWN_RULE] = own
  variants[OWN_RULE_POOLED] = dict(own, pool=POOLED_STARS)
  purities = {f"{float(frac):g}": {
      name: purity(cells, snrs, population, float(frac), wd_mix, snr_mix, FLAGS.mc,
                   FLAGS.seed, **kw) for name, kw in variants.items()}
      for frac in FLAGS.wd_fraction}
  command = " ".join(["python experiments/wd_real_check.py"] + sys.argv[1:])
  if set(cv) - cv_used:
    logging.warning("--cv names no object here: %s", sorted(set(cv) - cv_used))
  results = {
      "command": command, "model": _short(model.source), "cv": cv,
      "cv_keys_matching_no_object": sorted(set(cv) - cv_used),
      "not_scored": sorted(set(skipped)),
      "rule": rules.describe(model.rule) + " (the model's own rule, as astrotl.scan applies it)",
      "draws": draws, "seed": FLAGS.seed, "response": FLAGS.response, "snrs": snrs,
      "lamost_snrs": lamost_snrs,
      "lamost": {"split": None if FLAGS.lamost_files else FLAGS.lamost_split,
                 "files_list": FLAGS.lamost_files, "n_files": len(lamost),
                 "files": [r["file"] for r in lamost]},
      "intervals": "Wilson 95% with n = objects; each object's rate = fraction of its draws "
                   "flagged (draws of one object are correlated, so objects are the units)",
      "cells": cells, "own_snr": own_snr,
      "population": {"wd_fractions": [float(f) for f in FLAGS.wd_fraction],
                     "classes": population,
                     "wd_mix": wd_mix, "snr_mix": snr_mix, "snr_mix_source": snr_source,
                     "sources": POPULATION_SOURCES, "rates_from": SOURCE_OF},
      "purity": purities, "n_spectra": len(rows), "seconds": time.time() - t0,
      "cam_balmer": {"windows": CAM_LINES, "what": "Grad-CAM of the white-dwarf class: its "
                     "share in the Balmer windows over their share of the pixels (1: no "
                     "preference), per object the mean of --cam_draws draws; DAs at S/N 20, "
                     "LAMOST A stars native; each by the bundle --cv gives it",
                     "by_kind": cam_summary, "objects": cam},
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=1, default=common.json_default))
  write_rows(workdir / "rows.csv.gz", rows)
  table = markdown(results)
  (workdir / "table.md").write_text(table)
  print(table)
  plot(workdir, cells, snrs, lamost_snrs)


POPULATION_SOURCES = (
    "STAR/GALAXY/QSO fractions: LAMOST DR9 v1.0 LRS data-production description (10,907,516 "
    "stars, 242,569 galaxies, 76,167 QSOs of 11,226,252 spectra). OB: 22,901 OB spectra in "
    "LAMOST DR5 (Liu et al. 2019, ApJS 241, 32) ~0.25%. hot subdwarfs: ~0.02%, order of "
    "magnitude from published LAMOST hot-subdwarf catalogues (not verified here). A 5% and M "
    "7% of stars: assumed. F:G:K = 1280:1075:763 from the LearningLAMOST DR1 catalogue "
    "extract. S/N mix: snrg of that extract (an S/N-selected AFGK sample: fewer low-S/N "
    "spectra than DR9 as a whole). WD subtypes: roughly as in magnitude-limited samples "
    "(Kepler et al. 2016, 2019).")


def tabulate(rows):
  """{label: {snr: cell}} with per-object fractions of draws flagged."""
  hits = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    hits[(r["label"], r["snr"])][r["object"]].append(r["candidate"])
  cells = collections.defaultdict(dict)
  for (label, snr), by_obj in hits.items():
    c = cell({o: np.mean(v) for o, v in by_obj.items()})
    c["n_spectra"] = sum(len(v) for v in by_obj.values())
    cells[label][snr] = c
  # every LAMOST star together (A-M), the rate a survey of these stars would see
  for snr in {s for (lab, s) in hits if lab.startswith("LAMOST ")}:
    by_obj = {}
    for letter in LAMOST_LETTERS:
      by_obj.update(hits.get((f"LAMOST {letter}", snr), {}))
    if by_obj:
      c = cell({o: np.mean(v) for o, v in by_obj.items()})
      c["n_spectra"] = sum(len(v) for v in by_obj.values())
      cells["LAMOST A-M (all)"][snr] = c
  return {k: dict(v) for k, v in cells.items()}


def _short(path):
  """A path inside the checkout relative to it (results are committed)."""
  try:
    return str(pathlib.Path(path).resolve().relative_to(real_spectra.REPO))
  except (TypeError, ValueError):
    return path


def write_rows(path, rows):
  keys = ["source", "label", "object", "file", "subtype", "snr", "draw", "candidate", "p_wd",
          "pred_class"]
  with gzip.open(path, "wt", newline="") as f:
    w = csv.DictWriter(f, keys)
    w.writeheader()
    for r in rows:
      w.writerow({k: r[k] for k in keys})


WD_ROWS = ("WD DA", "WD DB", "WD DO", "WD unknown", "WD DA (SDSS BOSS)")
FP_ROWS = ("LAMOST A", "LAMOST F", "LAMOST G", "LAMOST K", "LAMOST M", "LAMOST A-M (all)",
           "LAMOST QSO", "LAMOST other", "CALSPEC hot subdwarf", "CALSPEC O/B", "CALSPEC A",
           "CALSPEC F/G/K", "CALSPEC M/L/T", "CALSPEC PN nucleus", "SDSS QSO", "SDSS galaxy")


def _fmt(c, draws):
  if c is None:
    return "–"
  per = "" if c["n_spectra"] == c["n_objects"] else f"×{round(c['n_spectra'] / c['n_objects'])}"
  return (f"{c['rate']:.2f} [{c['low']:.2f}, {c['high']:.2f}] "
          f"<sub>{c['n_objects']}{per}</sub>")


def markdown(res):
  cells, draws = res["cells"], res["draws"]
  snrs, lsnrs = res["snrs"], res["lamost_snrs"]
  lines = [f"Model: `{res['model']}`; rule: {res['rule']}; response: {res['response']}; "
           f"{draws} draws per object and S/N; LAMOST stars: "
           + (f"split `{res['lamost']['split']}`" if res["lamost"]["split"] else
              f"files in `{res['lamost']['files_list']}`") + f" ({res['lamost']['n_files']}).",
           "Cells: rate [95% Wilson interval, n = objects] <sub>objects×draws</sub>; "
           "– = no object reaches that S/N.", "",
           "**White-dwarf recall** (fraction of draws that are candidates, per object, "
           "averaged over objects)", "",
           "| subtype | " + " | ".join(f"S/N {s:g}" for s in snrs) + " |",
           "|---|" + "---|" * len(snrs)]
  for label in WD_ROWS:
    if label in cells:
      lines.append(f"| {label[3:]} | " + " | ".join(_fmt(cells[label].get(s), draws)
                                                    for s in snrs) + " |")
  lines += ["", "**Physics checks** (fraction of draws that are candidates; DAs: each by the "
            "model that never saw it; synthetic: the shipped model)", "",
            "| check | " + " | ".join(f"S/N {s:g}" for s in snrs) + " | native S/N |",
            "|---|" + "---|" * (len(snrs) + 1)]
  for label in PHYSICS_DA + PHYSICS_SYNTHETIC + ("LAMOST A-M (all)", "LAMOST A-M spiked"):
    if label in cells:
      lines.append(f"| {label} | " + " | ".join(_fmt(cells[label].get(s), draws)
                                                for s in list(snrs) + ["native"]) + " |")
  cols = ["native"] + sorted(set(snrs) | set(lsnrs))
  lines += ["", "**False-positive rate** (LAMOST rows: real stars; CALSPEC/SDSS rows: "
            "made LAMOST-like)", "",
            "| class | " + " | ".join("native S/N" if s == "native" else f"S/N {s:g}"
                                     for s in cols) + " |",
            "|---|" + "---|" * len(cols)]
  for label in FP_ROWS:
    if label in cells:
      lines.append(f"| {label} | " + " | ".join(_fmt(cells[label].get(s), draws)
                                                for s in cols) + " |")
  pop = res["population"]
  lines += ["", f"**Expected DR9 scan** (WD subtypes {pop['wd_mix']}; S/N mix "
            + ", ".join(f"{s:g}: {w:.1%}" for s, w in pop["snr_mix"].items())
            + "; classes " + ", ".join(f"{k} {v:.2%}" for k, v in pop["classes"].items())
            + "). Medians and 95% intervals of a Monte Carlo over the rates' Beta posteriors.",
            "", "| WD fraction | rule | purity [95%] | false-positive rate [95%] | "
            "WD completeness [95%] | candidates per 10⁶ spectra: WDs / stars A–M / OB / "
            "hot sd / QSO+galaxy |", "|---|---|---|---|---|---|"]
  for frac, by_rule in res["purity"].items():
    for name, p in by_rule.items():
      c = p["candidates_per_million"]
      stars = sum(c.get(k, 0.0) for k in LAMOST_LETTERS)
      pur, fp, co = p["purity"], p["false_positive_rate"], p["completeness"]
      lines.append(
          f"| {float(frac):.2%} | {name} | {pur['median']:.3f} [{pur['95'][0]:.3f}, "
          f"{pur['95'][1]:.3f}] | {fp['median']:.2e} [{fp['95'][0]:.2e}, {fp['95'][1]:.2e}] | "
          f"{co['median']:.2f} [{co['95'][0]:.2f}, {co['95'][1]:.2f}] | "
          f"{c['white dwarfs']:.0f} / {stars:.0f} / {c.get('OB', 0):.0f} / "
          f"{c.get('hot_subdwarf', 0):.0f} / {c.get('QSO', 0) + c.get('GALAXY', 0):.0f} |")
  every = [p for by_rule in res["purity"].values() for p in by_rule.values()]
  missing = sorted({f for p in every for f in p["left_out_unmeasured"]})
  if missing:
    lines += ["", "Left out of the purity for lack of any measurement: " + ", ".join(missing)
              + "."]
  falls = sorted({f for p in every for f in p["snr_fallbacks"]})
  if falls:
    lines += ["", "S/N cells without data take the nearest measured S/N: " + "; ".join(falls)
              + "."]
  cam = (res.get("cam_balmer") or {}).get("by_kind") or {}
  if cam:
    lines += ["", "**Grad-CAM on the Balmer lines** (the white-dwarf class's map: share in "
              f"the {'/'.join(res['cam_balmer']['windows'])} windows over their share of the "
              "pixels; 1 = no preference): " + "; ".join(
                  f"{kind} {c['median']:.2f} (quartiles {c['q25_q75'][0]:.2f}–"
                  f"{c['q25_q75'][1]:.2f}, {c['n_objects']} objects, {c['n_empty_maps']} with "
                  "an empty map)" if c["median"] is not None else
                  f"{kind}: every map empty ({c['n_objects']} objects)"
                  for kind, c in cam.items())
              + "."]
  lines += ["", f"Command: `{res['command']}`", ""]
  return "\n".join(lines)


def plot(workdir, cells, snrs, lamost_snrs):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker  # pylint: disable=unused-import
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for ax, labels, title in ((axes[0], WD_ROWS, "white-dwarf recall"),
                            (axes[1], FP_ROWS, "false-positive rate")):
    for label in labels:
      if label not in cells or label in ("LAMOST other",):
        continue
      pts = sorted((s, c) for s, c in cells[label].items() if s != "native")
      if not pts:
        continue
      s = np.array([p[0] for p in pts])
      r = np.array([p[1]["rate"] for p in pts])
      lo = np.array([p[1]["low"] for p in pts])
      hi = np.array([p[1]["high"] for p in pts])
      ls = "-" if label.startswith(("WD", "LAMOST")) else "--"
      yerr = np.clip([r - lo, hi - r], 0, None)  # a rate can round just outside its interval
      ax.errorbar(s, r, yerr=yerr, marker="o", ms=3, capsize=2, ls=ls, lw=1,
                  label=f"{label} ({pts[0][1]['n_objects']})")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(sorted(set(snrs) | set(lamost_snrs)))
    ax.set_xticklabels([f"{s:g}" for s in sorted(set(snrs) | set(lamost_snrs))])
    ax.set_xlabel("S/N (g band)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title + " (per object; 95% Wilson, n = objects)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(workdir / "rates_vs_snr.png", dpi=110)
  plt.close(fig)

  snr = 20.0 if 20.0 in snrs else snrs[len(snrs) // 2]
  items = []
  for label in WD_ROWS + FP_ROWS[8:]:
    c = cells.get(label, {}).get(snr)
    if c:
      items += [(f"{label.replace('CALSPEC ', '')}: {o}", v, label.startswith("WD"))
                for o, v in sorted(c["per_object"].items())]
  fig, ax = plt.subplots(figsize=(7, 0.16 * len(items) + 1))
  y = np.arange(len(items))
  ax.barh(y, [v for _, v, _ in items], color=["tab:blue" if w else "tab:red" for *_, w in items])
  ax.set_yticks(y)
  ax.set_yticklabels([n for n, _, _ in items], fontsize=5)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel(f"fraction of draws that are candidates at S/N {snr:g}")
  ax.set_title("per object: blue = white dwarfs (want 1), red = others (want 0)", fontsize=9)
  fig.tight_layout()
  fig.savefig(workdir / "objects.png", dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  define_flags()
  app.run(main)
