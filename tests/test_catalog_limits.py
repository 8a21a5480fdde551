"""Catalogs are read within limits (astrotl.io.limits): a gzip bomb, an endless line, a
FITS header declaring absurd sizes are refused fast in one line; --known rows without a
usable RA/Dec are counted and skipped (or refused with --strict_known); text from a
file never reaches the terminal unescaped."""

import gzip
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

from astrotl import data, scan
from astrotl.io import catalog, limits
from astrotl.scan import inputs

REPO = pathlib.Path(__file__).resolve().parents[1]
ESC = "\x1b[2J\x1b[31m"  # clear screen, red: what a hostile file would print


def _bomb(path, kind, header=b"file,ra,dec\n"):
  """A ~4 MB gzip file that inflates to ~4 GB: 'zeros' (one endless line) or 'rows'
  (a billion tiny rows).  Gzip members concatenate, so one small member repeated does."""
  body = b"\0" * (8 << 20) if kind == "zeros" else b"x,1,2\n" * ((8 << 20) // 6)
  member = gzip.compress(body, 9)
  with open(path, "wb") as f:
    f.write(gzip.compress(header if kind == "rows" else b""))
    for _ in range((4 << 30) // len(body)):
      f.write(member)
  return path


def _children():
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _cli(args, tmp_path):
  """(result, child CPU seconds) of `python -m astrotl.scan args`."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  before = _children()
  r = subprocess.run([sys.executable, "-m", "astrotl.scan", "--progress=false",
                      f"--out={tmp_path / 'o'}", *args], env=env, capture_output=True,
                     text=True, timeout=600)
  return r, _children() - before


def _one_line(r, *words):
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert "\x1b" not in r.stderr + r.stdout
  for w in words:
    assert w in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope="module")
def startup_cpu(tmp_path_factory):
  """CPU seconds the command takes to fail before reading anything (imports)."""
  r, cpu = _cli(["--catalog_limits=rows=abc"], tmp_path_factory.mktemp("base"))
  _one_line(r, "--catalog_limits=rows=abc", "not a number")
  return cpu


# --- bombs ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,limit", [("zeros", "line"), ("rows", "rows")])
@pytest.mark.parametrize("reader", ["read_table", "read_arrow", "load_known", "open_catalog"])
def test_gzip_bombs_are_refused_fast_in_one_line(tmp_path, kind, limit, reader):
  path = _bomb(tmp_path / "bomb.csv.gz", kind)
  lim = limits.Limits(flag="--catalog_limits")
  t0 = time.perf_counter()
  if reader in ("load_known", "open_catalog"):
    with pytest.raises((inputs.InputError, catalog.CatalogError)) as e:
      getattr(inputs, reader)(str(path), limits=lim)
  else:
    with pytest.raises(catalog.CatalogError) as e:
      getattr(catalog, reader)(path, limits=lim)
    assert e.value.limit == limit
  assert time.perf_counter() - t0 < 5
  message = str(e.value)
  assert "\n" not in message and str(path) in message
  assert f"catalog limit {limit}=" in message and f"--catalog_limits={limit}=N" in message


@pytest.mark.parametrize("flag,kind", [("--catalog", "rows"), ("--known", "rows")])
def test_a_gzip_bomb_through_the_cli_is_one_line_exit_2(tmp_path, flag, kind, startup_cpu):
  path = _bomb(tmp_path / "bomb.csv.gz", kind)
  r, cpu = _cli([f"{flag}={path}"], tmp_path)
  _one_line(r, str(path), "--catalog_limits=")
  assert cpu - startup_cpu < 5, (cpu, startup_cpu)  # the refusal's own cost
  peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  assert peak_mb < 1500, peak_mb  # before: 3.2 GB (--catalog) and 13.9 GB (--known)


def test_raised_limits_let_a_catalog_through(tmp_path):
  path = tmp_path / "c.csv"
  path.write_text("name,ra,dec\n" + "".join(f"s{i},{i},{i % 90}\n" for i in range(20)))
  with pytest.raises(catalog.CatalogError, match="over 10 rows"):
    catalog.read_table(path, limits=limits.Limits(rows=10))
  assert len(catalog.read_table(path, limits=limits.Limits(rows=20))["ra"]) == 20
  with pytest.raises(catalog.CatalogError, match="3 columns"):
    catalog.read_table(path, limits=limits.Limits(columns=2))
  with pytest.raises(catalog.CatalogError, match="line 1 is over 10 bytes"):
    catalog.read_table(path, limits=limits.Limits(line=10))


def test_a_plain_file_over_the_byte_limit_is_refused_by_its_size(tmp_path):
  path = tmp_path / "c.csv"
  path.write_text("ra,dec\n1,2\n" * 10)
  with pytest.raises(catalog.CatalogError) as e:
    catalog.read_table(path, limits=limits.Limits(bytes=50, flag="--catalog_limits"))
  assert e.value.limit == "bytes" and "--catalog_limits=bytes=N" in str(e.value)


def test_gzip_growth_past_the_ratio_is_refused(tmp_path):
  path = tmp_path / "c.csv.gz"
  path.write_bytes(gzip.compress(b"ra,dec\n" + b"1,2\n" * (20 << 20), 9))  # 80 MB, ~1000x
  with pytest.raises(catalog.CatalogError) as e:
    catalog.read_table(path, limits=limits.Limits(rows=10**9))
  assert e.value.limit == "ratio" and "gzip bomb" in str(e.value)


def test_the_limits_parse_and_name_their_mistakes():
  lim = limits.Limits.parse("rows=200M, bytes=40G,line=4MB,columns=2e4,ratio=1000")
  assert (lim.rows, lim.bytes, lim.line, lim.columns, lim.ratio) == (
      200_000_000, 40 << 30, 4 << 20, 20_000, 1000.0)
  assert limits.Limits.parse(None) == limits.Limits()
  for text, words in (("rows", "KEY=VALUE"), ("rows=abc", "not a number"),
                      ("lines=5", "KEY=VALUE"), ("rows=-1", "positive")):
    with pytest.raises(ValueError, match=words):
      limits.Limits.parse(text)
  with pytest.raises(scan.InputError, match="--catalog_limits=rows=0"):
    scan.catalog_limits_of("rows=0")


def test_the_defaults_take_lamost_dr9s_general_catalogue_with_room():
  lim = limits.Limits()  # DR9 LRS: 11.2 M rows, ~40 columns, ~350 bytes a line, ~4 GB
  assert lim.rows >= 4 * 11_200_000 and lim.columns >= 40 * 100
  assert lim.bytes >= 4 * (4 << 30) and lim.line >= 1000 * 350


# --- FITS -------------------------------------------------------------------------------

def _fits(path, naxis2=None, tfields=None, gz=False):
  from astropy.io import fits
  cols = [fits.Column("ra", "D", array=np.arange(3.0)), fits.Column("dec", "D", array=np.zeros(3))]
  hdul = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)])
  tmp = path.with_name(path.name + ".tmp")
  hdul.writeto(tmp, overwrite=True)
  raw = bytearray(tmp.read_bytes())
  for key, value in (("NAXIS2", naxis2), ("TFIELDS", tfields)):
    if value is not None:
      i = raw.find(key.ljust(8).encode() + b"=", 2880)
      raw[i:i + 80] = f"{key:<8}= {value:>20}".encode().ljust(80)
  path.write_bytes(gzip.compress(bytes(raw)) if gz else raw)
  return path


@pytest.mark.parametrize("gz", [False, True])
def test_a_fits_catalog_declaring_absurd_sizes_is_refused_before_reading(tmp_path, gz):
  name = "c.fits.gz" if gz else "c.fits"
  ok = _fits(tmp_path / ("ok_" + name), gz=gz)
  assert list(catalog.read_table(ok)) == ["ra", "dec"] and catalog.read_arrow(ok).num_rows == 3
  for kw, limit, lim in (
      ({"naxis2": 10**15}, "rows", limits.Limits(flag="--catalog_limits")),
      ({"tfields": 20000}, "columns", limits.Limits(flag="--catalog_limits")),
      ({"naxis2": 10**6}, "bytes", limits.Limits(bytes=1 << 20, flag="--catalog_limits"))):
    path = _fits(tmp_path / name, **kw)
    for read in (catalog.read_table, catalog.read_arrow):
      t0 = time.perf_counter()
      with pytest.raises(catalog.CatalogError) as e:
        read(path, limits=lim)
      assert time.perf_counter() - t0 < 5 and e.value.limit == limit, str(e.value)
      assert f"--catalog_limits={limit}=N" in str(e.value)


def test_a_fits_gz_declaring_far_more_than_it_holds_is_a_bomb(tmp_path):
  path = _fits(tmp_path / "c.fits.gz", naxis2=10**7, gz=True)  # 160 MB declared, 1 kB gz
  with pytest.raises(catalog.CatalogError) as e:
    catalog.read_table(path)
  assert e.value.limit == "ratio"
  path = _fits(tmp_path / "c.fits", naxis2=1000)  # declares more than the file holds
  with pytest.raises(catalog.CatalogError, match="truncated"):
    catalog.read_table(path)


def test_a_known_fits_with_absurd_naxis2_through_the_cli(tmp_path, startup_cpu):
  path = _fits(tmp_path / "known.fits", naxis2=10**12)
  r, cpu = _cli([f"--known={path}"], tmp_path)
  _one_line(r, "--known", "NAXIS2", "--catalog_limits=rows=N")
  assert cpu - startup_cpu < 5


# --- --known values ---------------------------------------------------------------------

def _known(tmp_path, rows):
  path = tmp_path / "known.csv"
  path.write_text("name,ra,dec\n" + "".join(f"{n},{r},{d}\n" for n, r, d in rows))
  return path


BAD_ROWS = [("wd0", 10.0, 20.0), ("bad_text", "12:30:00" + ESC, 5.0), ("wd2", 30.0, 40.0),
            ("bad_dec", 40.0, 95.0), ("bad_ra", 360.0, 0.0), ("bad_nan", "nan", 1.0),
            ("bad_inf", 1.0, "-inf"), ("bad_neg", -0.5, 1.0)]


def test_known_rows_without_a_usable_position_are_counted_and_skipped(tmp_path):
  k = inputs.load_known(str(_known(tmp_path, BAD_ROWS)))
  assert (k.n_rows, k.skipped) == (8, 6)
  warning = k.warning()
  assert "6 of 8 rows skipped" in warning and "--strict_known" in warning
  assert "data row 2" in warning and "\\x1b[2J" in warning and "\x1b" not in warning
  idx, sep = k.match([10.0, 30.0, 40.0, 360.0], [20.0, 40.0, 95.0, 0.0])
  assert [k.ids[j] for j in idx[:2]] == ["wd0", "wd2"] and list(idx[2:]) == [-1, -1]
  assert np.isnan(sep[2:]).all()  # a query with Dec 95 matches nothing, and raises nothing


def test_strict_known_refuses_them_in_one_escaped_line(tmp_path):
  path = _known(tmp_path, BAD_ROWS)
  with pytest.raises(inputs.InputError, match="6 of 8 rows"):
    inputs.load_known(str(path), strict=True)
  r, _ = _cli([f"--known={path}", "--strict_known"], tmp_path)
  line = _one_line(r, f"--known={path}", "6 of 8 rows", "data row 2", "\\x1b[2J")
  assert "without --strict_known" in line


def test_a_known_catalog_with_no_usable_row_is_an_error(tmp_path):
  with pytest.raises(inputs.InputError, match="none is left to match"):
    inputs.load_known(str(_known(tmp_path, [("a", "x", 1), ("b", 1, 91)])))


def test_a_malformed_row_echoed_by_the_parser_is_escaped(tmp_path):
  path = tmp_path / "c.csv"
  path.write_text(f"name,ra,dec\na,1,2\n{ESC}b\tc\n")
  with pytest.raises(catalog.CatalogError) as e:
    catalog.read_table(path)
  assert "\x1b" not in str(e.value) and "\t" not in str(e.value)
  assert "\\x1b[2J" in str(e.value) and "\n" not in str(e.value)
  names = tmp_path / "n.csv"  # a column name in a missing-column message
  names.write_text(f"x{ESC},y\n1,2\n")
  with pytest.raises(catalog.CatalogError) as e:
    catalog.radec(catalog.read_table(names), names)
  assert "\x1b" not in str(e.value) and "\\x1b" in str(e.value)


def test_the_scan_reports_skipped_known_rows(tmp_path, tiny_bundles):
  files = [r["path"] for r in data.sample_index("spectra")][:2]
  logged = []
  summary = scan.scan(spectra=",".join(map(str, files)), out=tmp_path / "o",
                      model=str(tiny_bundles["separate"]), known=str(_known(tmp_path, BAD_ROWS)),
                      workers=0, progress=False, log=logged.append)
  warnings = [l for l in logged if "WARNING" in l]
  assert len(warnings) == 1 and "6 of 8 rows skipped" in warnings[0]
  assert "\n" not in warnings[0] and "\x1b" not in warnings[0]
  assert (summary["known_rows"], summary["known_rows_skipped"]) == (8, 6)
  saved = json.loads((tmp_path / "o" / "summary.json").read_text())
  assert saved["known_rows_skipped"] == 6
  assert "6 of its 8 rows skipped" in (tmp_path / "o" / "report.md").read_text()


# --- text columns -----------------------------------------------------------------------

def test_text_columns_convert_as_before_without_a_python_str_a_value():
  import pyarrow as pa
  old = lambda c: np.array(["" if v is None else str(v) for v in c.to_pylist()], dtype=str)
  for values in (["ab", None, "c", ""], ["é", "x", None], [None, None], [], ["a" * 70, "b"]):
    column = pa.chunked_array([pa.array(values, pa.string())])
    got = catalog._text(column)
    assert got.dtype == old(column).dtype and list(got) == list(old(column)), values
  wide = pa.chunked_array([pa.array(["x"] * 2_000_000 + ["y" * 100_000])])
  got = catalog._text(wide)  # one long value would pad 2 M rows to 100 kB each
  assert got.dtype == object and got[0] == "x" and len(got[-1]) == 100_000
