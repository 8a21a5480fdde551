"""The command line of classify_lightcurves (see astrotl.classify_lightcurves).

Exit codes, as the scan's: 0 done; 1 done, but more than --max_missing of the catalog's
files were not found; 2 a usage error (one line, no traceback; nothing was read);
130 / 143 interrupted by SIGINT / SIGTERM (finished chunks are kept: re-run the command).
"""

from absl import flags

from astrotl import cli

FLAGS = flags.FLAGS
PROG = "astrotl.classify_lightcurves"


def define_flags():
  f = flags
  f.DEFINE_string("lightcurves", None, "Folders (searched recursively), files or globs of "
                  "light-curve files, comma-separated, or one catalog (CSV/FITS with a file "
                  "column).  Default: the two EROS-2 sample curves bundled with astrotl.")
  cli.define_catalog_flags("Read")
  flags.adopt_module_key_flags(cli)  # so that --help lists them
  f.DEFINE_string("model", None, "Light-curve model bundle (.npz) or bundled name.  Default: "
                  "upsilont (Kim et al. 2021).")
  f.DEFINE_string("time_column", None, "Time column (name or 0-based number); default: found "
                  "by name (time, hjd, mjd, jd, date, ...), else the first column.")
  f.DEFINE_string("mag_column", None, "Magnitude column; default: mag/magnitude, else the "
                  "first mag* or *mag column (MagR in UPSILoN's .time files).")
  f.DEFINE_string("err_column", None, "Magnitude-error column; default: the error column "
                  "after the magnitude, or err/magerr/sigma/...; none: std(mag) is used.")
  f.DEFINE_string("id_column", None, "Column(s) naming the star of each row, for files "
                  "holding many stars (e.g. MACHO's fieldid,tileid,seqn): each star is then "
                  "one row of predictions or errors, its id the values joined by '.'.")
  f.DEFINE_float("max_file_mb", 64.0, "Larger files (also once decompressed) are errors.")
  f.DEFINE_string("out", "astrotl-lightcurves", "Output folder.")
  f.DEFINE_integer("batch_size", 256, "Curves per network call.")
  f.DEFINE_integer("chunk_size", 0, "Curves per saved chunk (0: about 1/20 of the inputs, "
                   "64-4096).")
  f.DEFINE_integer("workers", None, "Reading processes (default: none for fewer than 200 "
                   "inputs, else the CPU count; 0 reads in this process).")
  f.DEFINE_float("time_limit", 60.0, "Seconds one file may take to read (with workers).")
  f.DEFINE_string("compile_cache", None, "Folder where compiled feature functions are kept "
                  "between runs (they take ~10 s each to compile); default: the scan's "
                  "(astrotl.parallel.enable_compilation_cache); 'off' for none.")
  f.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
  from astrotl import bundle
  from astrotl import classify_lightcurves as clc
  cli.start(PROG, argv)
  cli.raise_on_signals(clc.Interrupted)
  F = FLAGS
  from astrotl import parallel
  parallel.enable_compilation_cache(F.compile_cache)
  try:
    s = clc.classify(
        lightcurves=F.lightcurves, out=F.out, model=F.model, root=F.root,
        path_column=F.path_column, allow_outside_root=F.allow_outside_root,
        max_missing=F.max_missing, time_column=F.time_column, mag_column=F.mag_column,
        err_column=F.err_column, id_column=F.id_column, max_file_mb=F.max_file_mb,
        batch_size=F.batch_size, chunk_size=F.chunk_size, workers=F.workers,
        time_limit=F.time_limit, progress=F.progress)
  except (clc.InputError, clc.OutputError, bundle.BundleError, FileNotFoundError) as e:
    cli.fail(PROG, str(e))
  except (clc.Interrupted, KeyboardInterrupt) as e:
    cli.interrupted(PROG, e, F.out)
  rate = s.get("curves_per_second")
  top = ", ".join(f"{c} {n}" for c, n in list(s["predicted_classes"].items())[:5])
  # with --id_column a row is a star and the rate counts files
  unit, per = ("stars", "files") if s.get("id_column") else ("curves", "curves")
  print(f"{PROG}: {s['n_classified']} {unit} classified ({top or 'none'}), {s['n_errors']} "
        f"without a prediction (errors.csv); this run {s['files_this_run']} inputs in "
        f"{s['seconds']:.1f} s" + (f" ({rate:.3g} {per}/s)" if rate else "") + f" -> {F.out}")
  if s["too_many_missing"]:
    cli.fail(PROG, f"WARNING: {s['n_missing_files']} of {s['n_inputs']} catalog files were "
             f"not found (more than --max_missing={F.max_missing}); they are listed in "
             f"{F.out}/errors.csv. Check --root.", 1)


def run():
  import astrotl.classify_lightcurves as clc
  cli.run(define_flags, main, clc.__doc__.rstrip() + "\n\n" + __doc__)


if __name__ == "__main__":
  run()
