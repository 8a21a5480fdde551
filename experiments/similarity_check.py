r"""Does "more like these" find real spectra of the same kind?  The model's embedding against
the raw normalised flux, on real spectra only.

1. LAMOST: each of the real LAMOST A-M stars of the shared sample (header subclasses)
   is a query among the others; its own repeat visits (same designation) are left out.
   precision@k = the fraction of its k nearest with the same spectral letter.  Reported
   for all queries and for the held-out ones: with --cv (wd_search.py's cv.json) those that
   --model never trained on, else those outside the lamost_lrs train split.
2. CALSPEC: each real HST CALSPEC white dwarf is a query among the CALSPEC spectra (its
   own object's other files left out) plus the LAMOST stars: how many of its k nearest
   are white dwarfs.  The CALSPEC spectra are only resampled onto the common grid (no
   LAMOST-like resolution or response), and files that do not cover half of the grid
   (NICMOS-only) are left out.
Distances: "embedding" is `astrotl.similar.metric` (unit embeddings; the search's);
"flux" is the Euclidean distance between the networks' inputs (`Model.network_inputs`),
and "flux_cosine" the same with unit rows.  Writes results.json and similarity.png.

  python experiments/similarity_check.py --workdir=workdir/similarity_check
"""

import collections
import csv
import json
import os
import pathlib
import sys

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from astrotl import bundle
from astrotl import io as aio
from astrotl.preprocess import spectra
from astrotl.similar import metric

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "./workdir/similarity_check", "Output directory.")
flags.DEFINE_string("model", "wd_two_stage", "Model bundle or bundled name.")
flags.DEFINE_string("data", None, "Shared data folder (default $ASTROTL_SHARED_DATA or "
                    "../shared/data beside the checkout).")
flags.DEFINE_integer("k", 10, "Neighbours per query.")
flags.DEFINE_string("cv", None, "wd_search.py's cv.json: the objects it maps to --model are "
                    "the held-out queries (default: LAMOST stars outside the lamost_lrs "
                    "train split; no CALSPEC object).")

LETTERS = ("A", "F", "G", "K", "M")
CALSPEC = "spectra/real_wd_validation/calspec_hst"
METHODS = ("embedding", "flux", "flux_cosine")


def data_root():
  repo = pathlib.Path(__file__).resolve().parents[1]
  for root in (FLAGS.data, os.environ.get("ASTROTL_SHARED_DATA"), repo.parent / "shared" / "data",
               "/work/shared/data"):
    if root and (pathlib.Path(root) / "spectra" / "index.csv").exists():
      return pathlib.Path(root)
  raise app.UsageError("cannot find the shared data; pass --data=PATH")


def lamost_stars(root):
  """(files, spectral letters, designations, split) of the real LAMOST A-M stars."""
  from astrotl.datasets.lamost_lrs.lamost_lrs_dataset_builder import mirror_sources, split_of
  folder = root / "spectra"
  splits = {os.path.realpath(s.path): split_of(s.split_key) for s in mirror_sources(folder)}
  files, letters, designations, split = [], [], [], []
  for r in csv.DictReader(open(folder / "index.csv")):
    letter = spectra.spectral_letter(r["subclass"]) if r["survey"] == "LAMOST-LRS" else None
    if letter not in LETTERS:
      continue
    path = folder / r["file"]
    files.append(str(path))
    letters.append(letter)
    designations.append(aio.read(path).meta.get("designation") or r["file"])
    split.append(splits.get(os.path.realpath(path), "unknown"))
  return files, np.array(letters), np.array(designations), np.array(split)


def read_calspec(path):
  """(wavelength, flux, ivar, mask) of a CALSPEC table, flux in 1e-17 erg/s/cm2/A.

  Minimal: STATERROR for the noise, DATAQUAL == 0 masked; the reader on branch
  wd-realcheck (astrotl.io.calspec) also masks model-filled ranges.
  """
  from astropy.io import fits
  with fits.open(path) as h:
    d = h[1].data
    names = [c.upper() for c in d.columns.names]
    wave = np.asarray(d["WAVELENGTH"], np.float64)
    flux = np.asarray(d["FLUX"], np.float64) / 1e-17
    err = np.asarray(d["STATERROR"], np.float64) / 1e-17
    bad = ~np.isfinite(flux) | ~(err > 0)
    if "DATAQUAL" in names:
      bad |= np.asarray(d["DATAQUAL"]) == 0
  ivar = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, err) ** 2)
  return wave, np.where(bad, 0.0, flux).astype(np.float32), ivar.astype(np.float32), bad


def calspec_spectra(root):
  """(spectra as tuples, groups, objects, file names), files covering half the grid."""
  folder = root / CALSPEC
  grid = spectra.wavelength_grid()
  out, groups, objects, names = [], [], [], []
  for r in csv.DictReader(open(folder / "index.csv")):
    path = folder / "calspec" / r["file"]
    if not path.exists():
      continue
    try:
      s = read_calspec(path)
    except (OSError, KeyError, ValueError):
      continue
    inside = np.interp(grid, s[0], (~s[3]).astype(float), left=0, right=0) > 0.5
    if inside.mean() < 0.5:
      continue
    out.append(s)
    groups.append(r["group"])
    objects.append(r["object_prefix"])
    names.append(r["file"])
  return out, np.array(groups), np.array(objects), names


def held_out_keys(cv_path, model):
  """The objects (LAMOST file keys, CALSPEC object prefixes) that cv.json maps to `model`:
  the ones it never trained on; None without cv.json."""
  if not cv_path:
    return None
  cv = json.loads(pathlib.Path(cv_path).read_text())
  mine = os.path.realpath(model)
  return {key for key, path in cv.items() if path and os.path.realpath(path) == mine}


def distances(vectors, method):
  v = np.asarray(vectors, np.float32)
  if method == "flux":
    sq = (v * v).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * v @ v.T, 0))
  return np.sqrt(metric.sq_distances(metric.unit(v), metric.unit(v)))


def nearest(d, exclude, k):
  d = d.copy()
  d[exclude] = np.inf
  return np.argsort(d, axis=1, kind="stable")[:, :k]


def main(argv):
  del argv
  root = data_root()
  workdir = pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  k = FLAGS.k
  model = bundle.load_model(FLAGS.model)
  files, letters, desig, split = lamost_stars(root)
  vectors = {"embedding": model.embed(files), "flux": model.network_inputs(files)[1]}
  vectors["flux_cosine"] = vectors["flux"]
  same_star = desig[:, None] == desig[None]  # includes the query itself
  held = held_out_keys(FLAGS.cv, FLAGS.model)
  if held is None:
    held_out = split != "train"
  else:
    held_out = np.array([os.path.relpath(f, root / "spectra") in held for f in files])
  res = {"command": " ".join(sys.argv), "model": model.source, "k": k,
         "lamost": {"n": len(files), "n_stars": len(set(desig)), "by_letter":
                    dict(collections.Counter(letters.tolist())), "n_held_out": int(held_out.sum()),
                    "chance": float(sum((letters == l).sum() * ((letters == l).sum() - 1)
                                        for l in LETTERS) / len(files) / (len(files) - 1))}}
  for method in METHODS:
    nn = nearest(distances(vectors[method], method), same_star, k)
    hit = letters[nn] == letters[:, None]
    res["lamost"][method] = {
        "precision_at_k": float(hit.mean()),
        "precision_at_k_held_out": float(hit[held_out].mean()),
        "by_letter": {l: float(hit[letters == l].mean()) for l in LETTERS}}

  cal, groups, objects, names = calspec_spectra(root)
  cal_vectors = {"embedding": model.embed(cal), "flux": model.network_inputs(cal)[1]}
  cal_vectors["flux_cosine"] = cal_vectors["flux"]
  n_cal = len(cal)
  wd = np.flatnonzero(groups == "WD")
  pool_wd = np.concatenate([groups == "WD", np.zeros(len(files), bool)])
  exclude = np.zeros((n_cal + len(files),) * 2, bool)
  exclude[:n_cal, :n_cal] = objects[:, None] == objects[None]
  np.fill_diagonal(exclude, True)
  res["calspec"] = {"n": n_cal, "n_wd": int(len(wd)), "pool": n_cal + len(files),
                    "by_group": dict(collections.Counter(groups.tolist())),
                    "chance_wd_in_k": float(k * (pool_wd.sum() - 1) / (len(pool_wd) - 1)),
                    # the neighbours are almost all CALSPEC (no LAMOST response): the
                    # chance level among CALSPEC alone is the fair one
                    "chance_wd_in_k_calspec_only": float(k * (len(wd) - 1) / (n_cal - 1)),
                    "files": names}
  for method in METHODS:
    both = np.concatenate([cal_vectors[method], vectors[method]])
    nn = nearest(distances(both, method), exclude, k)[wd]
    n_wd = pool_wd[nn].sum(1)
    wd_held = np.array([objects[i] in (held or ()) for i in wd])
    res["calspec"][method] = {
        "mean_wd_in_k": float(n_wd.mean()),
        "mean_wd_in_k_held_out": float(n_wd[wd_held].mean()) if wd_held.any() else None,
        "n_held_out": int(wd_held.sum()), "per_query": dict(zip([names[i] for i in wd],
                                                                   n_wd.tolist())),
        "neighbour_groups": dict(collections.Counter(
            np.where(nn < n_cal, np.asarray(groups)[np.minimum(nn, n_cal - 1)], "LAMOST")
            .ravel().tolist()))}
  (workdir / "results.json").write_text(json.dumps(res, indent=1))
  plot(res, workdir / "similarity.png")
  for method in METHODS:
    l, c = res["lamost"][method], res["calspec"][method]
    held_wd = (f", held-out {c['mean_wd_in_k_held_out']:.2f}"
               if c["mean_wd_in_k_held_out"] is not None else "")
    print(f"{method:12s} LAMOST precision@{k} {l['precision_at_k']:.3f} (held-out "
          f"{l['precision_at_k_held_out']:.3f}); CALSPEC WDs in {k} nearest: "
          f"{c['mean_wd_in_k']:.2f} of {k}{held_wd}")


def plot(res, path):
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
  x = np.arange(len(LETTERS) + 2)
  for i, method in enumerate(METHODS):
    r = res["lamost"][method]
    v = [r["by_letter"][l] for l in LETTERS] + [r["precision_at_k"], r["precision_at_k_held_out"]]
    a.bar(x + (i - 1) * 0.27, v, 0.27, label=method)
  a.set_xticks(x, list(LETTERS) + ["all", "held-out"])
  a.axhline(res["lamost"]["chance"], color="k", ls=":", lw=0.8, label="chance")
  a.set_ylabel(f"precision@{res['k']}: same spectral letter")
  a.set_title(f"{res['lamost']['n']} real LAMOST stars", fontsize=9)
  a.legend(fontsize=7)
  counts = np.arange(res["k"] + 1)
  for i, method in enumerate(METHODS):
    n = np.bincount(list(res["calspec"][method]["per_query"].values()), minlength=len(counts))
    b.bar(counts + (i - 1) * 0.27, n, 0.27,
          label=f"{method} (mean {res['calspec'][method]['mean_wd_in_k']:.1f})")
  b.axvline(res["calspec"]["chance_wd_in_k_calspec_only"], color="k", ls=":", lw=0.8,
            label="chance among CALSPEC")
  b.set_xlabel(f"white dwarfs among the {res['k']} nearest")
  b.set_ylabel("CALSPEC white-dwarf queries")
  b.set_title(f"{res['calspec']['n_wd']} CALSPEC WDs among {res['calspec']['pool']} spectra",
              fontsize=9)
  b.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  app.run(main)
