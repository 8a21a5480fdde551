"""Candidate rules: which rows of a predictions table are candidates.

A rule is data (a dict in a model bundle's metadata, or the scan's --select flag) and
this module is the one place that evaluates it, on columns of predictions:

  {"type": "two_stage", "score": "p_wd", "threshold": 0.5, "agree": "class1",
   "classes": ["WD", "WD+M"]}            Tan et al.: P(WD) from stage 2 >= threshold and
                                         stage 1's predicted class is a white dwarf one
  {"type": "class", "score": "p_A", "threshold": 0.5}     a class probability >= threshold
  {"type": "range", "score": "subtype", "min": 20, "max": 29.9}   a regression value in range

Every rule may also carry "min_snr" (the S/N the spectrum must reach) and "veto" (survey
classes, e.g. ["QSO", "GALAXY"], that are never candidates; SURVEY_CLASSES, any case).  A
null (masked) value is never selected.
"""

import re

import numpy as np

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


# The survey CLASS values a veto may name: LAMOST's pipeline classes (its header CLASS and
# catalog `class`) and SDSS's (STAR, GALAXY, QSO), as the readers give them.
SURVEY_CLASSES = ("STAR", "GALAXY", "QSO", "Unknown")


class RuleError(ValueError):
  """A rule that does not fit the model's outputs."""


def veto_classes(values, flag="--veto"):
  """The survey classes of a veto (a list, or comma-separated text), checked and spelt as in
  SURVEY_CLASSES; None stays None (the bundle's own veto).  An unknown class is a RuleError
  naming `flag`, the value and the accepted classes."""
  if values is None:
    return None
  if isinstance(values, str):
    values = values.split(",")
  known = {c.upper(): c for c in SURVEY_CLASSES}
  out = []
  for v in (str(v).strip() for v in values):
    if v and v.upper() not in known:
      raise RuleError(f"{flag}={v}: not a survey class; accepted: {', '.join(SURVEY_CLASSES)} "
                      "(any case, comma-separated)")
    if v:
      out.append(known[v.upper()])
  return out


def parse(text: str, columns, classes=()) -> dict:
  """A rule from the scan's --select text.

  'WD>=0.9' or 'p_WD>=0.9': a class (or any probability column) at a threshold;
  '20<=subtype<=29.9' or 'subtype>=20': a value range.  `columns` are the predictions'
  numeric columns and `classes` the model's class names, so a name can be either.
  """
  text = text.replace(" ", "")
  m = re.fullmatch(rf"({_NUMBER})<=([^<>=]+)<=({_NUMBER})", text)
  if m:
    lo, name, hi = float(m.group(1)), m.group(2), float(m.group(3))
    return {"type": "range", "score": _column(name, columns, classes), "min": lo, "max": hi}
  m = re.fullmatch(rf"([^<>=]+)(>=|<=)({_NUMBER})", text)
  if not m:
    raise RuleError(f"--select={text!r}: write CLASS>=P (e.g. WD>=0.9) or LO<=COLUMN<=HI "
                    "(e.g. 20<=subtype<=29)")
  name, op, value = m.group(1), m.group(2), float(m.group(3))
  column = _column(name, columns, classes)
  if op == "<=":
    return {"type": "range", "score": column, "min": -np.inf, "max": value}
  if column.startswith("p") and not 0.0 <= value <= 1.0:
    raise RuleError(f"--select={text!r}: a probability threshold must lie in [0, 1]")
  return {"type": "class", "score": column, "threshold": value}


def _column(name, columns, classes):
  from astrotl.schema import column_name
  if name in columns:
    return name
  if name in classes and f"p_{column_name(name)}" in columns:
    return f"p_{column_name(name)}"
  raise RuleError(f"--select: {name!r} is neither a class ({', '.join(classes) or 'none'}) "
                  f"nor an output column ({', '.join(columns)})")


def check(rule: dict, columns) -> None:
  """Raises RuleError if `rule` needs a column the model does not produce."""
  if rule is None:
    return
  kind = rule.get("type")
  if kind not in ("two_stage", "class", "range"):
    raise RuleError(f"unknown rule type {kind!r}")
  veto_classes(rule.get("veto"), "the rule's veto")
  need = [rule["score"]] + ([rule["agree"]] if kind == "two_stage" else [])
  missing = [c for c in need if c not in columns]
  if missing:
    raise RuleError(f"the candidate rule needs columns {missing}; the model gives {list(columns)}")


def select(rule: dict, cols: dict) -> np.ndarray:
  """Boolean candidates for columns `cols` (numpy or masked arrays)."""
  score = _filled(cols[rule["score"]], np.nan).astype(np.float64)
  kind = rule["type"]
  if kind == "range":
    keep = (score >= rule.get("min", -np.inf)) & (score <= rule.get("max", np.inf))
  else:
    keep = score >= rule["threshold"]
  if kind == "two_stage":
    keep &= np.isin(_filled(cols[rule["agree"]], "").astype(str), list(rule["classes"]))
  return keep & admitted(rule, cols)


def admitted(rule: dict, cols: dict) -> np.ndarray:
  """Rows the rule's S/N limit and survey-class veto let through (all, if it has none)."""
  n = len(next(iter(cols.values())))
  keep = np.ones(n, bool)
  if rule.get("min_snr") and "snr" in cols:
    keep &= _filled(cols["snr"], 0.0) >= rule["min_snr"]
  if rule.get("veto") and "survey_class" in cols:
    survey = np.char.upper(_filled(cols["survey_class"], "").astype(str))
    keep &= ~np.isin(survey, [v.upper() for v in rule["veto"]])
  return keep


def stage1_admits(rule: dict, class1) -> np.ndarray | None:
  """For a cascade: rows whose stage-1 class can still make them candidates (None when
  the rule does not depend on stage 1)."""
  if rule is None or rule.get("type") != "two_stage":
    return None
  return np.isin(np.asarray(class1).astype(str), list(rule["classes"]))


def describe(rule: dict) -> str:
  if rule is None:
    return "no candidate rule"
  kind = rule["type"]
  if kind == "two_stage":
    text = (f"{rule['score']} >= {rule['threshold']:g} and {rule['agree']} in "
            f"{{{', '.join(rule['classes'])}}}")
  elif kind == "class":
    text = f"{rule['score']} >= {rule['threshold']:g}"
  else:
    lo, hi = rule.get("min", -np.inf), rule.get("max", np.inf)
    text = (f"{lo:g} <= {rule['score']} <= {hi:g}" if np.isfinite(lo) and np.isfinite(hi) else
            f"{rule['score']} >= {lo:g}" if np.isfinite(lo) else f"{rule['score']} <= {hi:g}")
  if rule.get("min_snr"):
    text += f" and snr >= {rule['min_snr']:g}"
  if rule.get("veto"):
    text += f" and survey class not in {{{', '.join(rule['veto'])}}}"
  return text


def _filled(a, value):
  return np.ma.filled(a, value) if np.ma.isMaskedArray(a) else np.asarray(a)
