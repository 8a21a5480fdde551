"""astrotl: deep transfer learning on astronomical survey data (JAX/Flax).

The front door (each name is imported on first use, so `import astrotl` is instant):

  read_spectrum(path)       a LAMOST or SDSS spectrum file -> `astrotl.io.Spectrum`
  load_model(name_or_path)  a model bundle or bundled model ('wd_two_stage', 'wd_stage1',
                            'upsilont') -> Model with .classes, .predict, .embed, .explain
  finetune(catalog, source="wd_stage1", out="model.npz", ...)
                            fine-tune a model on a labelled catalog -> Model (a bundle)
  scan                      run a model over a survey (`astrotl.scan.scan`,
                            `python -m astrotl.scan`)
  features                  the 16 UPSILoN variability features of light curves
  surgery                   transfer learning as functions on parameter pytrees
  models                    the Flax models and their registry (`models.get`)
  data                      the bundled samples (`data.sample_dir()`)

Data flows one way: survey files -> readers (`astrotl.io`) -> preprocessing
(`astrotl.preprocess`) -> datasets -> sharded batches -> Flax models
(`astrotl.models`) -> metrics, checkpoints, catalogs.
"""

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_LAZY = {
    "read_spectrum": ("astrotl.io", "read"),
    "load_model": ("astrotl.bundle", "load_model"),
    "finetune": ("astrotl.finetune", None),  # a module that is called as the function
    "scan": ("astrotl.scan", None),
    "features": ("astrotl.preprocess.features", None),
    "surgery": ("astrotl.surgery", None),
    "models": ("astrotl.models", None),
    "data": ("astrotl.data", None),
}
__all__ = sorted(_LAZY)


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module 'astrotl' has no attribute {name!r}")
  import importlib
  module, attr = _LAZY[name]
  value = importlib.import_module(module)
  if attr is not None:
    value = getattr(value, attr)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(_LAZY) | {"__version__"} | {k for k in globals() if not k.startswith("_")})
