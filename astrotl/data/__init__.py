"""Small real samples and trained models shipped with the package.

spectra/    59 LAMOST LRS spectra covering every file layout (see spectra/index.csv and
            PROVENANCE.md; LAMOST data policy, acknowledgement required), the same files
            as rows of LAMOST's DR9 LRS general catalogue (lrs_general_catalogue.csv,
            from their headers), and in spectra/sdss_boss/ one real SDSS BOSS white
            dwarf (MIT, its own index.csv).
wd_models/  the Warwick 3D DA white-dwarf model grid, 3000-10000 A (MIT, via corv).
upsilont/   the published UPSILoN-T network of Kim et al. 2021 (MIT).
lightcurves/ UPSILoN's two EROS-2 sample light curves (MIT), the default input of
            python -m astrotl.classify_lightcurves.
models/     wd_two_stage.npz: the two-stage white-dwarf model the scan uses by default,
            trained by experiments/wd_search.py (see experiments/README.md); the metadata
            inside it records its classes, temperatures, training data and test scores.
"""

import csv
import importlib.resources
import pathlib


def sample_dir(name: str = "spectra") -> pathlib.Path:
  """Path of a bundled sample folder, e.g. sample_dir() / 'index.csv'."""
  path = importlib.resources.files(__name__) / name
  if not path.is_dir():
    raise FileNotFoundError(f"astrotl has no bundled sample {name!r}")
  real = pathlib.Path(str(path))
  if not real.is_dir():  # e.g. imported from a zip archive
    raise FileNotFoundError(f"bundled sample {name!r} is not a folder on disk ({path})")
  return real


def sample_index(name: str = "spectra") -> list[dict]:
  """Rows of a sample's index.csv; each row's 'path' is the file's absolute path."""
  folder = sample_dir(name)
  with open(folder / "index.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    row["path"] = folder / row["file"]
  return rows
