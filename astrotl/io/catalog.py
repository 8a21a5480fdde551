"""Catalogs: the LAMOST general catalog and extracts of it (CSV / FITS), known-object
lists, and the sky cross-match.

Columns are read as plain numpy arrays (`read_table`).  Names are lower-cased and a
leading 'combined_' is dropped (LAMOST's joined catalogs prefix every column with it),
and columns are then found by aliases (`file`, `filename`, `ra_obs`, ...).  Every lookup
takes an explicit override, and a missing column is an error that lists the columns
the file does have.  `read_arrow` reads every column as the file names it, for carrying
into outputs.
"""

import os

import numpy as np

from astrotl.io import SpectrumError
from astrotl.io import limits as io_limits


class CatalogError(SpectrumError):
  """A catalog could not be read or lacks a needed column (path + reason).  The reason
  may quote the file (a parser's message echoes a row): it is made one printable line.
  `limit` names the io_limits.Limits field a refusal crossed (None otherwise)."""

  limit = None

  def __init__(self, path, reason: str):
    super().__init__(path, io_limits.printable(reason))

_TEXT_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz", ".tsv", ".tsv.gz", ".dat", ".dat.gz")
_FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz")
SUFFIXES = _TEXT_SUFFIXES + _FITS_SUFFIXES


def column_name(name: str) -> str:
  name = str(name).strip().lower()
  return name[len("combined_"):] if name.startswith("combined_") else name


def read_table(path, columns=None, limits=None) -> dict:
  """Reads a CSV (',', '|' or tab separated, optionally gzipped) or FITS table.

  Returns {column name: numpy array}; text columns are str arrays.  `columns` (names as
  returned) keeps only those, so a survey catalog's other columns never reach memory.
  `limits` (io_limits.Limits, default its defaults) bounds what the file may hold.
  Raises SpectrumError naming the file if it cannot be read.
  """
  name = os.fspath(path).lower()
  wanted = None if columns is None else set(columns)
  if name.endswith(_FITS_SUFFIXES):
    pairs = _read_fits(path, wanted, limits).items()
  elif name.endswith(_TEXT_SUFFIXES):
    pairs = _numpy_columns(_read_csv(path, wanted, limits))
    import pyarrow
    pyarrow.default_memory_pool().release_unused()  # the parse buffers; RSS is what counts
  else:
    raise CatalogError(path, f"not a catalog: expected one of {', '.join(SUFFIXES)}")
  out = {}
  for key, values in pairs:
    key = column_name(key)
    if key and key not in out:
      out[key] = values
  if not out:
    raise CatalogError(path, "catalog has no columns")
  return out


def read_arrow(path, limits=None):
  """Every column of a CSV or FITS catalog as a pyarrow Table, named as the file names
  them (case and any 'combined_' prefix kept, duplicates and unnamed columns too): what
  the scan carries into its outputs.  Missing values are nulls (an empty or NaN field, a
  FITS TNULL), dates are text as written, and a FITS vector column is text.  Text is held as arrow strings, a byte a character, not as numpy's 4."""
  name = os.fspath(path).lower()
  if name.endswith(_FITS_SUFFIXES):
    return _fits_arrow(path, limits)
  if not name.endswith(_TEXT_SUFFIXES):
    raise CatalogError(path, f"not a catalog: expected one of {', '.join(SUFFIXES)}")
  return arrow_columns(_read_csv(path, limits=limits))


def arrow_columns(table, names=None):
  """read_arrow's columns of a table pyarrow's csv reader made (`names`: the names to give
  them, default the table's): dates and all-empty columns as text, '' as null."""
  import pyarrow as pa
  import pyarrow.compute as pc
  columns = []
  for column in table.columns:
    if pa.types.is_temporal(column.type) or pa.types.is_null(column.type):
      column = column.cast(pa.string())
    if pa.types.is_string(column.type):  # '' is a missing value, as everywhere in astrotl
      column = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
    columns.append(column)
  return pa.Table.from_arrays(columns, names=list(names or table.column_names))


def _read_csv(path, wanted=None, limits=None):
  """The arrow table of a text catalog (only the columns whose `column_name` is in
  `wanted`, if given), read through io_limits.open_text: gunzipped by content, and
  refused as soon as it passes `limits`."""
  import csv
  import pyarrow
  import pyarrow.csv

  with io_limits.open_text(path, limits) as f:  # a gzip bomb: refused before parsing
    first = f.first_line()
    delimiter = max((",", "|", "\t"), key=lambda d: first.count(d.encode()))
    header = next(csv.reader([first.decode("utf-8", "replace")], delimiter=delimiter), [])
    io_limits.check_columns(path, len(header), limits)
    convert = pyarrow.csv.ConvertOptions()
    if wanted is not None:
      convert.include_columns = [h for h in header if column_name(h) in wanted]
    try:
      return pyarrow.csv.read_csv(f, convert_options=convert,
                                  parse_options=pyarrow.csv.ParseOptions(delimiter=delimiter))
    except (OSError, pyarrow.ArrowException) as e:
      raise CatalogError(path, f"cannot parse catalog: {e}") from None


def _numpy_columns(table):
  """[(name, numpy array)] of an arrow table, text as str arrays ('' for a missing value)."""
  import pyarrow
  out = []
  for name, column in zip(table.column_names, table.columns):
    if pyarrow.types.is_temporal(column.type):  # dates (obsdate) stay text, as written
      column = column.cast(pyarrow.string())
    if pyarrow.types.is_string(column.type) or pyarrow.types.is_large_string(column.type):
      values = _text(column)
    else:
      values = column.to_numpy(zero_copy_only=False)
      if values.dtype == object:
        values = np.array(["" if v is None else str(v) for v in values], dtype=str)
    out.append((name, values))
  return out


def _text(column) -> np.ndarray:
  """A text column as a numpy str array ('' for a missing value).  ASCII text is copied
  in one piece, not through a Python str a value (10 M rows made ~1 GB of them); when a
  few long values would pad every row to their width (a hostile file's one 1 MB cell in
  a column of 10 M short ones), it is an object array of str instead."""
  import pyarrow.compute as pc
  column = pc.fill_null(column, "")
  n, lengths = len(column), pc.binary_length(column)
  width = max(pc.max(lengths).as_py() or 0, 1)
  if n * width > 16 * (pc.sum(lengths).as_py() or 0) + (64 << 20):
    return np.array(column.to_pylist() + [None], dtype=object)[:-1]  # never a 2-d array
  if n and pc.all(pc.string_is_ascii(column)).as_py():
    padded = pc.utf8_rpad(column, width=width, padding="\0").combine_chunks()
    codes = np.frombuffer(padded.buffers()[2], np.uint8, n * width)  # ASCII: byte = code point
    return codes.astype(np.uint32).view(f"<U{width}")  # trailing NULs end a numpy str
  return np.array(column.to_pylist(), dtype=str)


def _read_fits(path, wanted=None, limits=None):
  io_limits.check_fits(path, limits)  # the sizes its headers declare, before astropy loads
  from astropy.io import fits

  try:
    with fits.open(path, memmap=False) as hdul:
      table = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
      if table is None:
        raise CatalogError(path, "FITS catalog has no table HDU")
      data = table.data
      out = {}
      for name in table.columns.names:
        if wanted is not None and column_name(name) not in wanted:
          continue
        values = np.asarray(data[name])
        if values.dtype.kind == "S":
          values = np.char.strip(np.char.decode(values, "ascii", "replace"))
        out[name] = values.astype(values.dtype.newbyteorder("="))
      return out
  except SpectrumError:
    raise
  except Exception as e:  # astropy raises many exception types for damaged files
    raise CatalogError(path, f"cannot read FITS catalog ({type(e).__name__}: {e})") from None


def _fits_arrow(path, limits=None):
  io_limits.check_fits(path, limits)
  from astropy.io import fits

  try:
    with fits.open(path, memmap=False) as hdul:
      hdu = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
      if hdu is None:
        raise CatalogError(path, "FITS catalog has no table HDU")
      return hdu_arrow(hdu)
  except SpectrumError:
    raise
  except Exception as e:  # astropy raises many exception types for damaged files
    raise CatalogError(path, f"cannot read FITS catalog ({type(e).__name__}: {e})") from None


def hdu_arrow(hdu):
  """read_arrow's columns of a FITS table HDU (the whole table, or a block of its rows)."""
  import pyarrow as pa
  from astropy.table import Table
  table = Table.read(hdu)  # applies TNULL, TSCAL and masks as astropy does
  arrays = []
  for name in table.colnames:
    col = table[name]
    data, mask = np.ma.getdata(col), np.ma.getmaskarray(col)
    if data.ndim > 1:  # a vector column: its text, one string a row
      data = np.array([" ".join(map(str, np.ravel(v))) for v in data], dtype=str)
      mask = mask.all(axis=tuple(range(1, mask.ndim)))  # (also for no rows)
    elif data.dtype.kind == "S":
      data = np.char.strip(np.char.decode(data, "ascii", "replace"))
    elif data.dtype.kind == "U":
      data = np.char.strip(data)
    if data.dtype.kind == "U":
      mask = mask | (data == "")
    arrays.append(pa.array(data.astype(data.dtype.newbyteorder("=")), mask=mask))
  return pa.Table.from_arrays(arrays, names=list(table.colnames))


def lamost_filename(lmjd, planid, spid, fiberid) -> str:
  """The archive name of an LRS spectrum: spec-LMJD-PLANID_spSS-FFF.fits (no .gz)."""
  return f"spec-{int(float(lmjd))}-{str(planid).strip()}_sp{int(float(spid)):02d}-" \
         f"{int(float(fiberid)):03d}.fits"


PATH_ALIASES = ("path", "file", "filename", "fits_file", "spec_file", "fitsname")
OBSID_ALIASES = ("obsid", "obs_id")
RA_ALIASES = ("ra", "ra_obs", "raj2000", "ra_deg", "plug_ra")
DEC_ALIASES = ("dec", "dec_obs", "dej2000", "decj2000", "dec_deg", "plug_dec")


def find_column(table: dict, aliases, path="catalog", what="column", override=None):
  """Name of the first column matching `aliases` (case-insensitive), or `override`."""
  if override:
    override = column_name(override)
    if override not in table:
      raise CatalogError(path, f"no column {override!r}; columns are {sorted(table)}")
    return override
  lower = {c.lower(): c for c in table}
  for a in aliases:
    if a in lower:
      return lower[a]
  return None


def require_column(table, aliases, path, what, flag, override=None):
  col = find_column(table, aliases, path, what, override)
  if col is None:
    raise CatalogError(path, f"no {what} column (looked for {', '.join(aliases)}); "
                       f"columns are {sorted(table)}; name it with {flag}")
  return col


def lamost_relative_path(obsdate, planid, lmjd, spid, fiberid) -> str:
  """LAMOST archive layout: YYYYMMDD/PLANID/spec-LMJD-PLANID_spSS-FFF.fits.gz."""
  day = str(obsdate).replace("-", "")[:8]
  return f"{day}/{str(planid).strip()}/{lamost_filename(lmjd, planid, spid, fiberid)}.gz"


LAMOST_PATH_COLUMNS = ("obsdate", "planid", "lmjd", "spid", "fiberid")

# The columns of LAMOST's DR9 LRS general catalogue (dr9_v*_LRS_catalogue.csv / .fits), in
# its order.  The scan needs only LAMOST_PATH_COLUMNS of them and carries every column a
# catalog has, whatever its release adds or drops.
LAMOST_GENERAL_COLUMNS = (
    "obsid", "designation", "obsdate", "lmjd", "mjd", "planid", "spid", "fiberid", "ra_obs",
    "dec_obs", "snru", "snrg", "snrr", "snri", "snrz", "objtype", "class", "subclass", "z",
    "z_err", "ps_id", "mag_ps_g", "mag_ps_r", "mag_ps_i", "mag_ps_z", "mag_ps_y",
    "gaia_source_id", "gaia_g_mean_mag", "gaia_bp_mean_mag", "gaia_rp_mean_mag", "tsource",
    "tfrom", "tcomment", "fibertype", "offsets", "offset_v", "ra", "dec", "fibermask")


def catalog_paths(catalog_path, path_column=None, keep=None,
                  limits=None) -> tuple[list[str], dict]:
  """File paths as a catalog lists them (relative or absolute), and the table itself
  (only the columns named in `keep` and those the paths need, if `keep` is given).

  Uses a path/file column if there is one; otherwise builds LAMOST archive paths from
  obsdate, planid, lmjd, spid and fiberid (the general catalog's columns).
  `limits` (io_limits.Limits) bounds what the file may hold.
  """
  if keep is not None:
    columns = {*keep, *PATH_ALIASES, *LAMOST_PATH_COLUMNS}
    if path_column:
      columns.add(column_name(path_column))
    table = read_table(catalog_path, columns, limits)  # a refusal is final
    try:
      return _paths(catalog_path, table, path_column)
    except CatalogError:
      pass  # read it all, so the message lists every column the file has
  return _paths(catalog_path, read_table(catalog_path, limits=limits), path_column)


def _paths(catalog_path, table, path_column):
  return listed_paths(table, path_columns(catalog_path, table, path_column)), table


def path_columns(catalog_path, table, path_column=None) -> tuple:
  """The columns (names as read_table gives them; `table` needs only those keys) the
  paths come from: (a path column,), or LAMOST_PATH_COLUMNS to build archive paths."""
  col = find_column(table, PATH_ALIASES, catalog_path, "path", path_column)
  if col is not None:
    return (col,)
  missing = [n for n in LAMOST_PATH_COLUMNS if n not in table]
  if missing:
    raise CatalogError(catalog_path, f"no file-path column ({', '.join(PATH_ALIASES)}) and "
                       f"cannot build LAMOST paths: missing {missing}; columns are "
                       f"{sorted(table)}; name the path column with --path_column")
  return LAMOST_PATH_COLUMNS


def listed_paths(table, columns) -> list:
  """Each row's path as the catalog lists it, from `path_columns`' columns of `table`
  ({name: numpy array}); '' for a row whose LAMOST columns hold no numbers (a null)."""
  if len(columns) == 1:
    return [str(v).strip() for v in table[columns[0]]]
  out = []
  for row in zip(*(table[n] for n in columns)):
    try:
      out.append(lamost_relative_path(*row))
    except (TypeError, ValueError, OverflowError):  # int(float('nan')): an empty field
      out.append("")
  return out


def radec_columns(table, path="catalog", ra_column=None, dec_column=None,
                  flags=("--ra_column", "--dec_column")) -> tuple[str, str]:
  """Names of the RA and Dec columns; `flags` name the options that choose them, for errors."""
  return (require_column(table, RA_ALIASES, path, "RA", flags[0], ra_column),
          require_column(table, DEC_ALIASES, path, "Dec", flags[1], dec_column))


def radec(table, path="catalog", ra_column=None, dec_column=None,
          flags=("--ra_column", "--dec_column")):
  """(ra, dec) float arrays, NaN where a value is not a number (text in the column);
  `bad_positions` finds those and the values out of range."""
  ra, dec = radec_columns(table, path, ra_column, dec_column, flags)
  return numbers(table[ra]), numbers(table[dec])


def numbers(values) -> np.ndarray:
  """A column as floats, NaN where a value is not a number."""
  try:
    return np.asarray(values, float)
  except (TypeError, ValueError):  # text among the numbers: parse one by one
    return np.array([_number(v) for v in values], float)


def _number(value):
  try:
    return float(value)
  except (TypeError, ValueError):
    return np.nan


def bad_positions(ra, dec) -> np.ndarray:
  """True where (ra, dec) is not a sky position in degrees: not a finite number, RA
  outside [0, 360) or Dec outside [-90, 90]."""
  ra, dec = np.asarray(ra, float), np.asarray(dec, float)
  with np.errstate(invalid="ignore"):
    return ~((ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90))


class Matcher:
  """Nearest-neighbour sky match against a fixed list of positions (e.g. known white
  dwarfs); the search tree is built once and reused for every batch of queries."""

  def __init__(self, known_ra, known_dec):
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    known_ra, known_dec = np.asarray(known_ra, float), np.asarray(known_dec, float)
    ok = ~bad_positions(known_ra, known_dec)
    self._index = np.flatnonzero(ok)
    self._coord = SkyCoord(known_ra[ok] * u.deg, known_dec[ok] * u.deg) if ok.any() else None

  def match(self, ra, dec, radius_arcsec: float = 3.0):
    """For each (ra, dec): index of the nearest known object within the radius (-1 if
    none) and its separation in arcsec (NaN where there is no position, or one out of
    range: a damaged header's Dec of 95 matches nothing rather than failing the scan)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    idx = np.full(len(ra), -1, np.int64)
    sep = np.full(len(ra), np.nan)
    ok = ~bad_positions(ra, dec)
    if not ok.any() or self._coord is None:
      return idx, sep
    j, d2, _ = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg).match_to_catalog_sky(self._coord)
    d = d2.to(u.arcsec).value
    hit = d <= radius_arcsec
    idx[np.flatnonzero(ok)[hit]] = self._index[j[hit]]
    sep[ok] = d
    return idx, sep


def crossmatch(ra, dec, known_ra, known_dec, radius_arcsec: float = 3.0):
  """`Matcher(known_ra, known_dec).match(ra, dec, radius_arcsec)` in one call."""
  return Matcher(known_ra, known_dec).match(ra, dec, radius_arcsec)
