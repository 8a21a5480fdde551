"""Labelled catalogs: a table of files and labels -> train / validation / test arrays.

A catalog (CSV or FITS) lists one file per row (a path column, or LAMOST's obsdate,
planid, lmjd, spid and fiberid) and a label.  Paths are resolved as the scan resolves
them (`astrotl.scan.inputs.from_catalog`: relative to `root`, `.fits`/`.fits.gz` twins,
files found by name under `root`, duplicates and paths outside `root` refused), and the
files are read with the scan's readers and preprocessing:

  spectrum    `io.batch.decode_many`, then `inference.network_inputs` with the source model's
              input spec: the very arrays `Model.predict` feeds the network;
  image       `io.images.read_image`, then `preprocess.images.to_model_input`;
  lightcurve  `io.lightcurve.read_curve`, then the 16 features (`lightcurves.features`,
              raw, in `preprocess.features.FEATURES` order; the caller standardises them).

Rows are split by object, so repeat observations of one star never straddle two
splits: rows that share a group id (a `group_column`, else `group` or `designation`,
and `obsid`) or lie within `radius` arcsec of each other on the sky are one object.
Objects are split per class (stratified), deterministically for a seed.  Nothing is
dropped silently: unreadable files are in `errors`, unused rows in `skipped`.
"""

import dataclasses
import os

import numpy as np

from astrotl.io import catalog as io_catalog

KINDS = ("spectrum", "image", "lightcurve")
SPLITS = ("train", "validation", "test")
LABEL_ALIASES = ("label", "labels", "target")
GROUP_ALIASES = ("group", "designation")
RADIUS = 2.0  # arcsec: repeat LAMOST visits of one star agree to well under this


def _letter(label):
  from astrotl.preprocess import spectra
  return spectra.spectral_letter(label)


# Named label transforms, for the command line; Python callers may pass any callable.
TRANSFORMS = {"letter": _letter}  # MK letter of a subclass: 'G7' -> 'G', 'dM2' -> 'M'


@dataclasses.dataclass
class Labelled:
  kind: str
  classes: list          # class names; y is an index into them
  splits: dict           # split -> {"x", "y", "files", "rows" (catalog rows)}
  errors: list           # (path, reason) for every listed file that could not be read
  skipped: list          # (catalog row, reason) for rows not used (no label, duplicate, ...)
  catalog: str
  group_by: str          # how rows were grouped into objects
  seed: int

  def counts(self) -> dict:
    """{split: {class: number of examples}}."""
    return {s: {c: int(np.sum(d["y"] == i)) for i, c in enumerate(self.classes)}
            for s, d in self.splits.items()}

  def summary(self) -> str:
    lines = [f"{self.catalog}: {len(self.classes)} classes, objects grouped by "
             f"{self.group_by}"]
    for s, counts in self.counts().items():
      lines.append(f"  {s:<10} {sum(counts.values()):>6}  " +
                   "  ".join(f"{c}:{n}" for c, n in counts.items()))
    lines.append(f"  {len(self.errors)} unreadable files, {len(self.skipped)} rows skipped")
    return "\n".join(lines)


def load(catalog, kind="spectrum", input=None, root=None, label_column=None,
         label_transform=None, classes=None, path_column=None, group_column=None,
         split=(0.7, 0.15, 0.15), seed=0, radius=RADIUS, allow_outside_root=False,
         progress=True, log=print) -> Labelled:
  """Reads a labelled catalog into stratified train / validation / test splits.

  input: the source model's input spec (`Model.input`); for spectra it decides the
    preprocessing, for images the size, crop and scaling.
  label_column: default `label` (or `labels`, `target`); label_transform: a callable or
    a name in TRANSFORMS applied to each label ('letter': 'G7' -> 'G'), where None or ''
    means no label.  classes: the class names to keep, in order (a list, or a
    comma-separated string); default every label found, sorted.
  split: fractions of objects per class for train, validation, test.
  Unreadable files are listed in `.errors` and counted in the printed summary.
  """
  from astrotl.scan import inputs as scan_inputs
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
  fractions = _fractions(split)
  found = scan_inputs.from_catalog(catalog, root, path_column, allow_outside_root,
                                   _suffixes(kind))
  table = found.table
  skipped = [(int(r), f"{p}: {why}") for r, p, why in found.refused]
  skipped += [(int(r), f"{p}: listed before in row {first}") for r, first, p in found.duplicates]

  labels = _labels(table, catalog, label_column, label_transform)
  if classes is None:
    classes = sorted({v for v in labels if v})
  elif isinstance(classes, str):
    classes = [c.strip() for c in classes.split(",") if c.strip()]
  classes = [str(c) for c in classes]
  if not classes:
    raise io_catalog.CatalogError(catalog, "no labels found")
  index = {c: i for i, c in enumerate(classes)}
  paths, rows = [], []
  for path, row in zip(found.paths, found.rows):
    if not labels[row]:
      skipped.append((int(row), "no label"))
    elif labels[row] not in index:
      skipped.append((int(row), f"label {labels[row]!r} is not one of the classes"))
    else:
      paths.append(path)
      rows.append(int(row))

  x, good, errors = read(paths, kind, input, progress)
  rows = np.asarray(rows, np.int64)[good]
  files = np.asarray(paths, dtype=object)[good]
  y = np.asarray([index[labels[r]] for r in rows], np.int32)
  groups, group_by = object_groups(table, catalog, group_column, radius)
  which = assign_splits(y, groups[rows], fractions, seed)
  splits = {s: {"x": x[which == i], "y": y[which == i], "files": list(files[which == i]),
                "rows": rows[which == i]} for i, s in enumerate(SPLITS)}
  out = Labelled(kind, classes, splits, errors, sorted(skipped), os.fspath(catalog), group_by,
                 seed)
  if log:
    log(out.summary())
    for path, reason in errors[:5]:
      log(f"  unreadable: {path}: {reason}")
    if len(errors) > 5:
      log(f"  ... and {len(errors) - 5} more unreadable files (Labelled.errors)")
  if not len(splits["train"]["y"]):
    raise ValueError(f"{catalog}: no readable labelled files for training ({len(errors)} "
                     f"unreadable, {len(skipped)} rows skipped)")
  return out


def _suffixes(kind) -> tuple:
  """Names of the files a catalog row may be found by under its root."""
  if kind == "spectrum":
    from astrotl.scan import inputs
    return inputs.SUFFIXES
  if kind == "image":
    from astrotl.io import images
    return images.FITS_SUFFIXES + images.PIL_SUFFIXES + (".npy",)
  from astrotl.io import lightcurve
  return lightcurve.SUFFIXES


def _fractions(split):
  f = np.asarray([float(v) for v in split], float)
  if f.shape != (3,) or (f < 0).any() or f[0] <= 0:
    raise ValueError(f"split={split!r}: give three fractions (train, validation, test), "
                     "train > 0")
  return f / f.sum()


def _labels(table, catalog, column, transform) -> list:
  """Each row's label as a string ('' for none)."""
  col = io_catalog.require_column(table, LABEL_ALIASES, catalog, "label", "--label_column",
                                  column)
  if isinstance(transform, str):
    if transform not in TRANSFORMS:
      raise ValueError(f"label_transform={transform!r}: use one of {', '.join(TRANSFORMS)} "
                       "or (from Python) a function")
    transform = TRANSFORMS[transform]
  out = []
  for v in table[col]:
    v = "" if v is None else str(v).strip()
    v = "" if v.lower() in ("nan", "--") else v  # a missing value (NaN, a masked entry)
    if transform is not None and v:
      v = transform(v)
    out.append("" if v is None else str(v).strip())
  return out


# --- objects and splits -------------------------------------------------------------------

def object_groups(table, catalog="catalog", group_column=None, radius=RADIUS):
  """(object id of every catalog row, how they were found).

  Rows are one object when they share a non-empty value of the group column
  (`group_column`, else `group` or `designation`) or of `obsid`, or lie within `radius`
  arcsec of each other (when the table has RA/Dec); otherwise each row (file) is its own.
  """
  n = len(next(iter(table.values())))
  parent = np.arange(n)

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  def union(i, j):
    a, b = find(i), find(j)
    if a != b:
      parent[max(a, b)] = min(a, b)

  how = []
  key = io_catalog.find_column(table, GROUP_ALIASES, catalog, "group", group_column)
  for col in dict.fromkeys(c for c in (key, "obsid") if c and c in table):
    first = {}
    for i, v in enumerate(table[col]):
      v = str(v).strip()
      if v and v.lower() not in ("nan", "none", "-1", "0"):
        union(i, first.setdefault(v, i))
    how.append(col)
  ra = io_catalog.find_column(table, io_catalog.RA_ALIASES)
  dec = io_catalog.find_column(table, io_catalog.DEC_ALIASES)
  if ra and dec and radius > 0:
    for i, j in _close_pairs(np.asarray(table[ra], float), np.asarray(table[dec], float), radius):
      union(i, j)
    how.append(f"sky position ({radius:g} arcsec)")
  roots = np.asarray([find(i) for i in range(n)])
  return roots, " + ".join(how) if how else "file"


def _close_pairs(ra, dec, radius):
  """Index pairs (i < j) of positions within `radius` arcsec of each other."""
  from astropy import units as u
  from astropy.coordinates import SkyCoord
  ok = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
  if len(ok) < 2:
    return []
  c = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg)
  i, j, _, _ = c.search_around_sky(c, radius * u.arcsec)
  keep = i < j
  return list(zip(ok[i[keep]], ok[j[keep]]))


def assign_splits(y, groups, fractions, seed) -> np.ndarray:
  """Split index (0 train, 1 validation, 2 test) of every row: whole objects (`groups`) go
  to one split, objects of each class (their most common label) are shuffled with `seed`
  and divided by `fractions`; a class with 3 or more objects has one in every split whose
  fraction is > 0."""
  y = np.asarray(y, np.int64)
  ids, row_group = np.unique(np.asarray(groups), return_inverse=True)
  votes = np.zeros((len(ids), int(y.max(initial=0)) + 1), np.int64)
  np.add.at(votes, (row_group, y), 1)
  label = votes.argmax(1)  # an object's class: its most common label (ties: the first)
  split_of = np.zeros(len(ids), np.int64)
  rng = np.random.default_rng(seed)
  for c in np.unique(label):
    members = np.flatnonzero(label == c)
    members = members[rng.permutation(len(members))]
    start = 0
    for s, size in enumerate(_sizes(len(members), fractions)):
      split_of[members[start:start + size]] = s
      start += size
  return split_of[row_group]


def _sizes(n, fractions) -> list:
  """Objects per split for n objects of a class (largest remainders, every split with a
  positive fraction gets one when n >= 3, train keeps at least one)."""
  raw = np.asarray(fractions) * n
  sizes = np.floor(raw).astype(int)
  for k in np.argsort(-(raw - sizes), kind="stable")[:n - sizes.sum()]:
    sizes[k] += 1
  for k in (1, 2):
    if n >= 3 and fractions[k] > 0 and sizes[k] == 0:
      sizes[int(np.argmax(sizes))] -= 1
      sizes[k] = 1
  if n >= 1 and sizes[0] == 0:
    sizes[int(np.argmax(sizes))] -= 1
    sizes[0] = 1
  return sizes.tolist()


# --- reading ------------------------------------------------------------------------------

def read(paths, kind, input=None, progress=True):
  """(x for the readable files, their indices into `paths`, [(path, reason)] for the rest)."""
  if kind == "spectrum":
    return read_spectra(paths, input or {"type": "spectrum"}, progress)
  if kind == "image":
    return read_images(paths, input or {"type": "image"}, progress)
  return lightcurve_features(paths)


def _bar(total, progress, what):
  if not progress:
    return None
  from tqdm import tqdm
  return tqdm(total=total, unit=what, desc="reading", dynamic_ncols=True, leave=False)


def read_spectra(paths, spec, progress=True, chunk=1024):
  """Network inputs of spectrum files, exactly as the scan and `Model.predict` make them."""
  from astrotl import inference
  from astrotl.io import batch as io_batch
  good, xs, errors = [], [], []
  bar = _bar(len(paths), progress, "spectra")
  for start in range(0, len(paths), chunk):  # chunks keep the raw arrays small
    part = paths[start:start + chunk]
    ok, raw, _, bad = io_batch.decode_many(part)
    if ok:
      xs.append(inference.network_inputs(raw, spec))
    good += [start + i for i in ok]
    errors += [(p, why) for _, p, why in bad]
    if bar is not None:
      bar.update(len(part))
  if bar is not None:
    bar.close()
  x = np.concatenate(xs) if xs else np.zeros((0, 0), np.float32)
  return x, good, errors


def read_images(paths, spec, progress=True):
  """Model inputs of image files (`io.images.read_image` + `preprocess.images.to_model_input`
  with the spec's size, crop and scaling; default: the image's own size, x / 255)."""
  from astrotl.io import images as io_images
  from astrotl.preprocess import images as prep
  good, xs, errors = [], [], []
  bar = _bar(len(paths), progress, "images")
  for i, path in enumerate(paths):
    try:
      image = io_images.read_image(path)
      size = int(spec.get("size") or image.shape[0])
      xs.append(prep.to_model_input(image[None], size, spec.get("crop"),
                                    spec.get("scaling", "uint8"))[0])
      good.append(i)
    except (io_images.ImageError, ValueError) as e:
      errors.append((os.fspath(path), getattr(e, "reason", str(e))))
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  shapes = {x.shape for x in xs}
  if len(shapes) > 1:
    raise ValueError(f"images of different shapes {sorted(shapes)}: give the input spec a "
                     "'size' to resize them to")
  x = np.stack(xs).astype(np.float32) if xs else np.zeros((0, 0), np.float32)
  return x, good, errors


def lightcurve_features(paths):
  """The 16 UPSILoN features of light-curve files, (n, 16) in `preprocess.features.FEATURES`
  order, read and computed as `Model.predict` does for light curves (`io.lightcurve.read_curve`,
  `lightcurves.features`).  A file that cannot be read, or whose features cannot be
  computed or are not finite, is an error with its reason.  (The one place that depends on
  the light-curve modules.)"""
  from astrotl import lightcurves
  from astrotl.io import lightcurve as io_lc
  from astrotl.preprocess import features as F
  curves, good, errors = [], [], []
  for i, path in enumerate(paths):
    try:
      curves.append(io_lc.read_curve(path))
      good.append(i)
    except io_lc.LightCurveError as e:
      errors.append((os.fspath(path), e.reason))
  if not curves:
    return np.zeros((0, len(F.FEATURES))), [], errors
  feats = lightcurves.features(curves)
  x = np.stack([np.asarray(feats[k], np.float64) for k in F.FEATURES], axis=1)
  ok = (np.asarray(feats["reason"]) == 0) & np.isfinite(x).all(axis=1)
  for j in np.flatnonzero(~ok):
    code = int(feats["reason"][j])
    why = (lightcurves.reason_text(code, int(feats["n_points"][j])) if code else
           "features_not_finite: the curve is too sparse or too regular for them")
    errors.append((os.fspath(paths[good[j]]), why))
  return x[ok], [g for g, k in zip(good, ok) if k], errors
