"""What every astrotl command line shares: one-line errors, exit codes, signals, --help.

Exit codes of every command: 0 done; 1 done with a warning; 2 a usage error (one line on
stderr, no traceback); 130 / 143 interrupted by SIGINT / SIGTERM.
"""

import signal
import sys

HELP = {"--help", "-h", "-?", "--helpshort"}


def fail(prog: str, message: str, code: int = 2):
  """Prints `prog: message` on stderr and exits with `code`."""
  print(f"{prog}: {message}", file=sys.stderr)
  sys.exit(code)


def start(prog: str, argv):
  """Refuses stray arguments and quiets the backends' logs unless --verbosity is given."""
  from absl import flags, logging
  if len(argv) > 1:
    fail(prog, f"unexpected arguments {' '.join(argv[1:])} (flags are --name=value)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def raise_on_signals(exception):
  """SIGINT and SIGTERM raise `exception(signum)`, so finished work is kept on the way out."""
  def handler(signum, frame):
    raise exception(signum)
  signal.signal(signal.SIGINT, handler)
  signal.signal(signal.SIGTERM, handler)


def interrupted(prog: str, e, out: str):
  """Exits 128 + signal with what was saved, for an Interrupted (or KeyboardInterrupt) `e`."""
  signum = getattr(e, "signum", signal.SIGINT)
  saved = getattr(e, "saved", None)
  what = f"{saved} inputs are saved in {out}" if saved is not None else "nothing was lost"
  fail(prog, f"interrupted ({signal.Signals(signum).name}): {what}; re-run the same command "
       "to resume", 128 + signum)


def run(define_flags, main, doc: str):
  """Defines the flags and runs `main` under absl; --help prints `doc` and the flags and
  exits 0 (absl's own --help exits 1)."""
  from absl import app, flags
  define_flags()
  if HELP & set(sys.argv[1:]):
    print(doc.rstrip() + "\n\nFlags:")
    print(flags.FLAGS.main_module_help())
    sys.exit(0)
  app.run(main)
