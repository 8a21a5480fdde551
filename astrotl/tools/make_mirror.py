"""A survey-sized test bed: N spectra in the exact LAMOST DR9 COADD layout.

  python -m astrotl.tools.make_mirror --n=20000 --out=/scratch/mirror
  python -m astrotl.tools.make_mirror --n=1000000 --files=2000 --out=/scratch/mirror1m

Each file is a real bundled spectrum (any layout, resampled onto the DR9 template's
wavelength row) with perturbed flux (a random scale and Gaussian noise at its own
ivar) and a new obsid, position, designation and file name, written with the header
of a real DR9 file.  The mirror uses LAMOST's archive layout
(OBSDATE/PLANID/spec-LMJD-PLANID_spSS-FFF.fits.gz) and comes with a catalog.csv in the
DR9 LRS general catalogue's schema (`io.catalog.LAMOST_GENERAL_COLUMNS`: no path column,
so the scan builds each path from obsdate, planid, lmjd, spid and fiberid) that
`python -m astrotl.scan --catalog` reads.  With --files=F only F spectra are written and
every other row's file is a hard link to one of them (row i to row i % F): a catalog of
millions of rows on the disk of a few thousand files, over which the scan still opens,
decodes and scores a file a row.  The catalog's values (S/N, class, magnitudes, Gaia
ids) are made up in the catalogue's formats; the spectra's headers are the truth.

For benchmarks and pipeline tests only: the spectra are copies of a few dozen stars,
so never use a made mirror for science numbers.
"""

import csv
import gzip
import os
import pathlib

from absl import app, flags
import numpy as np



def _define_flags():
  # Only when run as a program: importing this module (tests, benchmarks) must not
  # claim flag names such as --out that astrotl.scan also defines.
  flags.DEFINE_integer("n", 1000, "Number of spectra (catalog rows).")
  flags.DEFINE_integer("files", None, "Spectra written; the other rows are hard links to "
                       "them (default: every row its own spectrum).")
  flags.DEFINE_string("out", None, "Output folder.")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  flags.DEFINE_integer("compresslevel", 6, "gzip level (LAMOST ships gzip files).")

OBSID0 = 900_000_000  # far above real LAMOST obsids
PER_PLAN = 16 * 250   # 16 spectrographs x 250 fibres
OBSDATE0 = np.datetime64("2024-01-01")
LMJD0 = 60311


def _template():
  """(primary header, wavelength row) of the bundled DR9 file."""
  from astropy.io import fits
  from astrotl import data
  folder = data.sample_dir("spectra") / "lamost_dr9_bintable_format"
  path = sorted(folder.glob("spec-*.fits.gz"))[0]
  with fits.open(path) as h:
    return h[0].header.copy(), np.asarray(h[1].data["WAVELENGTH"][0], np.float64)


def _sources(wavelength):
  """Every bundled LAMOST spectrum on the template's wavelength pixels."""
  from astrotl import data
  from astrotl.io import lamost
  from astrotl.preprocess import spectra
  u_target = spectra.grid_pixels(np.log10(wavelength))
  out = []
  for row in data.sample_index("spectra"):
    s = lamost.read(row["path"])
    u = spectra.grid_pixels(np.log10(s.wavelength))
    # resample onto the template's pixels: shift coordinates so they play the grid
    f, iv, bad = spectra.resample_pixels(u - u_target[0], s.flux, s.ivar, s.mask,
                                         npix=len(wavelength))
    if (~bad).sum() < 1000:
      continue
    out.append((f, iv, bad, s.meta))
  return out


class Writer:
  """Patches a serialised DR9 file: header cards by position, the table row in place."""

  def __init__(self, header, wavelength):
    from astropy.io import fits
    n = len(wavelength)
    cols = [fits.Column(name=k, format=f"{n}E", array=np.zeros((1, n), np.float32))
            for k in ("FLUX", "IVAR", "WAVELENGTH", "ANDMASK", "ORMASK", "NORMALIZATION")]
    table = fits.BinTableHDU.from_columns(cols, name="COADD")
    hdul = fits.HDUList([fits.PrimaryHDU(header=header), table])
    import io
    buf = io.BytesIO()
    hdul.writeto(buf, output_verify="silentfix")
    self.raw = bytearray(buf.getvalue())
    self.n = n
    self.wavelength = wavelength.astype(">f4")
    primary_len = len(hdul[0].header.tostring()) + 0
    self.data_offset = primary_len + len(table.header.tostring())
    self.cards = {}
    head = bytes(self.raw[:primary_len])
    for i in range(0, primary_len, 80):
      key = head[i:i + 8].decode("ascii").strip()
      if key and key not in self.cards:
        self.cards[key] = i

  def card(self, buf, key, value, comment=""):
    from astropy.io import fits
    image = fits.Card(key, value, comment).image
    pos = self.cards[key]
    buf[pos:pos + 80] = image.encode("ascii")

  def write(self, path, flux, ivar, andmask, meta, level):
    buf = bytearray(self.raw)
    for key, value, comment in meta:
      self.card(buf, key, value, comment)
    row = np.stack([flux, ivar, self.wavelength, andmask, np.zeros(self.n), np.ones(self.n)])
    data = row.astype(">f4").tobytes()
    buf[self.data_offset:self.data_offset + len(data)] = data
    with open(path, "wb") as f:
      f.write(gzip.compress(bytes(buf), compresslevel=level, mtime=0))


def designation(ra, dec):
  h = ra / 15.0
  hh, mm = int(h), int((h % 1) * 60)
  ss = ((h * 60) % 1) * 60
  sign = "+" if dec >= 0 else "-"
  d = abs(dec)
  dd, dm = int(d), int((d % 1) * 60)
  ds = ((d * 60) % 1) * 60
  return f"J{hh:02d}{mm:02d}{ss:05.2f}{sign}{dd:02d}{dm:02d}{ds:04.1f}"


def _place(i):
  """(obsdate YYYYMMDD, lmjd, planid, spid, fiberid, file name) of row i: 4000 a plan."""
  plan, within = divmod(i, PER_PLAN)
  spid, fiber = within // 250 + 1, within % 250 + 1
  planid = f"TB{plan:06d}"
  lmjd = LMJD0 + plan
  obsdate = str(OBSDATE0 + np.timedelta64(plan, "D")).replace("-", "")
  return obsdate, lmjd, planid, spid, fiber, f"spec-{lmjd}-{planid}_sp{spid:02d}-{fiber:03d}.fits"


def make(n, out, seed=0, level=6, files=None):
  """Writes the mirror and returns the catalog path.  files: write only that many spectra
  and make every other row a hard link to one of them (row i to row i % files)."""
  from astrotl.io.catalog import LAMOST_GENERAL_COLUMNS
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  files = n if files is None else max(1, min(int(files), n))
  header, wavelength = _template()
  sources = _sources(wavelength)
  writer = Writer(header, wavelength)
  rng = np.random.default_rng(seed)
  metas = []  # of the spectra written: the rows linked to them share them
  catalog = out / "catalog.csv"
  tmp = catalog.with_suffix(".tmp")
  with open(tmp, "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(LAMOST_GENERAL_COLUMNS)
    folder = None
    for i in range(n):
      obsdate, lmjd, planid, spid, fiber, name = _place(i)
      if folder != out / obsdate / planid:  # a plan's rows are consecutive
        folder = out / obsdate / planid
        folder.mkdir(parents=True, exist_ok=True)
      obsid = OBSID0 + i
      if i < files:
        f, iv, bad, meta = sources[rng.integers(len(sources))]
        metas.append(meta)
        scale = float(np.exp(rng.normal(0, 0.3)))
        sigma = np.where(iv > 0, 1 / np.sqrt(np.maximum(iv, 1e-30)), 0.0)
        flux = np.where(bad, 0.0, f * scale + rng.normal(0, 1, len(f)) * sigma * 0.5)
        ivar = np.where(bad, 0.0, iv / scale ** 2)
      ra, dec = float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-0.3, 1))))
      desig = designation(ra, dec)
      meta = metas[i % files]
      if i < files:
        snrg = float(meta.get("snr_g") or 0.0)
        writer.write(folder / (name + ".gz"), flux, ivar, bad.astype(np.float32), [
            ("FILENAME", name, ""), ("OBSID", obsid, "Unique number ID of this spectrum"),
            ("LMJD", lmjd, "Local Modified Julian Day"), ("PLANID", planid, "Plan ID in use"),
            ("RA", ra, "[deg] Right ascension of object"),
            ("DEC", dec, "[deg] Declination of object"),
            ("RA_OBS", ra, ""), ("DEC_OBS", dec, ""),
            ("DESIG", "LAMOST " + desig, "Designation of LAMOST target"),
            ("SPID", spid, "Spectrograph ID"), ("FIBERID", fiber, "Fiber ID of Object"),
            ("CLASS", meta.get("class") or "STAR", ""),
            ("SUBCLASS", meta.get("subclass") or "", ""),
            ("SNRG", round(snrg, 2), "SNR of g filter")], level)
      elif not os.path.lexists(folder / (name + ".gz")):
        o, _, p, _, _, source = _place(i % files)
        os.link(out / o / p / (source + ".gz"), folder / (name + ".gz"))
      w.writerow(general_row(i, obsid, desig, obsdate, lmjd, planid, spid, fiber, ra, dec,
                             meta, rng))
  os.replace(tmp, catalog)
  return catalog


def general_row(i, obsid, desig, obsdate, lmjd, planid, spid, fiber, ra, dec, meta, rng):
  """A row of LAMOST_GENERAL_COLUMNS in the catalogue's formats: ids, dates and the
  position as the spectrum has them, made-up S/N, magnitudes and Gaia/PS1 ids, and
  LAMOST's -9999 for a value it has none of (every 50th row's PS1 magnitudes)."""
  snrg = float(meta.get("snr_g") or 0.0)
  snr = [round(snrg * k, 2) for k in (0.3, 1.0, 1.4, 1.6, 1.2)]
  mags = [round(float(m), 2) for m in rng.uniform(13, 19, 5)]
  if i % 50 == 0:
    mags = [-9999] * 5
  gaia = [round(float(m), 4) for m in rng.uniform(13, 19, 3)]
  day = f"{obsdate[:4]}-{obsdate[4:6]}-{obsdate[6:]}"
  return [obsid, desig, day, lmjd, lmjd - 1, planid, spid, fiber, round(ra, 6), round(dec, 6),
          *snr, "Star", meta.get("class") or "STAR", meta.get("subclass") or "",
          round(float(rng.normal(0, 1e-4)), 8), round(float(rng.uniform(1e-5, 1e-4)), 8),
          100000000000000000 + i, *mags, 1000000000000000000 + i, *gaia, "JF_LEGAS_S",
          "-", "" if i % 7 else "bright", "Obj", 0, 0.0, round(ra, 6), round(dec, 6), 0]


# LAMOST_GENERAL_COLUMNS -> the primary-header keywords that hold them (older files first
# name a few differently); a column no keyword holds (PS1 and Gaia ids and magnitudes,
# cross-matched into the catalogue, not the files) is left empty.
HEADER_KEYS = {
    "obsid": ("OBSID",), "designation": ("DESIG",), "lmjd": ("LMJD",), "mjd": ("MJD",),
    "planid": ("PLANID",), "spid": ("SPID",), "fiberid": ("FIBERID",),
    "ra_obs": ("RA_OBS", "OBS_RA"), "dec_obs": ("DEC_OBS", "OBS_DEC"),
    "snru": ("SNRU", "SN_U"), "snrg": ("SNRG", "SN_G"), "snrr": ("SNRR", "SN_R"),
    "snri": ("SNRI", "SN_I"), "snrz": ("SNRZ", "SN_Z"), "objtype": ("OBJTYPE",),
    "class": ("CLASS",), "subclass": ("SUBCLASS",), "z": ("Z",), "z_err": ("Z_ERR",),
    "mag_ps_g": ("MAG_PS_G",), "mag_ps_r": ("MAG_PS_R",), "mag_ps_i": ("MAG_PS_I",),
    "mag_ps_z": ("MAG_PS_Z",), "mag_ps_y": ("MAG_PS_Y",), "tsource": ("TSOURCE",),
    "tfrom": ("TFROM", "T_FROM"), "tcomment": ("TCOMMENT",),
    "fibertype": ("FIB_TYPE", "FIBERTYP"), "offsets": ("OFFSET",), "offset_v": ("OFFSET_V",),
    "ra": ("RA",), "dec": ("DEC",), "fibermask": ("FIB_MASK", "FIBERMAS")}


def header_catalogue(paths, out):
  """Writes `out`, a CSV in LAMOST_GENERAL_COLUMNS with a row per LAMOST spectrum file of
  `paths`, from its primary header: how astrotl/data/spectra/lrs_general_catalogue.csv
  was made.  obsdate is the local date the night began, LMJD's date less a day (the
  archive's folder: spec-55859-F5902_* lie in 20111024/F5902/); 'NULL' is empty."""
  from astropy.io import fits
  from astrotl.io.catalog import LAMOST_GENERAL_COLUMNS
  with open(out, "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(LAMOST_GENERAL_COLUMNS)
    for path in paths:
      h = fits.getheader(path)
      row = {}
      for col, keys in HEADER_KEYS.items():
        v = next((h[k] for k in keys if k in h), None)
        if isinstance(v, bool):
          v = int(v)
        elif isinstance(v, str):
          v = v.strip()
          v = "" if v.upper() == "NULL" else v
        row[col] = "" if v is None else v
      row["designation"] = str(row["designation"]).removeprefix("LAMOST ").strip()
      row["obsdate"] = str(np.datetime64("1858-11-17") + np.timedelta64(int(h["LMJD"]) - 1, "D"))
      w.writerow([row.get(c, "") for c in LAMOST_GENERAL_COLUMNS])


def embedding_scan(folder, n, dim=256, clusters=40, spread=0.3, chunk_size=4096, seed=0):
  """A finished `--embeddings` scan folder holding only synthetic embeddings (Gaussian
  clusters, float16) and file/obsid columns: a test bed for astrotl.similar.  Returns the
  unit embeddings (float32) in row order."""
  from astrotl.scan import chunks
  from astrotl.similar import metric
  import pyarrow as pa
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, dim))
  x = (centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, dim)))
  x = x.astype(np.float16)
  store = chunks.Store(folder, n, chunk_size)
  store.open({"inputs_sha256": f"synthetic:{seed}", "n_inputs": n, "chunk_size": chunk_size,
              "model": "synthetic", "cascade": None,
              "embeddings": {"width": dim, "dtype": "float16", "reference": None}})
  for i in range(store.n_chunks):
    a, b = store.span(i)
    store.write(i, pa.table({"file": [f"synthetic-{j}" for j in range(a, b)],
                             "obsid": np.arange(OBSID0 + a, OBSID0 + b)}), [], embedding=x[a:b])
  store.close()
  return metric.unit(x)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.out:
    raise app.UsageError("--out is required")
  catalog = make(f.n, f.out, f.seed, f.compresslevel, f.files)
  print(f"wrote {f.files or f.n} spectra, {f.n} catalog rows and {catalog}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
