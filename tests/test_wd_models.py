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
