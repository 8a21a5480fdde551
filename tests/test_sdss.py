"""SDSS/BOSS reader on the real white-dwarf spec file and corrupted copies of it."""

import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits

from astrotl.io import SpectrumError, sdss
from astrotl.preprocess import spectra

WD_FILE = "spectra/sdss_boss/spec-4455-55539-0692.fits.gz"


@pytest.fixture(scope="module")
def wd_path(shared_data):
  return shared_data / WD_FILE


def test_reads_real_white_dwarf(wd_path):
  s = sdss.read(wd_path)
  n = 4619
  assert s.flux.shape == s.ivar.shape == s.mask.shape == s.wavelength.shape == (n,)
  assert s.flux.dtype == np.float32 and s.mask.dtype == bool
  assert s.wavelength[0] == pytest.approx(3590.87, abs=0.05)
  assert np.all(np.diff(s.wavelength) > 0)
  # 150 pixels carry AND_MASK bit 23 (BRIGHTSKY); none has ivar = 0.
  assert s.mask.sum() == 150
  assert np.all(s.ivar[s.mask] == 0) and np.all(s.ivar[~s.mask] > 0)
  m = s.meta
  assert m["obsid"] == "4455-55539-0692"
  assert (m["plate"], m["mjd"], m["fiberid"]) == (4455, 55539, 692)
  assert m["ra"] == pytest.approx(126.5024) and m["dec"] == pytest.approx(28.396144)
  assert (m["class"], m["subclass"]) == ("STAR", "WDhotter")
  assert m["snr_g"] == pytest.approx(48.62, abs=0.01)
  assert m["file"] == "spec-4455-55539-0692.fits.gz" and m["survey"] == "SDSS"


def test_white_dwarf_has_balmer_absorption(wd_path):
  s = sdss.read(wd_path)
  flux, _, mask = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
  wave = spectra.wavelength_grid()
  # Vacuum H-beta at 4862.7 A: the core is well below the flux 100 A either side.
  core = flux[np.abs(wave - 4862.7) < 5].mean()
  side = np.concatenate([flux[np.abs(wave - 4700) < 10], flux[np.abs(wave - 5030) < 10]]).mean()
  assert core < 0.7 * side
  assert not mask[(wave > 4000) & (wave < 9000)].all()


def test_header_only_without_spall(wd_path, tmp_path):
  out = tmp_path / "spec-nospall.fits"
  with fits.open(wd_path) as h:
    fits.HDUList([h[0].copy(), h[1].copy()]).writeto(out)
  m = sdss.read(out).meta
  assert m["obsid"] == "4455-55539-0692" and m["ra"] == pytest.approx(126.5024)
  assert m["class"] is None and m["snr_g"] is None


def _expect_error(path, words):
  with pytest.raises(SpectrumError) as e:
    sdss.read(path)
  assert str(path) in str(e.value)
  assert any(w in e.value.reason for w in words), e.value.reason


def test_bad_files(wd_path, tmp_path):
  _expect_error(tmp_path / "missing.fits", ["no such file"])
  empty = tmp_path / "empty.fits"
  empty.write_bytes(b"")
  _expect_error(empty, ["empty"])
  text = tmp_path / "text.fits"
  text.write_text("this is not a FITS file\n" * 200)
  _expect_error(text, ["not a FITS file"])
  raw = wd_path.read_bytes()
  # Cut after the COADD: astropy alone would return the first HDUs without complaint.
  for frac in (0.1, 0.33, 0.95):
    trunc = tmp_path / f"trunc{frac}.fits.gz"
    trunc.write_bytes(raw[: int(len(raw) * frac)])
    _expect_error(trunc, ["truncated or corrupt gzip"])
  plain = gzip.decompress(raw)
  cut = tmp_path / "cut.fits"
  cut.write_bytes(plain[: len(plain) // 2 + 100])
  _expect_error(cut, ["truncated FITS"])
  flipped = bytearray(raw)
  flipped[len(raw) // 2] ^= 0xFF
  bad_crc = tmp_path / "flipped.fits.gz"
  bad_crc.write_bytes(bytes(flipped))
  _expect_error(bad_crc, ["truncated or corrupt gzip"])


def test_missing_coadd_and_all_bad(wd_path, tmp_path):
  prim = tmp_path / "primary-only.fits"
  fits.PrimaryHDU().writeto(prim)
  _expect_error(prim, ["no COADD"])
  with fits.open(wd_path) as h:
    table = h[1].data.copy()
    cols = h[1].columns
    noflux = fits.BinTableHDU.from_columns([c for c in cols if c.name != "flux"], name="COADD")
    fits.HDUList([h[0].copy(), noflux]).writeto(tmp_path / "noflux.fits")
    table["ivar"][:] = 0
    fits.HDUList([h[0].copy(), fits.BinTableHDU(table, name="COADD")]).writeto(
        tmp_path / "allbad.fits")
  _expect_error(tmp_path / "noflux.fits", ["no 'flux' column"])
  _expect_error(tmp_path / "allbad.fits", ["all pixels are bad"])


def test_plain_fits_copy_reads_the_same(wd_path, tmp_path):
  plain = tmp_path / "spec-4455-55539-0692.fits"
  with gzip.open(wd_path, "rb") as src, open(plain, "wb") as dst:
    shutil.copyfileobj(src, dst)
  a, b = sdss.read(wd_path), sdss.read(plain)
  np.testing.assert_array_equal(a.flux, b.flux)
  assert a.meta["obsid"] == b.meta["obsid"]


def test_direct_path_equals_astropy_path(shared_data):
  files = [shared_data / WD_FILE, *sorted(
      (shared_data / "spectra" / "real_wd_validation" / "sdss_qso_galaxies").glob("*.fits"))]
  assert len(files) >= 7
  for path in files:
    a, b = sdss.read(path), sdss.read(path, fast=False)
    for key in ("wavelength", "flux", "ivar", "mask"):
      x, y = getattr(a, key), getattr(b, key)
      assert x.dtype == y.dtype, (path.name, key)
      np.testing.assert_array_equal(x, y, err_msg=f"{path.name} {key}")
    assert a.meta == b.meta, path.name
