"""More like these: spectra compared by their embeddings, and a model's anomaly reference."""


def add_reference(model, spectra=None, embeddings=None, **kw):
  """A copy of `model` carrying an anomaly reference (see `astrotl.similar.reference`)."""
  from astrotl.similar import reference
  return reference.add_reference(model, spectra, embeddings, **kw)
