"""Catalog tables (LAMOST general catalog and extracts of it) as plain numpy columns.

Column names are lower-cased and a leading 'combined_' is dropped, since LAMOST's joined
catalogs prefix every column with it; so 'combined_obsid' and 'OBSID' both become 'obsid'.
"""

import gzip
import os

import numpy as np

from astrotl.io import SpectrumError

_TEXT_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz", ".tsv", ".tsv.gz", ".dat", ".dat.gz")
_FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz")
SUFFIXES = _TEXT_SUFFIXES + _FITS_SUFFIXES


def column_name(name: str) -> str:
  name = str(name).strip().lower()
  return name[len("combined_"):] if name.startswith("combined_") else name


def read_table(path) -> dict:
  """Reads a CSV (',', '|' or tab separated, optionally gzipped) or FITS table.

  Returns {column name: numpy array}; text columns are str arrays.  Raises
  SpectrumError naming the file if it cannot be read.
  """
  name = os.fspath(path).lower()
  if name.endswith(_FITS_SUFFIXES):
    columns = _read_fits(path)
  elif name.endswith(_TEXT_SUFFIXES):
    columns = _read_text(path)
  else:
    raise SpectrumError(path, f"not a catalog: expected one of {', '.join(SUFFIXES)}")
  out = {}
  for key, values in columns.items():
    key = column_name(key)
    if key and key not in out:
      out[key] = values
  if not out:
    raise SpectrumError(path, "catalog has no columns")
  return out


def _read_text(path):
  import pyarrow
  import pyarrow.csv

  opener = gzip.open if os.fspath(path).lower().endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      first = f.readline(65536)
  except (OSError, EOFError) as e:
    raise SpectrumError(path, f"cannot read catalog: {e}") from None
  delimiter = max((",", "|", "\t"), key=lambda d: first.count(d.encode()))
  try:
    table = pyarrow.csv.read_csv(os.fspath(path),
                                 parse_options=pyarrow.csv.ParseOptions(delimiter=delimiter))
  except (OSError, pyarrow.ArrowException) as e:
    raise SpectrumError(path, f"cannot parse catalog: {e}") from None
  out = {}
  for name, column in zip(table.column_names, table.columns):
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype == object:
      values = np.array(["" if v is None else str(v) for v in values], dtype=str)
    out[name] = values
  return out


def _read_fits(path):
  from astropy.io import fits

  try:
    with fits.open(path, memmap=False) as hdul:
      table = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
      if table is None:
        raise SpectrumError(path, "FITS catalog has no table HDU")
      data = table.data
      out = {}
      for name in table.columns.names:
        values = np.asarray(data[name])
        if values.dtype.kind == "S":
          values = np.char.strip(np.char.decode(values, "ascii", "replace"))
        out[name] = values.astype(values.dtype.newbyteorder("="))
      return out
  except SpectrumError:
    raise
  except Exception as e:  # astropy raises many exception types for damaged files
    raise SpectrumError(path, f"cannot read FITS catalog ({type(e).__name__}: {e})") from None


def lamost_filename(lmjd, planid, spid, fiberid) -> str:
  """The archive name of an LRS spectrum: spec-LMJD-PLANID_spSS-FFF.fits (no .gz)."""
  return f"spec-{int(float(lmjd))}-{str(planid).strip()}_sp{int(float(spid)):02d}-" \
         f"{int(float(fiberid)):03d}.fits"
