"""Koester/Warwick model-file reader: the real grid and broken copies."""

import gzip

import numpy as np
import pytest

from astrotl.io import SpectrumError, wd_models

GRID = "spectra/wd_models/warwick_da"


def test_reads_real_file(shared_data):
  wave, teff, logg, flux = wd_models.read_model_file(shared_data / GRID / "800_3D.txt.gz")
  assert wave.shape == (2691,) and flux.shape == (60, 2691) and logg == 8.0
  assert teff[0] == 1500 and teff[-1] == 140000
  # First flux values of the 20000 K block as printed in the file.
  np.testing.assert_allclose(flux[teff == 20000][0, :3], [1.0133e-04, 9.9887e-05, 9.5858e-05])


def test_bad_files(shared_data, tmp_path):
  text = gzip.decompress((shared_data / GRID / "800_3D.txt.gz").read_bytes()).decode()
  cut = tmp_path / "800_3D"
  cut.write_text(text[: len(text) // 2])
  with pytest.raises(SpectrumError, match="800_3D.*expected 2691"):
    wd_models.read_model_file(cut)
  junk = tmp_path / "750_3D"
  junk.write_text("hello\n")
  with pytest.raises(SpectrumError, match="750_3D.*no 'Effective temperature"):
    wd_models.read_model_file(junk)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(SpectrumError, match="no model files"):
    wd_models.read_grid(empty)


def _koester_table(path, teff, logg, wave, flux):
  head = [f"TEFF    = {teff:20d}", f"LOG_G   = {logg:20.3f}", "END"]
  rows = [f"{w:11.3f}  {f:.5E}" for w, f in zip(wave, flux)]
  with gzip.open(path, "wt") as f:
    f.write("\n".join(head + rows) + "\n")


def test_koester_tables_make_one_grid(tmp_path):
  wave = np.linspace(3300.0, 10000.0, 700)
  for teff in (10000, 20000):
    for g in (700, 800):
      flux = (teff / 1e4) * (wave / 5000.0) ** -2 * (1 + g / 1e4)
      _koester_table(tmp_path / f"db{teff:05d}_{g}.dk.gz", teff, g / 100, wave, flux)
  _koester_table(tmp_path / "da10000_800.dk.gz", 10000, 8.0, wave, np.ones_like(wave))
  grid = wd_models.read_koester_grid(tmp_path, "db")
  assert grid["vacuum"] and grid["flambda"]
  assert grid["flux"].shape == (2, 2, grid["wavelength"].size)
  np.testing.assert_allclose(grid["teff"], [10000, 20000])
  np.testing.assert_allclose(grid["logg"], [7.0, 8.0])
  i = np.argmin(np.abs(grid["wavelength"] - 5000.0))
  assert grid["flux"][1, 1, i] == pytest.approx(2.0 * 1.08, rel=1e-3)
  (tmp_path / "db20000_800.dk.gz").unlink()  # a hole in the grid
  with pytest.raises(SpectrumError, match="missing"):
    wd_models.read_koester_grid(tmp_path, "db")
  (tmp_path / "db20000_700.dk.gz").write_bytes(b"not gzip")
  with pytest.raises(SpectrumError, match="db20000_700"):
    wd_models.read_koester_grid(tmp_path, "db")


def test_koester_db_models_show_helium_lines(shared_data):
  """The Koester DB grid through the simulator: He I 4471 is deep at 20,000 K, gone in a
  cool (DC-like) model, and a Koester DA matches the bundled Warwick DA at 20,000 K."""
  from astrotl.preprocess import simulate
  base = shared_data / "spectra" / "wd_models"
  db = simulate.Simulator(wd_models.read_koester_grid(base / "koester_db", "db"))
  wave = db.wavelength
  line, side = np.argmin(np.abs(wave - 4472.7)), np.argmin(np.abs(wave - 4400.0))
  hot, cool = db.model([20000.0, 8000.0], 8.0)
  assert hot[line] / hot[side] < 0.8 and cool[line] / cool[side] > 0.97
  da = simulate.Simulator(wd_models.read_koester_grid(base / "koester_da", "da"))
  assert np.corrcoef(da.model(20000.0, 8.0), simulate.Simulator().model(20000.0, 8.0))[0, 1] > 0.99
