"""Catalogs: the LAMOST general catalog (CSV / FITS), known-object lists, cross-match.

Column names differ between releases and between the tables users make, so columns
are found by case-insensitive aliases (`combined_file`, `filename`, `ra_obs`, ...);
every function that looks one up takes an explicit override, and a missing column
is an error that lists the columns the file does have.
"""

import pathlib

import numpy as np

PATH_ALIASES = ("path", "file", "filename", "combined_file", "fits_file", "spec_file", "fitsname")
OBSID_ALIASES = ("obsid", "combined_obsid", "obs_id")
RA_ALIASES = ("ra", "ra_obs", "combined_ra_obs", "combined_ra", "raj2000", "ra_deg", "plug_ra")
DEC_ALIASES = ("dec", "dec_obs", "combined_dec_obs", "combined_dec", "dej2000", "decj2000",
               "dec_deg", "plug_dec")


class CatalogError(ValueError):
  pass


def read_table(path) -> dict:
  """{column name: numpy array} from a CSV (optionally .gz) or FITS table."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CatalogError(f"{path}: no such catalog file")
  name = path.name.lower()
  try:
    if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
      from astropy.table import Table
      t = Table.read(path, format="fits")
    else:
      from astropy.io import ascii as astro_ascii
      t = astro_ascii.read(str(path), format="csv", fast_reader=True)
  except Exception as e:
    raise CatalogError(f"{path}: cannot read as a CSV or FITS table ({type(e).__name__}: {e})") from e
  out = {}
  for col in t.colnames:
    values = t[col]
    if hasattr(values, "filled"):
      values = values.filled(np.nan if values.dtype.kind == "f" else "")
    out[col] = np.asarray(values)
  if not out or len(next(iter(out.values()))) == 0:
    raise CatalogError(f"{path}: the table has no rows")
  return out


def find_column(table: dict, aliases, path="catalog", what="column", override=None):
  """Name of the first column matching `aliases` (case-insensitive), or `override`."""
  if override:
    if override not in table:
      raise CatalogError(f"{path}: no column {override!r}; columns are {sorted(table)}")
    return override
  lower = {c.lower(): c for c in table}
  for a in aliases:
    if a in lower:
      return lower[a]
  return None


def require_column(table, aliases, path, what, flag, override=None):
  col = find_column(table, aliases, path, what, override)
  if col is None:
    raise CatalogError(f"{path}: no {what} column (looked for {', '.join(aliases)}); "
                       f"columns are {sorted(table)}; name it with {flag}")
  return col


def lamost_relative_path(obsdate, planid, lmjd, spid, fiberid) -> str:
  """LAMOST archive layout: YYYYMMDD/PLANID/spec-LMJD-PLANID_spSS-FFF.fits.gz."""
  day = str(obsdate).replace("-", "")[:8]
  return f"{day}/{planid}/spec-{int(float(lmjd))}-{planid}_sp{int(float(spid)):02d}-{int(float(fiberid)):03d}.fits.gz"


def spectrum_paths(catalog_path, root=None, path_column=None) -> tuple[list[str], dict]:
  """File paths listed by a catalog, joined to `root`; and the table itself.

  Uses a path/file column if there is one; otherwise builds LAMOST archive paths from
  obsdate, planid, lmjd, spid and fiberid (the general catalog's columns).
  """
  table = read_table(catalog_path)
  col = find_column(table, PATH_ALIASES, catalog_path, "path", path_column)
  if col is not None:
    rel = [str(v).strip() for v in table[col]]
  else:
    need = ("obsdate", "planid", "lmjd", "spid", "fiberid")
    lower = {c.lower(): c for c in table}
    missing = [n for n in need if n not in lower]
    if missing:
      raise CatalogError(f"{catalog_path}: no file-path column ({', '.join(PATH_ALIASES)}) and "
                         f"cannot build LAMOST paths: missing {missing}; columns are "
                         f"{sorted(table)}; name the path column with --path_column")
    cols = [table[lower[n]] for n in need]
    rel = [lamost_relative_path(*row) for row in zip(*cols)]
  base = pathlib.Path(root) if root else pathlib.Path(catalog_path).parent
  return [str(p if pathlib.Path(p).is_absolute() else base / p) for p in rel], table


def radec(table, path="catalog", ra_column=None, dec_column=None):
  ra = require_column(table, RA_ALIASES, path, "RA", "--ra_column", ra_column)
  dec = require_column(table, DEC_ALIASES, path, "Dec", "--dec_column", dec_column)
  return np.asarray(table[ra], float), np.asarray(table[dec], float)


def crossmatch(ra, dec, known_ra, known_dec, radius_arcsec: float = 3.0):
  """For each (ra, dec): index of the nearest known object within the radius (-1 if
  none) and its separation in arcsec (NaN where there is no position)."""
  from astropy import units as u
  from astropy.coordinates import SkyCoord
  ra, dec = np.asarray(ra, float), np.asarray(dec, float)
  idx = np.full(len(ra), -1, np.int64)
  sep = np.full(len(ra), np.nan)
  ok = np.isfinite(ra) & np.isfinite(dec)
  kok = np.isfinite(known_ra) & np.isfinite(known_dec)
  if not ok.any() or not kok.any():
    return idx, sep
  kidx = np.flatnonzero(kok)
  c = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg)
  k = SkyCoord(np.asarray(known_ra)[kok] * u.deg, np.asarray(known_dec)[kok] * u.deg)
  j, d2, _ = c.match_to_catalog_sky(k)
  d = d2.to(u.arcsec).value
  hit = d <= radius_arcsec
  idx[np.flatnonzero(ok)[hit]] = kidx[j[hit]]
  sep[ok] = d
  return idx, sep
