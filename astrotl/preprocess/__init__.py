"""Pure numpy preprocessing: spectra, variability features, images."""
