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
  """Max |dP| of both stages and class agreement of two ScanModels on `paths`."""
  from astrotl import parallel
  from astrotl.io import batch as io_batch
  good, arrays, _, _ = io_batch.decode_many(paths)
  mesh = parallel.make_mesh()
  n = len(good)
  size = -(-n // mesh.devices.size) * mesh.devices.size
  padded, _ = parallel.pad_rows(arrays, size)
  sharded = parallel.shard_batch(padded, mesh, size)
  outs = []
  for m in (a, b):
    p1, p2 = m.make_fn(mesh)(parallel.replicate(m.variables, mesh), sharded["u"],
                             sharded["flux"], sharded["ivar"], sharded["mask"])
    outs.append((np.asarray(p1)[:n], np.asarray(p2)[:n]))
  (a1, a2), (b1, b2) = outs
  return {"n": n, "max_abs_dp_stage1": float(np.abs(a1 - b1).max()),
          "max_abs_dp_wd": float(np.abs(a2 - b2).max()),
          "class_agreement": float(np.mean(a1.argmax(-1) == b1.argmax(-1)))}


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: pack_bundle IN.npz OUT.npz [--int8=REGEX ...]")
  from astrotl import checkpoint, scan
  src, dst = argv[1], argv[2]
  trees, meta = checkpoint.load_bundle(src)
  meta = dict(meta, storage="float16" + (f"; int8: {', '.join(flags.FLAGS.int8)}"
                                         if flags.FLAGS.int8 else ""))
  checkpoint.save_bundle(dst, trees, meta, int8=tuple(flags.FLAGS.int8))
  if flags.FLAGS.spectra:
    from astrotl.scan import list_inputs
    paths, _ = list_inputs(spectra=flags.FLAGS.spectra)
  else:
    paths, _ = scan.list_inputs()
  result = compare(scan.ScanModel.load(src), scan.ScanModel.load(dst), paths)
  size = lambda p: pathlib.Path(p).stat().st_size / 2**20
  print(f"{src} ({size(src):.1f} MB) -> {dst} ({size(dst):.1f} MB); on {result['n']} spectra: "
        f"max |dP(WD)| = {result['max_abs_dp_wd']:.2e}, max |dP(stage 1)| = "
        f"{result['max_abs_dp_stage1']:.2e}, class agreement {result['class_agreement']:.3f}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
