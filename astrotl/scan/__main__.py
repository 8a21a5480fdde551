"""The command line of the scan (see astrotl.scan).

Exit codes: 0 done; 1 done, but more than --max_missing of the catalog's files were not
found; 2 a usage error (one line, no traceback; nothing was scanned); 130 / 143
interrupted by SIGINT / SIGTERM (every finished chunk is kept: re-run the same command).
"""

from astrotl import cli

PROG = "astrotl.scan"
if __name__ == "__main__":  # first: a signal while absl and jax load ends the scan at once
  cli.exit_on_signals(PROG)

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  f = flags
  f.DEFINE_string("spectra", None, "Folders (searched recursively), files or globs of spectrum "
                  "files, comma-separated.  Default: the spectra bundled with astrotl.")
  f.DEFINE_string("catalog", None, "Catalog CSV/FITS listing the files (a path column, or "
                  "LAMOST obsdate/planid/lmjd/spid/fiberid).")
  cli.define_catalog_flags("Scan")
  flags.adopt_module_key_flags(cli)  # so that --help lists them
  f.DEFINE_string("model", None, "Model bundle (.npz), a bundled model name (wd_two_stage, "
                  "wd_stage1), or 'torch:7_cnn_model.pt,2_cnn_model.pt' for Tan et al.'s "
                  "PyTorch weights.  Default: wd_two_stage.")
  f.DEFINE_string("select", None, "Candidate rule instead of the model's own: CLASS>=P "
                  "(e.g. WD>=0.9, A>=0.5) or LO<=COLUMN<=HI (e.g. 20<=subtype<=29).")
  f.DEFINE_float("threshold", None, "Probability threshold of the model's own rule (default: "
                 "the bundle's, 0.5 for the white-dwarf model).")
  f.DEFINE_float("min_snr", None, "Candidates need at least this S/N (default: the bundle's).")
  f.DEFINE_list("veto", None, "Survey classes that are never candidates, e.g. QSO,GALAXY "
                "(default: the bundle's).")
  f.DEFINE_string("known", None, "Catalog (CSV/FITS) of known objects with RA/Dec to match.")
  f.DEFINE_string("known_ra_column", None, "RA column of --known.")
  f.DEFINE_string("known_dec_column", None, "Dec column of --known.")
  f.DEFINE_bool("strict_known", False, "Refuse a --known catalog with a row whose RA/Dec is "
                "not decimal degrees (text, NaN, RA outside [0, 360), Dec outside [-90, 90]); "
                "without it such rows are skipped, counted in summary.json and the report, "
                "and named in one warning line.")
  f.DEFINE_string("catalog_limits", None, "Raise what --catalog and --known may hold, e.g. "
                  "rows=200M,bytes=40G.  Keys and defaults: bytes=16G (text after gunzip; a "
                  "FITS file's declared size), ratio=100 (gunzip growth past 64 MB), line=1M "
                  "(bytes a line), rows=50M, columns=10000: LAMOST DR9's catalogue (11.2 M "
                  "rows, ~4 GB) fits 4x over; a file past one is refused, not read.")
  f.DEFINE_float("radius", 3.0, "Cross-match radius in arcsec.")
  f.DEFINE_string("out", "astrotl-scan", "Output folder.")
  f.DEFINE_integer("batch_size", 256, "Spectra per device step (over the local devices; at "
                   "most the chunk size).")
  f.DEFINE_integer("chunk_size", 0, "Spectra per saved chunk (0: about 1/20 of the inputs, "
                   "from --batch_size to 4096).")
  f.DEFINE_integer("workers", None, "Decoding processes (default: CPU count; 0 decodes in "
                   "this process).")
  f.DEFINE_float("time_limit", 60.0, "Seconds one file may take to decode before its worker "
                 "is replaced and the file recorded as an error.")
  f.DEFINE_enum("mode", "auto", ["auto", "shared", "cascade", "plain"], "How a two-stage "
                "model runs (see astrotl.scan.runner).")
  f.DEFINE_integer("top", 12, "Spectra plotted in the report.")
  f.DEFINE_bool("explain", False, "Class-activation-map plots of the top candidates.")
  f.DEFINE_bool("embeddings", False, "Store each spectrum's embedding (float16) beside its "
                "predictions, for python -m astrotl.similar, and its anomaly score (distance to "
                "the bundle's training-set reference; null without one).")
  f.DEFINE_integer("anomalies", 0, "With --embeddings: write the N most anomalous spectra to "
                   "anomalies.fits and anomalies.vot.")
  f.DEFINE_bool("distributed", False, "Join jax.distributed first (SLURM, Cloud TPU, "
                "launch/local.sh).")
  f.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
  # Before the slow imports: from here a signal stops the scan at its next safe point.
  cli.raise_on_signals()
  cli.start(PROG, argv)
  from astrotl import bundle, parallel, rules, scan
  F = FLAGS
  try:
    parallel.initialize(F.distributed)
    summary = scan.scan(
        spectra=F.spectra, catalog=F.catalog, root=F.root, out=F.out, model=F.model,
        select=F.select, threshold=F.threshold, min_snr=F.min_snr, veto=F.veto, known=F.known,
        known_ra_column=F.known_ra_column, known_dec_column=F.known_dec_column,
        radius=F.radius, path_column=F.path_column, allow_outside_root=F.allow_outside_root,
        max_missing=F.max_missing, batch_size=F.batch_size, chunk_size=F.chunk_size,
        workers=F.workers, time_limit=F.time_limit, mode=F.mode, top=F.top,
        explain=F.explain, embeddings=F.embeddings, anomalies=F.anomalies,
        progress=F.progress, catalog_limits=F.catalog_limits, strict_known=F.strict_known)
  except (scan.InputError, scan.OutputError, bundle.BundleError, rules.RuleError,
          FileNotFoundError) as e:
    cli.fail(PROG, str(e))
  except (scan.Interrupted, KeyboardInterrupt) as e:
    cli.interrupted(PROG, e, F.out)
  if summary is None:  # not process 0
    return
  rate = summary.get("spectra_per_second")
  known = f" ({summary['n_known_candidates']} known)" if summary.get("known_catalog") else ""
  print(f"astrotl.scan: {summary['n_scanned']} spectra scanned, {summary['n_errors']} "
        f"unreadable, {summary['n_candidates']} candidates{known}; this run "
        f"{summary['files_this_run']} inputs in {summary['seconds']:.1f} s"
        + (f" ({rate:.0f} spectra/s)" if rate else "") + f" -> {F.out}")
  if summary["too_many_missing"]:
    cli.fail(PROG, f"WARNING: {summary['n_missing_files']} of {summary['n_inputs']} catalog "
             f"files were not found (more than --max_missing={F.max_missing}); they are "
             f"listed in {F.out}/errors.csv. Check --root.", 1)


def run():
  import astrotl.scan
  try:
    cli.run(define_flags, main, astrotl.scan.__doc__.split("Data flows")[0].rstrip() + "\n\n"
            + __doc__)
  except SystemExit as e:
    if e.code in (None, 0):  # done: every output written and closed
      cli.quick_exit(0)
    raise


if __name__ == "__main__":
  run()
