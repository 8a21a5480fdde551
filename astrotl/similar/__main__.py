"""The command line of the similarity search (see astrotl.similar).

--query takes spectrum files, folders or globs (comma-separated), embedded with the scan's
model; or one catalog (CSV/FITS table) whose rows are spectra of the scan, found by their
obsid column, or else files named by its path column (as --catalog of the scan).

Writes the table to --out (.csv, .fits, .vot or .parquet) and prints the nearest few.
Exit codes: 0 done; 2 a usage error (one line, no traceback).
"""

import os
import sys

from absl import flags

from astrotl import cli

FLAGS = flags.FLAGS
PROG = "astrotl.similar"


def define_flags():
  f = flags
  f.DEFINE_string("scan", None, "Output folder of a python -m astrotl.scan --embeddings run.")
  f.DEFINE_string("query", None, "Spectrum files, folders or globs (comma-separated), or one "
                  "catalog CSV/FITS with an obsid or a path column.")
  f.DEFINE_integer("k", 50, "Neighbours per query.")
  f.DEFINE_string("out", "similar.csv", "Output table: .csv, .fits, .vot or .parquet.")
  f.DEFINE_string("model", None, "The scan's model, if its recorded path has moved.")
  f.DEFINE_string("root", None, "Folder a query catalog's paths are relative to.")
  f.DEFINE_string("path_column", None, "Query catalog column holding file paths.")
  f.DEFINE_enum("method", "auto", ["auto", "exact", "index"], "exact: compare with every "
                "spectrum; index: the faiss index (built once into <scan>/similar/); auto: "
                "exact below 200,000 spectra.")
  f.DEFINE_integer("nprobe", None, "Index cells searched per query (default 64).")
  f.DEFINE_bool("rebuild", False, "Build the index again.")
  f.DEFINE_integer("show", 5, "Neighbours of each query to print.")


def _fail(message, code=2):
  cli.fail(PROG, message, code)


def queries(text, root=None, path_column=None):
  """{"queries": files} or {"obsids": [...]} / {"queries": files} from a catalog."""
  import numpy as np
  from astrotl.io import catalog as io_catalog
  from astrotl.scan import inputs
  items = [s.strip() for s in text.split(",") if s.strip()]
  if len(items) == 1 and _is_catalog(items[0]):
    table = io_catalog.read_table(items[0])
    col = io_catalog.find_column(table, ("obsid",))
    if col is not None and path_column is None:
      return {"obsids": np.asarray(table[col]).astype(np.int64)}
    found = inputs.from_catalog(items[0], root, path_column)
    return {"queries": found.paths}
  return {"queries": inputs.from_spectra(text).paths}


def _is_catalog(path):
  """A table, not a spectrum: a text table, or a FITS file no spectrum reader accepts."""
  from astrotl import io as aio
  from astrotl.io import catalog as io_catalog
  name = path.lower()
  if not os.path.isfile(path) or not name.endswith(io_catalog.SUFFIXES):
    return False
  if not name.endswith((".fits", ".fits.gz", ".fit", ".fit.gz")):
    return True
  try:
    aio.read(path)
    return False
  except aio.SpectrumError:
    return True


def main(argv):
  from astrotl import bundle, similar
  from astrotl.io import catalog as io_catalog
  from astrotl.scan import InputError
  cli.start(PROG, argv)
  F = FLAGS
  if not F.scan or not F.query:
    _fail("give --scan=DIR (a scan run with --embeddings) and --query=FILES or a catalog")
  if F.k < 1:
    _fail(f"--k={F.k}: must be >= 1")
  exact = {"auto": None, "exact": True, "index": False}[F.method]
  try:
    similar.store.Embeddings(F.scan)  # a bad --scan first: it is the cheaper mistake to name
    q = queries(F.query, F.root, F.path_column)
    t = similar.search(F.scan, k=F.k, model=F.model, exact=exact, nprobe=F.nprobe,
                       rebuild=F.rebuild, log=lambda m: print(m, file=sys.stderr), **q)
  except (similar.SimilarError, InputError, io_catalog.CatalogError, bundle.BundleError,
          FileNotFoundError, ValueError) as e:
    _fail(str(e).replace("--spectra=", "--query=", 1))
  write(t, F.out)
  how = t.meta["search"]
  print(f"astrotl.similar: {len(set(t['query']))} queries, {len(t)} neighbours "
        f"({how['kind']} search over {how['n']} spectra) -> {F.out}")
  show = [c for c in ("rank", "distance", "obsid", "ra", "dec", "class1", "pred_class",
                      "survey_subclass", "file") if c in t.colnames]
  for name in dict.fromkeys(t["query"]):
    rows = t[(t["query"] == name) & (t["rank"] <= F.show)]
    print(f"\n{name}:")
    rows[show].pprint(max_lines=-1, max_width=-1)


def write(t, path):
  """The table in the format its suffix names, written atomically."""
  from astrotl.scan.chunks import write_atomic
  fmt = {".csv": "ascii.csv", ".fits": "fits", ".vot": "votable", ".xml": "votable",
         ".parquet": "parquet"}.get(os.path.splitext(path)[1].lower())
  if fmt is None:
    _fail(f"--out={path}: use a .csv, .fits, .vot or .parquet file name")
  meta = dict(t.meta)
  t.meta = {"SCAN": meta["scan"][-60:], "SEARCH": str(meta["search"].get("kind"))}
  write_atomic(path, lambda p: t.write(p, format=fmt, overwrite=True))
  t.meta = meta


def run():
  import astrotl.similar
  cli.run(define_flags, main, astrotl.similar.__doc__.split("A scan with")[0].rstrip() + "\n\n"
          + __doc__)


if __name__ == "__main__":
  run()
