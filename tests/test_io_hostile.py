"""Hostile and damaged spectrum files: every one must end in a quick SpectrumError.

Regression tests for the QA issue on the readers: non-regular files, header numbers
that drove loops and allocations, gzip bombs, BLANK, duplicate keywords, corrupt
spectra accepted as good, the 64-HDU limit, the choice of reader by name, and a fixed
fuzz run of mutated real files (benchmarks/fuzz_readers.py, which also supplies the
card-editing helpers used here).
"""

import gzip
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from astropy.io import fits

from astrotl import io as aio
from astrotl.io import SpectrumError, batch, fitsraw, lamost, sdss

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_readers",
                                               REPO / "benchmarks" / "fuzz_readers.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

DR1 = "lamost_dr1_pilot_B6212/spec-55862-B6212_sp06-005.fits.gz"
DR8 = "lamost_dr8v1_image_format"
DR9 = "lamost_dr9_bintable_format/spec-55859-F5902_sp01-001.fits.gz"
SDSS = "sdss_boss/spec-4455-55539-0692.fits.gz"


@pytest.fixture(scope="module")
def spectra(shared_data):
  return shared_data / "spectra"


def _fits(path) -> bytearray:
  return bytearray(gzip.decompress(pathlib.Path(path).read_bytes()))


def _dr8(spectra):
  return sorted((spectra / DR8).glob("*.fits.gz"))[0]


def _readers(path):
  """Every public way a spectrum file is read."""
  return {
      "io.read": lambda: aio.read(path),
      "lamost.read": lambda: lamost.read(path),
      "lamost.read(fast=False)": lambda: lamost.read(path, fast=False),
      "lamost.read_raw": lambda: lamost.read_raw(path),
      "batch.decode": lambda: batch.decode(path),
  }


def _rejected(path, match, readers=None, seconds=2.0):
  """Every reader raises SpectrumError naming the file, with `match` in the reason."""
  for name, read in (readers or _readers(path)).items():
    t0 = time.perf_counter()
    with pytest.raises(SpectrumError, match=match) as err:
      read()
    assert err.value.path == str(path), name
    assert time.perf_counter() - t0 < seconds, name


def _write(tmp_path, name, data):
  path = tmp_path / name
  path.write_bytes(bytes(data))
  return path


# --- not regular files -------------------------------------------------------------------

def _in_thread(fn, seconds=5.0):
  """fn() in a daemon thread: a read that blocks (a FIFO) fails the test, not the run."""
  box = {}

  def target():
    try:
      box["value"] = fn()
    except BaseException as e:  # noqa: BLE001
      box["error"] = e

  t = threading.Thread(target=target, daemon=True)
  t.start()
  t.join(seconds)
  assert not t.is_alive(), "the read blocked"
  if "error" in box:
    raise box["error"]
  return box.get("value")


def test_non_regular_inputs_are_refused_without_blocking(tmp_path):
  (tmp_path / "x.fits.gz").mkdir()
  os.symlink(tmp_path / "absent.fits", tmp_path / "dangling.fits")
  os.symlink(tmp_path / "loop_b.fits", tmp_path / "loop_a.fits")
  os.symlink(tmp_path / "loop_a.fits", tmp_path / "loop_b.fits")
  os.mkfifo(tmp_path / "fifo.fits")
  os.symlink("/dev/zero", tmp_path / "zero.fits.gz")
  cases = {tmp_path / "x.fits.gz": "directory", tmp_path / "dangling.fits": "dangling",
           tmp_path / "loop_a.fits": "loop", tmp_path / "fifo.fits": "FIFO",
           tmp_path / "zero.fits.gz": "character device",
           pathlib.Path("/dev/zero"): "character device",
           pathlib.Path("/dev/urandom"): "character device"}
  for path, reason in cases.items():
    readers = dict(_readers(path), **{"sdss.read": lambda p=path: sdss.read(p)})
    for name, read in readers.items():
      with pytest.raises(SpectrumError, match=reason):
        _in_thread(read)
    good, _, _, errors = _in_thread(lambda p=path: batch.decode_many([p]))
    assert good == [] and reason in errors[0][2]


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
  path = _write(tmp_path, "spec-big.fits", bytes(4 * fitsraw.BLOCK))
  monkeypatch.setattr(fitsraw, "MAX_FILE_BYTES", 2 * fitsraw.BLOCK)
  _rejected(path, "over the .* limit for a spectrum file")


# --- header numbers ----------------------------------------------------------------------

HEADER_EDITS = [
    ("NAXIS", "1000000000000000000", r"NAXIS = 1000000000000000000 is outside 0\.\.999"),
    ("NAXIS1", "1000000000000000000", "NAXIS1.* more than"),
    ("NAXIS1", "-5", "NAXIS1 = -5 is negative"),
    ("NAXIS1", "NAN", "NAXIS1 .* not an integer"),
    ("NAXIS1", "'3904'", "NAXIS1 .* not an integer"),
    ("NAXIS1", "3_904", "NAXIS1 .* not an integer"),
    ("NAXIS2", "3.0", "NAXIS2 .* not an integer"),
    ("BITPIX", "24", "BITPIX = 24 is not one of"),
    ("BITPIX", "T", "BITPIX = True is not an integer"),
    ("GCOUNT", "2", "GCOUNT = 2"),
    ("PCOUNT", "-1", "PCOUNT = -1"),
    ("BSCALE", "NAN", "BSCALE = 'NAN' is not a valid FITS value"),
    ("BSCALE", "'2.0'", "BSCALE = '2.0' is not a finite number"),
    ("BSCALE", "0", "BSCALE = 0"),
    ("SIMPLE", "F", "SIMPLE = F.*non-standard"),
    ("GROUPS", "T", "random-groups"),
    # astropy refuses a file whose EXTEND or BLANK it cannot parse (even on float data)
    ("EXTEND", "NAN", "EXTEND = 'NAN' is not a valid FITS value"),
    ("BLANK", "'unterminated", "BLANK = .* is not a valid FITS value"),
    # the rows named so that a constant row is the wavelength: a zero step, not a crash
    ("EXTEN0", "'Flux Inverse Wavelength Andmask Ormask'", "wavelength"),
]


@pytest.mark.parametrize("key,value,reason", HEADER_EDITS)
def test_header_values_are_checked_before_use(spectra, tmp_path, key, value, reason):
  buf = _fits(spectra / DR1)
  rng = np.random.default_rng(0)
  assert fuzz.set_card(buf, rng, key, value, 0)
  _rejected(_write(tmp_path, "spec-edit.fits", buf), reason)
  _rejected(_write(tmp_path, "spec-edit.fits.gz", gzip.compress(bytes(buf))), reason)


@pytest.mark.parametrize("key", ["NAXIS1", "BITPIX", "NAXIS", "BSCALE", "EXTNAME", "COEFF1",
                                 "EXTEN0", "CD1_1"])
def test_duplicate_structural_keywords_are_refused(spectra, tmp_path, key):
  buf = _fits(spectra / DR1)
  rng = np.random.default_rng(0)
  cards = fuzz.card_positions(buf, 0)
  value = buf[cards[key][0] + 10:cards[key][0] + 30].decode() if key in cards else "1"
  if key not in cards:  # a keyword the file lacks: add it twice
    fuzz.add_card(buf, rng, key, value)
  fuzz.add_card(buf, rng, key, value)  # even an identical copy: refuse, don't guess
  _rejected(_write(tmp_path, "spec-dup.fits", buf), f"keyword {key} appears more than once")


def test_duplicate_table_keywords_and_columns_are_refused(spectra, tmp_path):
  buf = _fits(spectra / DR9)
  rng = np.random.default_rng(0)
  fuzz.add_card(buf, rng, "TFORM2", "'3908E'", hdu=1)
  _rejected(_write(tmp_path, "spec-dup.fits", buf), "HDU 1: keyword TFORM2 appears more")
  buf = _fits(spectra / DR9)
  fuzz.set_card(buf, rng, "TTYPE2", "'FLUX'", hdu=1)
  _rejected(_write(tmp_path, "spec-dupcol.fits", buf), "two columns are named FLUX",
            readers={"io.read": lambda: aio.read(tmp_path / "spec-dupcol.fits")})


def test_header_bytes_must_be_printable_ascii(spectra, tmp_path):
  # A flipped byte after EXTEND's value: U+00A0 reads as a space to Python's strip, while
  # astropy refuses the file; a NUL in a comment.  Both paths refuse, naming the card.
  for bad, card in ((b"\xa0", 6), (b"\x00", 8)):
    buf = _fits(spectra / DR1)
    buf[(card - 1) * 80 + 30:(card - 1) * 80 + 31] = bad
    _rejected(_write(tmp_path, "spec-byte.fits", buf), f"not printable ASCII .* in card {card}")


def test_zimage_table_is_not_read_as_a_plain_table(spectra, tmp_path):
  buf = _fits(spectra / DR9)  # astropy reads a BINTABLE with ZIMAGE = T as a compressed image
  rng = np.random.default_rng(0)
  fuzz.set_card(buf, rng, "ZIMAGE", "T", hdu=1)
  _rejected(_write(tmp_path, "spec-zimage.fits", buf), "ZBITPIX")
  fuzz.set_card(buf, rng, "TELESCOP", "''", hdu=0)  # the reader is then chosen by the tables
  _rejected(_write(tmp_path, "spec-zimage2.fits", buf), "ZBITPIX")
  buf = _fits(spectra / SDSS)  # an SDSS file with a compressed-image SPALL
  fuzz.set_card(buf, rng, "ZIMAGE", "T", hdu=2)
  path = _write(tmp_path, "spec-zimage3.fits", buf)
  for read in (lambda: aio.read(path), lambda: sdss.read(path),
               lambda: sdss.read(path, fast=False)):
    with pytest.raises(SpectrumError):
      read()


def test_missing_end_card_and_endless_headers(spectra, tmp_path):
  buf = _fits(spectra / DR1)
  buf[:] = buf.replace(fuzz._END, b" " * 80, 1)
  _rejected(_write(tmp_path, "spec-noend.fits", buf), "no END card")
  # A header that never ends, followed by a mountain of (compressible) blanks.
  head = bytes(_fits(spectra / DR1)[:fitsraw.BLOCK]) + b" " * (8 << 20)
  _rejected(_write(tmp_path, "spec-endless.fits.gz", gzip.compress(head, 1)),
            "no END card in 1000 blocks")


def test_damage_after_the_spectrum_is_not_taken_for_the_end_of_the_file(spectra, tmp_path):
  buf = _fits(spectra / SDSS)  # a per-exposure HDU after COADD and SPALL loses half its rows
  hs = fuzz.headers(buf)
  n = int(buf[fuzz.card_positions(buf, 5)["NAXIS2"][0] + 10:][:20])
  fuzz.set_card(buf, np.random.default_rng(0), "NAXIS2", str(n // 2), 5)
  path = _write(tmp_path, "spec-later.fits.gz", gzip.compress(bytes(buf)))
  for read in (lambda: aio.read(path), lambda: sdss.read(path), lambda: sdss.read(path, False)):
    with pytest.raises(SpectrumError, match="neither an extension nor padding"):
      read()
  real = bytes(_fits(spectra / DR1))
  _rejected(_write(tmp_path, "spec-junk.fits", real + b"SIMPLE  = junk" + bytes(100)),
            "neither an extension nor padding")
  padded = _write(tmp_path, "spec-padded.fits.gz", gzip.compress(real + bytes(5000)))
  np.testing.assert_array_equal(aio.read(padded).flux, lamost.read(spectra / DR1).flux)
  assert len(hs) > 5


def test_too_many_hdus_is_an_error_not_a_silent_stop(spectra, tmp_path):
  with fits.open(spectra / DR9) as hdul:
    primary, coadd = hdul[0].copy(), hdul[1].copy()
  # The COADD table after 70 empty extensions: the old reader stopped at HDU 64.
  path = tmp_path / "spec-many.fits"
  fits.HDUList([primary] + [fits.ImageHDU() for _ in range(70)] + [coadd]).writeto(
      path, output_verify="silentfix")  # the real primary keeps NAXIS1/2 with NAXIS = 0
  a, b = lamost.read(path), lamost.read(path, fast=False)
  want = lamost.read(spectra / DR9)
  for key in ("wavelength", "flux", "ivar", "mask"):
    np.testing.assert_array_equal(getattr(a, key), getattr(want, key))
    np.testing.assert_array_equal(getattr(b, key), getattr(want, key))
  one = fits.ImageHDU().header.tostring().encode()
  buf = bytearray(path.read_bytes()) + one * (fitsraw.MAX_HDUS + 1)
  _rejected(_write(tmp_path, "spec-toomany.fits", buf), "more than 1000 HDUs")


# --- memory ------------------------------------------------------------------------------

def test_gzip_bombs_are_refused_cheaply(spectra, tmp_path):
  real = bytes(_fits(spectra / DR1))
  head = real[:fuzz.headers(real)[0][2]]
  member = fuzz.zeros_member(1 << 20)
  declared = b"".join(fuzz.make_card(k, v) for k, v in (
      ("SIMPLE", "T"), ("BITPIX", "-32"), ("NAXIS", "2"), ("NAXIS1", "4096"),
      ("NAXIS2", "4000"), ("TELESCOP", "'LAMOST'"))) + fuzz._END
  declared += b" " * (-len(declared) % fitsraw.BLOCK)
  bombs = {
      # a real file with 300 MB of zeros after it, in extra gzip members
      "spec-tail.fits.gz": (gzip.compress(real) + member * 300, "beyond the FITS content"),
      # a real header, then 256 MB of zeros in the same member (the QA's bomb, smaller)
      "spec-single.fits.gz": (fuzz.Bombs(256 << 20).single(head), "beyond the FITS content"),
      # a header that declares 62.5 MB of data, which the zeros then provide
      "spec-declared.fits.gz": (gzip.compress(declared) + member * 63, "larger than any LAMOST"),
  }
  for name, (data, reason) in bombs.items():
    _rejected(_write(tmp_path, name, data), reason, seconds=5.0)
  # Peak memory of a fresh process reading all three: far below 1 GB.
  code = ("import sys\nfrom astrotl import io\n"
          "for p in sys.argv[2:]:\n"
          "  try: io.read(p)\n  except io.SpectrumError: pass\n"
          "sys.path.insert(0, sys.argv[1])\nimport fuzz_readers\n"
          "print(fuzz_readers.peak_rss())")
  out = subprocess.run([sys.executable, "-c", code, str(REPO / "benchmarks"),
                        *(str(tmp_path / n) for n in bombs)],
                       env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert int(out.stdout.split()[-1]) < 2**30 * 0.5, out.stdout


# --- numbers -----------------------------------------------------------------------------

def _scaled_image(tmp_path, name, bitpix_dtype, blank, bscale, bzero):
  n = 200
  data = np.zeros((3, n), bitpix_dtype)  # flux, ivar, subcontinuum: no mask row to scale
  data[0] = np.arange(n) % 50 + 100
  data[1] = 9
  data[0, ::7] = blank
  h = fits.Header()
  h["TELESCOP"], h["EXTEN0"] = "LAMOST", "Flux Inverse Subcontinuum"
  h["COEFF0"], h["COEFF1"] = 3.5682, 1e-4
  hdu = fits.PrimaryHDU(data, h)
  hdu.header["BLANK"], hdu.header["BSCALE"], hdu.header["BZERO"] = blank, bscale, bzero
  raw = hdu.header.tostring().encode() + data.astype(data.dtype.newbyteorder(">")).tobytes()
  return _write(tmp_path, name, raw + bytes(-len(raw) % fitsraw.BLOCK))


@pytest.mark.parametrize("dtype,blank,bscale,bzero", [
    (np.int16, -32768, 0.01, 5.0), (np.int32, 7, 1, 0), (np.uint8, 255, 2.0, 0.0),
    (np.int16, 30000, 1, 0)])
def test_blank_pixels_are_nan_as_in_astropy(tmp_path, dtype, blank, bscale, bzero):
  path = _scaled_image(tmp_path, "spec-blank.fits", dtype, blank, bscale, bzero)
  image = fitsraw.read(path)[0].image()
  with fits.open(path) as hdul:
    want = hdul[0].data
  assert image.dtype == want.dtype and image.dtype.kind == "f"
  np.testing.assert_array_equal(image, want)
  assert np.isnan(image[0, ::7]).all()
  s, t = lamost.read(path), lamost.read(path, fast=False)
  np.testing.assert_array_equal(s.flux, t.flux)
  assert s.mask[::7].all() and np.isnan(s.flux[::7]).all()
  assert s.mask.sum() == len(s.mask[::7])


def test_blank_zero_is_refused(tmp_path):
  # astropy ignores BLANK = 0 (it tests the value's truth), other readers do not.
  path = _scaled_image(tmp_path, "spec-blank0.fits", np.int16, 0, 0.5, 1.0)
  _rejected(path, "BLANK = 0")


def test_corrupt_spectra_that_used_to_pass(spectra, tmp_path):
  rng = np.random.default_rng(0)
  buf = _fits(spectra / DR1)  # NAXIS1 3904 -> 4032: the rows slide into the padding
  fuzz.set_card(buf, rng, "NAXIS1", "4032", 0)
  _rejected(_write(tmp_path, "spec-naxis1.fits", buf), "pixels: 4032|outside the")
  buf = _fits(spectra / DR1)
  fuzz.set_card(buf, rng, "COEFF1", "1E-9", 0)
  _rejected(_write(tmp_path, "spec-coeff1.fits", buf), "wavelength step: 1e-09")
  buf = _fits(_dr8(spectra))
  fuzz.add_card(buf, rng, "BSCALE", "0.5")
  _rejected(_write(tmp_path, "spec-bscale.fits", buf), "wavelength: 1850-45.. A, outside")


def test_decode_refuses_a_wavelength_row_off_the_log_linear_grid(spectra, tmp_path):
  with fits.open(_dr8(spectra)) as hdul:
    data, header = hdul[0].data.copy(), hdul[0].header.copy()
  wave = data[2].astype(np.float64)
  # Still increasing and inside the survey's range, but 0.3 pixel off in the middle.
  wave[1500:2000] *= 10 ** (0.3e-4)
  data[2] = wave
  path = tmp_path / "spec-offgrid.fits"
  fits.PrimaryHDU(data, header).writeto(path)
  _rejected(path, "not log-linear")
  good, _, _, errors = batch.decode_many([path])
  assert good == [] and "log-linear" in errors[0][2]


def test_flux_values_beyond_any_survey_are_refused(spectra, tmp_path):
  with fits.open(_dr8(spectra)) as hdul:
    data, header = hdul[0].data.copy(), hdul[0].header.copy()
  good = np.flatnonzero((data[1] > 0) & (data[3] == 0))
  data[0, good[len(good) // 2]] = 3e30
  path = tmp_path / "spec-huge.fits"
  fits.PrimaryHDU(data, header).writeto(path)
  _rejected(path, "flux: unmasked values")


def test_reader_is_chosen_by_content_not_name(spectra, tmp_path):
  lamost_as_sdss = tmp_path / "spec-4455-55539-0692.fits.gz"
  shutil.copy(spectra / DR1, lamost_as_sdss)
  s = aio.read(lamost_as_sdss)
  assert s.meta["lmjd"] == 55862 and "survey" not in s.meta
  sdss_as_lamost = tmp_path / "spec-55862-B6212_sp06-005.fits.gz"
  shutil.copy(spectra / SDSS, sdss_as_lamost)
  s = aio.read(sdss_as_lamost)
  assert s.meta["survey"] == "SDSS" and s.meta["obsid"] == "4455-55539-0692"
  good, arrays, metas, errors = batch.decode_many([lamost_as_sdss, sdss_as_lamost])
  assert good == [0, 1] and not errors


def test_real_files_of_every_layout_still_pass_the_shared_check(spectra):
  for path in [spectra / DR1, _dr8(spectra), spectra / DR9, spectra / SDSS,
               *sorted((spectra / "real_wd_validation" / "sdss_qso_galaxies").glob("*.fits"))]:
    s = aio.read(path)
    survey = "SDSS" if s.meta.get("survey") == "SDSS" else "LAMOST-LRS"
    loglam0, dloglam = aio.check_spectrum(path, survey, s.wavelength, s.flux, s.ivar, s.mask)
    assert dloglam == pytest.approx(1e-4, rel=1e-4), path


# --- fuzz ---------------------------------------------------------------------------------

def test_fuzzed_real_files(shared_data, tmp_path):
  """A fixed-seed slice of benchmarks/fuzz_readers.py (the 10,000-case run is by hand)."""
  summary = fuzz.run(250, seed=20261128, data=shared_data, big_bomb=64 << 20, workers=0,
                     out_dir=tmp_path, log=lambda *a: None)
  assert summary["exceptions_other_than_SpectrumError"] == 0, summary["failures"]
  assert summary["arrays_differing_fast_vs_astropy"] == 0, summary["failures"]
  assert summary["arrays_differing_vs_astropy_on_file"] == 0, summary["failures"]
  # CPU time: wall time on a shared CI machine measures the neighbours too.
  assert summary["max_decode_cpu_seconds"] < fuzz.MAX_SECONDS, summary["slowest_case"]
  assert summary["decode_outcomes"].get("ok", 0) >= 15, summary["decode_outcomes"]
  assert summary["fast_vs_astropy_decoding"].get("same", 0) >= 15
