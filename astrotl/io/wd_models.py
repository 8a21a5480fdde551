"""White-dwarf model-atmosphere grids in the Koester / Warwick text format.

One file per surface gravity (e.g. `800_3D` for log g = 8.00, optionally gzipped):
line 1 holds the number of wavelength points N, then N wavelengths (Angstrom, air),
then one block per effective temperature: a header line
` Effective temperature =  T  gravity =  g  y = 0` (g in cgs) and N fluxes (F_lambda,
arbitrary units).  `read_grid` stacks a directory of such files into one array;
`python -m astrotl.io.wd_models SRC_DIR OUT.npz [WMIN WMAX]` writes the compact bundle
that `astrotl.preprocess.simulate` ships.

`read_koester_grid` reads D. Koester's own tables instead (one file per model,
`da12000_800.dk.gz`: a FITS-like header, then vacuum wavelength and F_lambda), the format
of the Koester DA and DB grids used to train the white-dwarf model (not shipped).
"""

import gzip
import os
import pathlib
import re
import sys

import numpy as np

from astrotl.io import SpectrumError

_HEADER = re.compile(r"Effective temperature\s*=\s*(\S+)\s+gravity\s*=\s*(\S+)")


def read_model_file(path):
  """One gravity file -> (wavelength (N,), teff (M,), logg, flux (M, N))."""
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt") as f:
      text = f.read()
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise SpectrumError(path, f"cannot read model file ({type(e).__name__}: {e})") from e
  parts = _HEADER.split(text)
  # split() gives [head, T1, g1, body1, T2, g2, body2, ...].
  if len(parts) < 4:
    raise SpectrumError(path, "no 'Effective temperature = ... gravity = ...' block")
  try:
    head = np.array(parts[0].split(), np.float64)
    n = int(head[0])
    wave = head[1:]
    teff, grav, flux = [], [], []
    for i in range(1, len(parts), 3):
      teff.append(float(parts[i]))
      grav.append(float(parts[i + 1]))
      # The body starts with the rest of the header ('y = 0'): keep the last n numbers.
      values = [v for v in parts[i + 2].split() if _is_number(v)]
      flux.append(np.array(values[-n:] if len(values) >= n else values, np.float64))
  except (ValueError, IndexError) as e:
    raise SpectrumError(path, f"malformed model file ({e})") from e
  if wave.size != n or any(f.size != n for f in flux):
    raise SpectrumError(path, f"expected {n} wavelengths and {n} fluxes per block")
  if np.any(np.diff(wave) <= 0):
    raise SpectrumError(path, "model wavelengths are not increasing")
  logg = np.log10(grav)
  if np.ptp(logg) > 1e-6:
    raise SpectrumError(path, "blocks of one file have different gravities")
  return wave, np.array(teff), float(np.round(logg[0], 4)), np.stack(flux)


def _is_number(s):
  try:
    float(s)
    return True
  except ValueError:
    return False


def read_grid(directory, wmin=None, wmax=None):
  """All gravity files of a directory -> dict(wavelength, teff, logg, flux (G, T, N)).

  Files must share the wavelength and temperature grids.  `wmin`/`wmax` trim the
  wavelength range (inclusive).
  """
  directory = pathlib.Path(directory)
  files = sorted(p for p in directory.iterdir()
                 if re.fullmatch(r"\d+_3D(\.txt)?(\.gz)?", p.name))
  if not files:
    raise SpectrumError(directory, "no model files named like 800_3D[.txt][.gz]")
  grids = [read_model_file(p) for p in files]
  wave, teff = grids[0][0], grids[0][1]
  for p, (w, t, _, _) in zip(files, grids):
    if w.shape != wave.shape or np.any(w != wave) or t.shape != teff.shape or np.any(t != teff):
      raise SpectrumError(p, f"wavelength/temperature grid differs from {files[0].name}")
  order = np.argsort([g[2] for g in grids])
  keep = np.ones(wave.size, bool)
  if wmin is not None:
    keep &= wave >= wmin
  if wmax is not None:
    keep &= wave <= wmax
  return {
      "wavelength": wave[keep],
      "teff": teff,
      "logg": np.array([grids[i][2] for i in order]),
      "flux": np.stack([grids[i][3][:, keep] for i in order]).astype(np.float32),
  }


# --- Koester's own table format (one file per model) ----------------------------------------

_KOESTER_NAME = re.compile(r"d([a-z])(\d+)_(\d+)\.dk(\.gz)?")
# Koester tables are finely sampled in the lines and coarsely between them; one common
# log-wavelength grid, finer than the simulator's (2.5e-5 dex), holds them all.
KOESTER_STEP = 1e-5


def read_koester_file(path):
  """One Koester model table (`da12000_800.dk[.gz]`) -> (teff, logg, wavelength, flux):
  vacuum wavelengths (A) and F_lambda, as the file gives them."""
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  head, rows = {}, []
  try:
    with opener(path, "rt") as f:
      for line in f:
        if line.startswith("END"):
          break
        if "=" in line[:10]:
          key, _, value = line.partition("=")
          head[key.strip()] = value.split("/")[0].strip().strip("'").strip()
      rows = np.loadtxt(f, dtype=np.float64, ndmin=2)
  except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
    raise SpectrumError(path, f"cannot read Koester model table ({type(e).__name__}: {e})") from e
  try:
    teff, logg = float(head["TEFF"]), float(head["LOG_G"])
  except (KeyError, ValueError) as e:
    raise SpectrumError(path, "header lacks a numeric TEFF or LOG_G") from e
  if rows.ndim != 2 or rows.shape[1] != 2 or len(rows) < 2:
    raise SpectrumError(path, f"expected two columns (wavelength, F_lambda), got {rows.shape}")
  wave, flux = rows[:, 0], rows[:, 1]
  if np.any(np.diff(wave) <= 0) or not np.all(np.isfinite(flux)) or np.any(flux <= 0):
    raise SpectrumError(path, "wavelengths must increase and fluxes be finite and > 0")
  return teff, logg, wave, flux


def read_koester_grid(directory, kind="da", wmin=3400.0, wmax=9800.0):
  """The Koester tables of one kind ("da" or "db") in a directory -> the grid dict of
  `read_grid`, with vacuum wavelengths and F_lambda (flags `vacuum` and `flambda`), each
  table interpolated in log wavelength onto one grid of KOESTER_STEP dex in [wmin, wmax].
  Every (logg, teff) pair of the grid must have its table."""
  directory = pathlib.Path(directory)
  files = sorted(p for p in directory.iterdir()
                 if (m := _KOESTER_NAME.fullmatch(p.name)) and m.group(1) == kind[-1])
  if not files:
    raise SpectrumError(directory, f"no Koester tables named like d{kind[-1]}12000_800.dk[.gz]")
  loglam = np.arange(np.log10(wmin), np.log10(wmax), KOESTER_STEP)
  models = {}
  for p in files:
    teff, logg, wave, flux = read_koester_file(p)
    if wave[0] > wmin or wave[-1] < wmax:
      raise SpectrumError(p, f"covers {wave[0]:.0f}-{wave[-1]:.0f} A, not {wmin:g}-{wmax:g} A")
    models[(round(logg, 4), teff)] = np.interp(loglam, np.log10(wave), flux).astype(np.float32)
  loggs = sorted({k[0] for k in models})
  teffs = sorted({k[1] for k in models})
  missing = [(g, t) for g in loggs for t in teffs if (g, t) not in models]
  if missing:
    raise SpectrumError(directory, f"{len(missing)} (logg, teff) models missing, e.g. {missing[:3]}")
  return {"wavelength": 10.0 ** loglam, "teff": np.array(teffs), "logg": np.array(loggs),
          "flux": np.stack([np.stack([models[(g, t)] for t in teffs]) for g in loggs]),
          "vacuum": True, "flambda": True}


def main(argv):
  if len(argv) not in (3, 5):
    sys.exit("usage: python -m astrotl.io.wd_models SRC_DIR OUT.npz [WMIN WMAX]")
  wmin, wmax = (float(argv[3]), float(argv[4])) if len(argv) == 5 else (None, None)
  grid = read_grid(argv[1], wmin, wmax)
  np.savez_compressed(argv[2], **grid)
  print(f"{argv[2]}: {grid['flux'].shape} (logg x teff x wavelength)")


if __name__ == "__main__":
  main(sys.argv)
