"""Re-pack a model bundle, e.g. to store its big dense kernels as int8.

  python -m astrotl.tools.pack_bundle IN.npz OUT.npz --int8='stage[12]/params/dense/kernel'

Prints how far the packed model's outputs move on spectra you give with --spectra
(default: the bundled sample), so the size saving is never taken on trust.
"""

import pathlib

from absl import app, flags
import numpy as np


def _define_flags():
  flags.DEFINE_multi_string("int8", [], "Regex over bundle paths stored as int8.")
  flags.DEFINE_string("spectra", None, "Spectra to compare on (default: the bundled sample).")


def compare(a, b, paths):
  """How far two models' outputs move on `paths`: the largest |dP| over every probability
  column, and the fraction of predicted classes that agree."""
  ta, tb = a.predict(paths), b.predict(paths)
  probs = [c for c in a.columns() if c.startswith("p")]
  label = next(c for c in ("class1", "pred_class") if c in ta.colnames)
  return {"n": len(ta), "max_abs_dp": float(max(np.abs(ta[c] - tb[c]).max() for c in probs)),
          "class_agreement": float(np.mean(ta[label] == tb[label]))}


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: pack_bundle IN.npz OUT.npz [--int8=REGEX ...]")
  from astrotl import bundle, checkpoint
  from astrotl.scan import inputs
  src, dst = argv[1], argv[2]
  trees, meta = checkpoint.load_bundle(src)
  meta = dict(meta, storage="float16" + (f"; int8: {', '.join(flags.FLAGS.int8)}"
                                         if flags.FLAGS.int8 else ""))
  checkpoint.save_bundle(dst, trees, meta, int8=tuple(flags.FLAGS.int8))
  from astrotl import data
  paths = inputs.from_spectra(flags.FLAGS.spectra or str(data.sample_dir("spectra"))).paths
  result = compare(bundle.load_model(src), bundle.load_model(dst), paths)
  size = lambda p: pathlib.Path(p).stat().st_size / 2**20
  print(f"{src} ({size(src):.1f} MB) -> {dst} ({size(dst):.1f} MB); on {result['n']} spectra: "
        f"max |dP| = {result['max_abs_dp']:.2e}, class agreement {result['class_agreement']:.3f}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
