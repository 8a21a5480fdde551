"""Scan rate and peak memory as the input grows: 10^3, 10^4, 10^5 files of one mirror.

  python benchmarks/scan_scale.py --sizes=1000,10000,100000 --mirror=/scratch/mirror100k

Each size is `python -m astrotl.scan --catalog=<the first N rows>` timed from the command to
its exit, with the peak resident memory of the scan process and of its process tree (the
decode workers included).  The rate should stay flat and the memory bounded: listing,
chunking, resume checks and the merge are all O(n).  Writes
benchmarks/results/scan_scale_<backend>.json.
"""

import json
import os
import pathlib
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).parent))
# --mirror, --workers, --model and --out are scan_throughput's flags.
from scan_throughput import (_MIRROR, _MODEL, _OUT, _WORKERS, head_catalog,  # noqa: E402
                             mirror_paths, time_scan)

_SIZES = flags.DEFINE_list("sizes", ["1000", "10000", "100000"], "Numbers of files.")


def main(argv):
  del argv
  import jax
  sizes = sorted(int(s) for s in _SIZES.value)
  catalog, _ = mirror_paths(sizes[-1], _MIRROR.value)
  rows = []
  for n in sizes:
    with tempfile.TemporaryDirectory(prefix="astrotl-scale-") as d:
      cat = pathlib.Path(d) / "catalog.csv"
      head_catalog(catalog, n, cat)
      wall, summary, main_rss, tree_rss = time_scan(
          [f"--catalog={cat}", f"--root={pathlib.Path(catalog).parent}", f"--model={_MODEL.value}",
           f"--workers={_WORKERS.value}"], pathlib.Path(d) / "out")
    row = {"n": n, "wall_seconds": wall, "rate_wall": n / wall,
           "rate_steady": summary["spectra_per_second"], "timings": summary["timings"],
           "peak_rss_main_mb": main_rss / 2**20, "peak_rss_tree_mb": tree_rss / 2**20}
    rows.append(row)
    print(f"{n:>8} files: {row['rate_wall']:6.0f} spectra/s command to exit "
          f"(steady {row['rate_steady']:.0f}/s), peak RSS {row['peak_rss_main_mb']:.0f} MB "
          f"({row['peak_rss_tree_mb']:.0f} MB with workers)")
  result = {"backend": jax.default_backend(), "workers": _WORKERS.value, "model": _MODEL.value,
            "cpu_count": os.cpu_count(), "rows": rows,
            "rss_ratio_largest_over_smallest": rows[-1]["peak_rss_main_mb"] / rows[0]["peak_rss_main_mb"]}
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"scan_scale_{result['backend']}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
