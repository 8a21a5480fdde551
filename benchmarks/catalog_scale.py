"""The scan of a survey-sized catalog: its main process's memory and its first spectrum
as a catalog in the LAMOST DR9 LRS general catalogue's columns grows from 10^5 to 10^6
rows (issue 25).

  python benchmarks/catalog_scale.py --sizes=100000,1000000 --files=2000 \\
      --links=/scratch/astrotl-mirror-links

The mirror is `astrotl.tools.make_mirror --files`: a catalog.csv of N rows (39 columns,
no path column: the scan builds each archive path from obsdate/planid/lmjd/spid/fiberid)
over --files real spectra, every row its own path (a hard link), so the scan resolves,
opens, decodes and scores a file a row.  Each size is `python -m astrotl.scan
--catalog=<the first N rows> --root=<mirror>` run to its end, with

  peak_rss_main_mb   the peak resident memory of the scan's main process (sampled every
                     0.1 s; decode workers not included, see peak_rss_tree_mb);
  first_spectrum_s   seconds from the command to the first decoded spectrum: the scan's
                     own clock (timings.first_spectrum, from the start of scan()) plus
                     everything outside scan() (interpreter, imports, exit), so an upper
                     bound;
  timings            the scan's phases (prepare is opening the catalog).

Targets: at 10^6 rows peak_rss_main_mb <= 1024, at most 10 % above that at 10^5, and
first_spectrum_s <= 15.  Writes benchmarks/results/catalog_scale_<backend><tag>.json.
"""

import json
import os
import pathlib
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).parent))
# --workers, --model, --out and --tag are scan_throughput's flags.
from scan_throughput import (_MODEL, _OUT, _TAG, _WORKERS, head_catalog,  # noqa: E402
                             time_scan)

_SIZES = flags.DEFINE_list("sizes", ["100000", "1000000"], "Catalog rows.")
_FILES = flags.DEFINE_integer("files", 2000, "Real spectra under the hard links.")
_LINKS = flags.DEFINE_string("links", os.path.join(tempfile.gettempdir(),
                                                   "astrotl-mirror-links"),
                             "The hard-link mirror's folder (made if absent or too small).")

RSS_MB, GROWTH, FIRST_S = 1024, 0.10, 15.0  # the targets


def mirror(n, folder, files):
  """The mirror's catalog, made (with `files` spectra under hard links) if it has fewer
  than n rows."""
  from astrotl.tools import make_mirror
  folder = pathlib.Path(folder)
  catalog = folder / "catalog.csv"
  if catalog.exists():
    with open(catalog, "rb") as f:
      if sum(1 for _ in f) - 1 >= n:
        return catalog
  t = time.time()
  make_mirror.make(n, folder, level=1, files=files)
  print(f"made a {n}-row mirror over {files} spectra in {time.time() - t:.0f} s")
  return catalog


def main(argv):
  del argv
  import jax
  load = os.getloadavg()  # the machine's other work: these are wall-clock numbers
  sizes = sorted(int(s) for s in _SIZES.value)
  catalog = mirror(sizes[-1], _LINKS.value, _FILES.value)
  rows = []
  for n in sizes:
    with tempfile.TemporaryDirectory(prefix="astrotl-catalog-scale-") as d:
      cat = pathlib.Path(d) / "catalog.csv"
      head_catalog(catalog, n, cat)
      size = cat.stat().st_size
      wall, summary, main_rss, tree_rss = time_scan(
          [f"--catalog={cat}", f"--root={catalog.parent}", f"--model={_MODEL.value}",
           f"--workers={_WORKERS.value}"], pathlib.Path(d) / "out")
    timings = summary["timings"]
    outside = wall - summary["wall_seconds"]  # interpreter, imports and exit
    row = {"n": n, "catalog_mb": size / 2**20, "wall_seconds": wall,
           "n_scanned": summary["n_scanned"], "n_errors": summary["n_errors"],
           "rate_steady": summary["spectra_per_second"], "timings": timings,
           "seconds_outside_scan": outside,
           "first_spectrum_s": (timings["first_spectrum"] + outside
                                if "first_spectrum" in timings else None),
           "peak_rss_main_mb": main_rss / 2**20, "peak_rss_tree_mb": tree_rss / 2**20}
    rows.append(row)
    print(f"{n:>8} rows ({row['catalog_mb']:.0f} MB): peak RSS {row['peak_rss_main_mb']:.0f} MB "
          f"main ({row['peak_rss_tree_mb']:.0f} MB with workers), first spectrum within "
          f"{row['first_spectrum_s']:.1f} s, prepare {timings['prepare']:.1f} s, "
          f"{row['n_scanned']} scanned in {wall:.0f} s")
  big, small = rows[-1], rows[0]
  growth = big["peak_rss_main_mb"] / small["peak_rss_main_mb"] - 1
  result = {"backend": jax.default_backend(), "workers": _WORKERS.value, "model": _MODEL.value,
            "files": _FILES.value, "cpu_count": os.cpu_count(),
            "load_average_before": load, "rows": rows,
            "rss_growth_largest_over_smallest": growth,
            "targets": {"peak_rss_main_mb": RSS_MB, "growth": GROWTH, "first_spectrum_s": FIRST_S},
            "met": {"peak_rss_main_mb": big["peak_rss_main_mb"] <= RSS_MB,
                    "growth": growth <= GROWTH,
                    "first_spectrum_s": all(r["first_spectrum_s"] is not None
                                            and r["first_spectrum_s"] <= FIRST_S for r in rows)}}
  print(f"growth {small['n']} -> {big['n']} rows: {100 * growth:+.1f} %; met: {result['met']}")
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"catalog_scale_{result['backend']}{_TAG.value}.json").write_text(
      json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
