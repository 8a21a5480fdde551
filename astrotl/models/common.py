"""Small pieces every model shares."""


def check_output(output: str, allowed, model: str):
  """Models return logits by default, or an intermediate named by `output`."""
  if output not in allowed:
    raise ValueError(f"{model}: output={output!r}; use one of {', '.join(allowed)}")
