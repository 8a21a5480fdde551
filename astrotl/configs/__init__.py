"""ml_collections configs, one `get_config(arg)` file per experiment.

`arg` is the text after ':' in `--config=path.py:arg`, a comma-separated list of
key=value pairs parsed by `parse_arg`.  A config is named by its file name
(`--config=default:steps=10`, `--config=wd_search`), found inside the installed package
whatever the working directory, or by any path to a config file.
"""

import ast
import os
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def names() -> list[str]:
  """Configs shipped with astrotl, by name."""
  return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def resolve(spec: str) -> str:
  """'default[:arg]', 'default.py', 'astrotl/configs/default.py[:arg]' or any path to a
  config file -> an existing file path (with ':arg' kept).

  A path that exists is used as it is; otherwise a bare name, or a path that ends in
  astrotl/configs/NAME.py (a command copied from the README into another directory), is
  the config of that name inside the installed package.
  """
  path, sep, arg = spec.partition(":")
  if os.path.exists(path):
    return spec
  p = pathlib.PurePath(path)
  name = p.stem if p.suffix in ("", ".py") else None
  packaged = (len(p.parts) == 1 or tuple(p.parts[-3:-1]) == ("astrotl", "configs"))
  if name and packaged and (HERE / f"{name}.py").is_file() and not name.startswith("_"):
    return str(HERE / f"{name}.py") + sep + arg
  raise ValueError(f"--config={spec}: no such config file, and no config named {p.stem!r} in "
                   f"astrotl; known names: {', '.join(names())}")


def resolve_argv(argv: list, flag: str = "config") -> list:
  """`argv` with the value of --FLAG (as --FLAG=V or --FLAG V) passed through `resolve`."""
  out, argv = list(argv), list(argv)
  for i, a in enumerate(argv):
    if a.startswith(f"--{flag}="):
      out[i] = f"--{flag}=" + resolve(a.split("=", 1)[1])
    elif a == f"--{flag}" and i + 1 < len(argv):
      out[i + 1] = resolve(argv[i + 1])
  return out


def run(main):
  """absl's `app.run(main)` with --config passed through `resolve` first (config_flags
  reads sys.argv itself, so it is rewritten in place); a bad name exits with code 2."""
  import sys
  from absl import app
  try:
    sys.argv[:] = resolve_argv(sys.argv)
  except ValueError as e:
    print(f"{pathlib.Path(sys.argv[0]).name}: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(main)


def parse_arg(arg: str | None, **defaults) -> dict:
  """'model=cnn1d,steps=10' -> dict, values parsed as Python literals where possible.

  Only keys present in `defaults` are accepted, so a typo is an error, not a silent no-op.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config arg {item!r}: expected key=value")
    key, value = item.split("=", 1)
    if key not in defaults:
      raise ValueError(f"config arg {key!r} unknown; known: {sorted(defaults)}")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out
