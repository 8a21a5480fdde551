"""LAMOST LRS reader: every real file in shared/data, damaged inputs, and the common grid."""

import csv
import gzip
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits

from astrotl.io import SpectrumError, fitsraw, lamost
from astrotl.preprocess import spectra


def _index(shared_data):
  with open(shared_data / "spectra" / "index.csv", newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def lrs_rows(shared_data):
  rows = [r for r in _index(shared_data) if r["survey"] == "LAMOST-LRS"]
  assert len(rows) >= 400
  for r in rows:
    r["path"] = shared_data / "spectra" / r["file"]
  return rows


def _astropy_arrays(path):
  """flux, ivar, wavelength straight from astropy, independent of the reader's code."""
  with fits.open(path, memmap=False) as hdul:
    h = hdul[0].header
    if hdul[0].data is not None:
      data = hdul[0].data
      flux, ivar = data[0], data[1]
      if "subcontinuum" in h["EXTEN0"].lower():
        wave = 10.0 ** (h["COEFF0"] + h["COEFF1"] * np.arange(data.shape[1]))
      else:
        wave = data[2]
    else:
      table = hdul["COADD"].data
      flux, ivar, wave = table["FLUX"][0], table["IVAR"][0], table["WAVELENGTH"][0]
    return (np.array(flux, np.float32), np.array(ivar, np.float32),
            np.array(wave, np.float64), h)


def test_every_real_file_matches_astropy(lrs_rows):
  layouts = set()
  for row in lrs_rows:
    s = lamost.read(row["path"])
    flux, ivar, wave, header = _astropy_arrays(row["path"])
    name = row["file"]
    assert s.flux.dtype == np.float32 and s.ivar.dtype == np.float32, name
    assert s.wavelength.dtype == np.float64 and s.mask.dtype == bool, name
    assert s.flux.shape == s.ivar.shape == s.wavelength.shape == s.mask.shape, name
    assert s.flux.shape[0] == int(row["npix"]), name
    np.testing.assert_array_equal(s.flux, flux, err_msg=name)
    np.testing.assert_array_equal(s.ivar, ivar, err_msg=name)
    np.testing.assert_array_equal(s.wavelength, wave, err_msg=name)
    np.testing.assert_array_equal(s.mask, ~(ivar > 0) | ~np.isfinite(flux), err_msg=name)
    assert s.wavelength[0] == pytest.approx(float(row["wave_min"]), rel=1e-7), name
    assert set(s.meta) == set(lamost.META_KEYS), name
    assert s.meta["class"] == row["cls"] and s.meta["subclass"] == row["subclass"], name
    assert s.meta["obsid"] == (int(row["obsid"]) if row["obsid"] else None), name
    assert s.meta["snr_g"] == pytest.approx(float(row["snrg"])), name
    assert s.meta["ra"] == pytest.approx(float(row["ra"])), name
    assert s.meta["data_release"] == (row["data_v"] or None), name
    assert s.meta["file"] == os.path.basename(name).removesuffix(".gz"), name
    assert isinstance(s.meta["fiberid"], int) and isinstance(s.meta["lmjd"], int), name
    layouts.add(header.get("DATA_V", header["VERSPIPE"]))
  assert len(layouts) == 7  # pilot, DR2-era, DR6, DR7, DR8 images; DR9, DR13 tables


def test_fast_path_equals_astropy_path(lrs_rows):
  for row in lrs_rows:
    a = lamost.read(row["path"])
    b = lamost.read(row["path"], fast=False)
    for key in ("wavelength", "flux", "ivar", "mask"):
      x, y = getattr(a, key), getattr(b, key)
      assert x.dtype == y.dtype, (row["file"], key)
      np.testing.assert_array_equal(x, y, err_msg=f"{row['file']} {key}")
    assert a.meta == b.meta, row["file"]


def test_read_raw_is_fixed_size_and_log_linear(lrs_rows):
  for row in lrs_rows[::7]:
    s = lamost.read(row["path"])
    r = lamost.read_raw(row["path"])
    n = s.flux.shape[0]
    assert r.npix == n and r.flux.shape == r.ivar.shape == r.mask.shape == (spectra.NPIX,)
    np.testing.assert_array_equal(r.flux[:n], s.flux)
    np.testing.assert_array_equal(r.mask[:n], s.mask)
    assert r.mask[n:].all() and not r.flux[n:].any() and not r.ivar[n:].any()
    grid = r.loglam0 + r.dloglam * np.arange(n)
    assert np.abs(grid - np.log10(s.wavelength)).max() < 0.05 * r.dloglam, row["file"]
    assert r.meta == s.meta


def test_read_raw_rejects_too_many_pixels(lrs_rows):
  with pytest.raises(SpectrumError, match="more than"):
    lamost.read_raw(lrs_rows[0]["path"], size=100)


# --- files that must be rejected ---------------------------------------------------------

def test_mrs_file_is_rejected_by_content(shared_data, tmp_path):
  med = next((shared_data / "spectra" / "lamost_mrs_dr7_example").glob("med-*.fits.gz"))
  renamed = tmp_path / "spec-58408-TD230151N343645T01_sp01-015.fits.gz"
  shutil.copy(med, renamed)
  for path in (med, renamed):
    for fast in (True, False):
      with pytest.raises(SpectrumError, match="medium-resolution") as err:
        lamost.read(path, fast=fast)
      assert path.name in str(err.value) and err.value.path == str(path)


def test_sdss_file_is_rejected(shared_data):
  path = next((shared_data / "spectra" / "sdss_boss").glob("spec-*.fits.gz"))
  with pytest.raises(SpectrumError, match="not a LAMOST file"):
    lamost.read(path)


def _real_gz(lrs_rows, folder):
  return next(r["path"] for r in lrs_rows if r["file"].startswith(folder))


def _expect_error(path, match, both=True):
  for fast in (True, False) if both else (True,):
    with pytest.raises(SpectrumError, match=match) as err:
      lamost.read(path, fast=fast)
    assert str(path) in str(err.value), (fast, str(err.value))


def test_truncated_gzip(lrs_rows, tmp_path):
  data = _real_gz(lrs_rows, "lamost_dr8v1").read_bytes()
  path = tmp_path / "spec-truncated.fits.gz"
  path.write_bytes(data[: len(data) // 2])
  _expect_error(path, "truncated|unreadable")
  with pytest.raises(SpectrumError, match="truncated gzip"):
    lamost.read(path)


def test_corrupt_gzip(lrs_rows, tmp_path):
  data = bytearray(_real_gz(lrs_rows, "lamost_dr1").read_bytes())
  data[2000:2100] = bytes(100)
  path = tmp_path / "spec-corrupt.fits.gz"
  path.write_bytes(bytes(data))
  _expect_error(path, "corrupt gzip|unreadable")


def test_truncated_fits_data(lrs_rows, tmp_path):
  raw = gzip.decompress(_real_gz(lrs_rows, "lamost_dr9").read_bytes())
  path = tmp_path / "spec-short.fits"
  path.write_bytes(raw[: len(raw) - 40000])
  _expect_error(path, "truncated FITS data", both=False)
  header_only = tmp_path / "spec-header.fits"
  header_only.write_bytes(raw[:4000])
  _expect_error(header_only, "truncated FITS header", both=False)


def test_empty_random_and_missing_files(tmp_path):
  empty = tmp_path / "spec-empty.fits.gz"
  empty.write_bytes(b"")
  _expect_error(empty, "empty file", both=False)
  noise = tmp_path / "spec-noise.fits"
  noise.write_bytes(np.random.default_rng(0).bytes(5000))
  _expect_error(noise, "not a FITS file|unreadable")
  _expect_error(tmp_path / "spec-absent.fits", "no such file|unreadable")


def _write(path, hdus):
  fits.HDUList(hdus).writeto(path)
  return path


def _image_header(rows="Flux, Inverse, Wavelength, Andmask, Ormask"):
  h = fits.Header()
  h["TELESCOP"] = "LAMOST"
  h["FILENAME"] = "spec-00000-TEST_sp01-001.fits"
  if rows:
    h["EXTEN0"] = rows
  h["COEFF0"], h["COEFF1"] = 3.5682, 1e-4
  h["OBSID"], h["CLASS"], h["SUBCLASS"], h["SNRG"], h["FIBERID"] = 7, "STAR", "K5", 12.5, "27"
  return h


def _image(n=100, dtype=np.float32):
  data = np.zeros((5, n), dtype)
  data[0] = 1.0
  data[1] = 4.0
  data[2] = 10 ** (3.5682 + 1e-4 * np.arange(n))
  return data


def test_fits_without_spectrum(tmp_path):
  path = _write(tmp_path / "spec-nospec.fits", [fits.PrimaryHDU(header=_image_header())])
  _expect_error(path, "no spectrum")
  table = fits.BinTableHDU.from_columns([fits.Column("X", "E", array=np.ones(3))],
                                        name="COADD")
  path = _write(tmp_path / "spec-othertable.fits", [fits.PrimaryHDU(), table])
  _expect_error(path, "no spectrum")


def test_nan_flux_and_all_bad_pixels(tmp_path):
  data = _image()
  data[0] = np.nan
  path = _write(tmp_path / "spec-nan.fits", [fits.PrimaryHDU(data, _image_header())])
  _expect_error(path, "all 100 pixels are bad")
  data = _image()
  data[1] = 0.0
  path = _write(tmp_path / "spec-ivar0.fits", [fits.PrimaryHDU(data, _image_header())])
  _expect_error(path, "all 100 pixels are bad")
  data = _image()
  data[0, :10] = np.nan
  data[3, 50] = 1  # ANDMASK set on a pixel with positive ivar
  path = _write(tmp_path / "spec-somenan.fits", [fits.PrimaryHDU(data, _image_header())])
  s = lamost.read(path)
  assert s.mask[:10].all() and s.mask[50] and s.mask.sum() == 11


def test_unknown_layouts(tmp_path):
  cube = np.ones((2, 5, 100), np.float32)
  path = _write(tmp_path / "spec-cube.fits", [fits.PrimaryHDU(cube, _image_header())])
  _expect_error(path, "unknown layout")
  h = _image_header(rows="Flux Inverse Sky Andmask Ormask")
  del h["COEFF0"], h["COEFF1"]
  data = _image()
  data[2] = 0.5
  path = _write(tmp_path / "spec-norow.fits", [fits.PrimaryHDU(data, h)])
  _expect_error(path, "unknown layout")
  path = _write(tmp_path / "spec-decreasing.fits",
                [fits.PrimaryHDU(_image()[:, ::-1].copy(), _image_header())])
  _expect_error(path, "increasing")


def test_float64_image_without_row_names(tmp_path):
  data = _image(dtype=np.float64)
  data[0] = np.linspace(1, 2, 100)
  path = _write(tmp_path / "spec-f64.fits", [fits.PrimaryHDU(data, _image_header(rows=None))])
  s = lamost.read(path)
  assert s.flux.dtype == np.float32 and s.wavelength.dtype == np.float64
  np.testing.assert_array_equal(s.flux, data[0].astype(np.float32))
  np.testing.assert_array_equal(s.wavelength, data[2])
  assert s.meta["fiberid"] == 27 and s.meta["obsid"] == 7 and s.meta["ra"] is None


def test_scaled_integer_image_matches_astropy(tmp_path):
  data = np.arange(500, dtype=np.int16).reshape(5, 100) + 3
  data[3:] = -40  # masks scale to 0
  hdu = fits.PrimaryHDU(data, _image_header(rows="Flux Inverse Subcontinuum Andmask Ormask"))
  hdu.header["BSCALE"], hdu.header["BZERO"] = 0.25, 10.0
  path = _write(tmp_path / "spec-scaled.fits", [hdu])
  buf = fitsraw.load(path)
  image = fitsraw.hdus(buf, path)[0].image()
  with fits.open(path) as hdul:
    expected = hdul[0].data
  assert image.dtype == expected.dtype
  np.testing.assert_array_equal(image, expected)
  np.testing.assert_array_equal(lamost.read(path).flux, lamost.read(path, fast=False).flux)


def test_unusual_table_falls_back_to_astropy(tmp_path):
  n = 50
  cols = [fits.Column("FLUX", f"{n}E", array=np.ones((1, n))),
          fits.Column("IVAR", f"{n}E", array=np.ones((1, n))),
          fits.Column("WAVELENGTH", f"{n}D", array=[10 ** (3.6 + 1e-4 * np.arange(n))]),
          fits.Column("ANDMASK", f"{n}J", array=np.zeros((1, n))),
          fits.Column("FLAG", "L", array=[True])]
  table = fits.BinTableHDU.from_columns(cols, name="COADD")
  table.header["TSCAL2"], table.header["TZERO2"] = 2.0, 0.5  # scaled IVAR: astropy's job
  path = _write(tmp_path / "spec-table.fits", [fits.PrimaryHDU(header=_image_header()), table])
  s = lamost.read(path)
  np.testing.assert_array_equal(s.ivar, np.full(n, 2.5, np.float32))
  assert not s.mask.any()
  assert fitsraw.hdus(fitsraw.load(path), path)[1].column("FLUX").shape == (1, n)


def test_card_values():
  assert fitsraw.card_value("'O''Brien  '  / name") == "O'Brien"
  assert fitsraw.card_value("                   T / flag") is True
  assert fitsraw.card_value("                 -32 /") == -32
  assert fitsraw.card_value("             1.5D-03") == pytest.approx(1.5e-3)
  assert fitsraw.card_value("                     / empty") is None


# --- the common grid against real LAMOST headers -------------------------------------------

def test_grid_matches_lamost_coefficients(lrs_rows):
  for row in lrs_rows:
    with fits.open(row["path"]) as hdul:
      h = hdul[0].header
      c0, c1 = h["COEFF0"], h["COEFF1"]
    assert c1 == spectra.DLOGLAM, row["file"]
    offset = (c0 - spectra.LOGLAM0) / spectra.DLOGLAM
    assert abs(offset - round(offset)) < 1e-6, row["file"]  # starts on a grid pixel
    if offset == 0:
      n = int(row["npix"])
      np.testing.assert_allclose(spectra.loglam_grid(n), c0 + c1 * np.arange(n), atol=1e-12)


def test_resample_flat_spectrum_stays_flat(lrs_rows):
  # The shortest and the latest-starting real files, so edges are exercised.
  rows = sorted(lrs_rows, key=lambda r: int(r["npix"]))[:3]
  for row in rows:
    s = lamost.read(row["path"])
    flux, ivar, mask = spectra.resample(np.log10(s.wavelength), np.full_like(s.flux, 3.0),
                                        np.ones_like(s.ivar))
    inside = (spectra.wavelength_grid() >= s.wavelength[0]) & (
        spectra.wavelength_grid() <= s.wavelength[-1])
    assert not mask[inside][1:-1].any()
    np.testing.assert_allclose(flux[~mask], 3.0, rtol=1e-6)
    assert mask[~inside].all() and not flux[~inside].any()


def test_resample_real_pilot_spectrum_is_identity_on_its_own_grid(lrs_rows):
  row = next(r for r in lrs_rows if r["file"].startswith("lamost_dr1"))
  s = lamost.read(row["path"])
  flux, ivar, mask = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
  n = s.flux.shape[0]
  good = ~mask[:n]
  assert good.sum() > 0.8 * n
  np.testing.assert_allclose(flux[:n][good], s.flux[good], rtol=1e-5, atol=1e-6)
  assert mask[n:].all()


# --- the bundled sample ---------------------------------------------------------------------

def test_bundled_sample_reads_and_covers_every_layout():
  import hashlib

  from astrotl import data

  rows = data.sample_index()
  assert 50 <= len(rows) <= 70
  assert sum(r["path"].stat().st_size for r in rows) < 3_000_000
  letters, layouts = set(), set()
  for row in rows:
    assert hashlib.sha256(row["path"].read_bytes()).hexdigest() == row["sha256"], row["file"]
    s = lamost.read(row["path"])
    assert s.meta["subclass"] == row["subclass"] and s.flux.shape[0] == int(row["npix"])
    letters.add(spectra.spectral_letter(row["subclass"]))
    layouts.add(row["layout"])
  assert {"A", "F", "G", "K", "M"} <= letters
  assert layouts == {"image-subcontinuum", "image-wavelength", "coadd-table"}


def test_damaged_headers_and_data_never_escape_as_other_errors(lrs_rows, tmp_path):
  rng = np.random.default_rng(1)
  sources = [_real_gz(lrs_rows, folder) for folder in ("lamost_dr1", "lamost_dr8v1", "lamost_dr9")]
  outcomes = {"read": 0, "rejected": 0}
  for i in range(150):
    raw = bytearray(gzip.decompress(sources[i % 3].read_bytes()))
    # Overwrite a few characters of header values (or a few data bytes) with junk.
    region = 11520 if i % 2 else len(raw)
    for pos in rng.integers(0, region, size=rng.integers(1, 6)):
      raw[pos] = int(rng.choice(list(b"0123456789 -.=/'ABXZ\x00\xff")))
    path = tmp_path / f"spec-fuzz-{i}.fits"
    path.write_bytes(bytes(raw))
    try:
      s = lamost.read(path)
      assert s.flux.shape == s.ivar.shape == s.mask.shape == s.wavelength.shape
      outcomes["read"] += 1
    except SpectrumError as e:
      assert str(path) in str(e)
      outcomes["rejected"] += 1
  assert outcomes["read"] > 10 and outcomes["rejected"] > 10, outcomes
