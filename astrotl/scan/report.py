"""report.md and its plots: what was scanned, the rule that selected candidates, what the
model was trained on and how often it is wrong, the best-scoring spectra, and with
--embeddings the spectra least like the model's training set (the anomalies).

The histogram and the spectra plot show the rule that selects candidates: the score it
thresholds, split into the spectra the rule's other conditions let through (stage 1
agrees, S/N, survey-class veto; the legend names each of them) and the rest.  Every file
is written atomically.
"""

import os
import textwrap

import numpy as np

from astrotl import rules
from astrotl.scan.chunks import write_atomic

LINES = (3934, 4102, 4341, 4862, 6564)


def _figure(**kw):
  """A matplotlib figure drawn by Agg, without pyplot: pyplot's import costs half a second
  of every scan, and its registry of open figures buys a report nothing."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(**kw)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path):
  write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))


def histogram(out, scores, eligible, rule, n_cand):
  fig = _figure(figsize=(6.5, 4))
  ax = fig.subplots()
  finite = np.isfinite(scores)
  prob = rule["type"] != "range"
  bins = np.linspace(0, 1, 51) if prob else 50
  data = [scores[finite & eligible], scores[finite & ~eligible]]
  ax.hist(data, bins=bins, stacked=True, color=["tab:orange", "lightgrey"],
          label=[textwrap.fill(eligible_label(rule), 60), "the rest (never candidates)"])
  if prob:
    ax.axvline(rule["threshold"], color="crimson", ls="--",
               label=f"threshold {rule['threshold']:g}: {n_cand} candidates")
  else:
    lo, hi = rule.get("min", -np.inf), rule.get("max", np.inf)
    ax.axvspan(max(lo, np.nanmin(scores[finite], initial=lo)),
               min(hi, np.nanmax(scores[finite], initial=hi)), color="crimson", alpha=0.15,
               label=f"selected range: {n_cand} candidates")
  skipped = int((~finite).sum())
  ax.set_yscale("log")
  ax.set_xlabel(rule["score"] + (f"  ({skipped} spectra not scored: null)" if skipped else ""))
  ax.set_ylabel("spectra")
  ax.set_title(textwrap.fill(f"candidate rule: {rules.describe(rule)}", 100), fontsize=8,
               y=1.0)  # where matplotlib puts it, without measuring the axes at the draw
  ax.legend(fontsize=7)
  fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.88)
  _save(fig, out / "score_histogram.png")


def eligible_label(rule) -> str:
  """The legend of the orange bars: every condition of the rule besides its score (what
  `merge` counts as eligible: `rules.admitted` and, for two stages, the agreeing class), so
  a spectrum of an agreeing class that fails the S/N or the veto is grey by the legend too."""
  parts = []
  if rule["type"] == "two_stage":
    parts.append(f"{rule['agree']} in {{{', '.join(rule['classes'])}}}")
  if rule.get("min_snr"):
    parts.append(f"snr >= {rule['min_snr']:g}")
  if rule.get("veto"):
    parts.append(f"survey class not in {{{', '.join(rule['veto'])}}}")
  return " and ".join(parts) if parts else "every spectrum (the rule has no other condition)"


def trained_on(value) -> str:
  """summary.json's trained_on as one readable line: a bundle's own text as it is, a
  fine-tuned model's training data (`astrotl.finetune`: a dict) as catalog, classes and
  counts per split."""
  if not isinstance(value, dict):
    return str(value)
  counts = value.get("counts") or {}
  per_split = {s: sum(c.values()) for s, c in counts.items()}
  text = f"{os.path.basename(str(value.get('catalog', 'a catalog')))}"
  if value.get("kind"):
    kinds = {"spectrum": "spectra", "image": "images", "lightcurve": "light curves"}
    text += f" ({kinds.get(value['kind'], value['kind'])})"
  if value.get("classes"):
    text += f": {sum(per_split.values())} examples of {', '.join(map(str, value['classes']))}"
  if per_split:
    text += " (" + ", ".join(f"{s} {n}" for s, n in per_split.items()) + ")"
  if value.get("group_by"):
    text += f", objects grouped by {value['group_by']}"
  extra = [f"{value[k]} {what}{'s' if value[k] != 1 else ''}{tail}"
           for k, what, tail in (("n_unreadable", "unreadable file", ""),
                                 ("n_skipped", "row", " skipped")) if value.get(k)]
  return text + ("; " + ", ".join(extra) if extra else "")


def top_spectra(out, best, model, rule):
  """The highest-scoring spectra (candidates first), so the plot is never empty."""

  def title(cols, k):
    label = "candidate" if cols.get("candidate", [False])[k] else "not a candidate"
    return f"{rule['score']}={_fmt(cols[rule['score']][k])}  [{label}]"

  plot_spectra(out / "top_candidates.png", best, model, title)


def plot_spectra(path, rows, model, title):
  """The spectra of `rows` (an arrow table of predictions), as the network saw them
  (`host_inputs`), each titled with its file, model class, survey class and title(columns,
  k)."""
  from matplotlib.lines import Line2D
  from astrotl.preprocess import spectra
  cols = {c: rows[c].to_pylist() for c in rows.column_names} if rows is not None else {"file": []}
  n = max(len(cols["file"]), 1)
  x = {}
  if cols["file"]:
    try:
      import warnings
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = host_inputs(model, cols["file"])
    except Exception:  # the report must not fail the scan
      pass
  wave = spectra.binned(spectra.wavelength_grid(), int(model.input.get("bin", 1)))
  # vertical segments [x, x] x [0, 1] (axes fraction), NaN between them
  marks = (np.repeat(np.asarray(LINES, float), 3), np.tile([0.0, 1.0, np.nan], len(LINES)))
  marks[0][2::3] = np.nan
  fig = _figure(figsize=(8, 1.6 * n))
  axes = fig.subplots(n, 1, sharex=True, squeeze=False)
  for k, ax in enumerate(axes[:, 0]):
    if k >= len(cols["file"]):
      ax.text(0.5, 0.5, "no spectra", transform=ax.transAxes, ha="center")
      continue
    f = cols["file"][k]
    if f in x:
      ax.plot(wave[:len(x[f])], x[f], lw=0.6, color="k")
    else:
      ax.text(0.5, 0.5, "unreadable now", transform=ax.transAxes, ha="center", fontsize=7)
    survey = "/".join(v for v in (cols.get("survey_class", [None])[k],
                                  cols.get("survey_subclass", [None])[k]) if v) or "none"
    cls = cols.get("class1", cols.get("pred_class", [None] * n))[k]
    # y=1: where matplotlib would place it anyway (no top ticks, no offset text on the
    # normalised inputs), without measuring every axis at each draw.
    ax.set_title(f"{os.path.basename(f)}  model class={cls}  survey class={survey}  "
                 f"{title(cols, k)}", fontsize=7, loc="left", y=1.0)
    # The Balmer lines as one artist: 60 axvlines took a tenth of the plot's time.
    ax.add_line(Line2D(marks[0], marks[1], transform=ax.get_xaxis_transform(which="grid"),
                       color="tab:red", lw=0.4, alpha=0.5))
  axes[-1, 0].set_xlabel("wavelength [A]")
  # Fixed margins in inches: tight_layout measured every axis and took a second a scan.
  height = 1.6 * n
  fig.subplots_adjust(left=0.07, right=0.98, bottom=0.5 / height, top=1 - 0.25 / height,
                      hspace=0.45)
  _save(fig, path)


def host_inputs(model, files) -> dict:
  """{file: the network's input} for the files that can be read, computed on the host by
  the functions the device runs (resampling, `spectra.network_input`) with numpy: equal
  to the device's inputs to float32 rounding (~2e-7 of their [0, 1] range, far below a
  pixel), without compiling a second device function for a plot."""
  from astrotl import inference
  from astrotl.preprocess import spectra
  names, raw, _, _ = inference.spectrum_inputs(files)
  f, iv, bad = spectra.resample_pixels(raw["u"], raw["flux"], raw["ivar"], raw["mask"])
  return dict(zip(names, spectra.network_input(f, iv, bad, model.input)))


def _fmt(v):
  return "null" if v is None or not np.isfinite(v) else f"{v:.3f}"


def write(out, summary, model, rule, scores, eligible, best, cand, explain=False, odd=None):
  lines = [f"# astrotl scan: {summary['model']}", ""]
  lines.append(f"- inputs: {summary['n_inputs']}; scanned: {summary['n_scanned']}; unreadable: "
               f"{summary['n_errors']} (listed with the reason in errors.csv)")
  extra = [f"{summary[k]} {what}" for k, what in (
      ("n_duplicate_rows", "duplicate catalog rows (scanned once)"),
      ("n_refused_rows", "catalog rows outside --root (refused)"),
      ("n_missing_files", "listed files not found")) if summary.get(k)]
  if extra:
    lines.append(f"- catalog: {'; '.join(extra)}")
  if rule:
    lines.append(f"- candidates ({rules.describe(rule)}): **{summary['n_candidates']}**")
  else:
    lines.append("- candidates: none selected (the model has no candidate rule; use --select)")
  if summary.get("known_catalog"):
    n_known = summary.get("n_known_candidates", summary.get("n_known", 0))  # old name too
    lines.append(f"- known: {n_known} of the candidates lie within "
                 f"{summary['radius_arcsec']:g}\" of an object in "
                 f"{os.path.basename(summary['known_catalog'])}")
    if summary.get("known_rows_skipped"):
      lines.append(f"- known catalog: {summary['known_rows_skipped']} of its "
                   f"{summary['known_rows']} rows skipped, their RA/Dec not decimal degrees "
                   "in range (--strict_known refuses such a catalog)")
  else:
    lines.append("- known objects: not checked (no --known catalog given)")
  lines += ["", "## The model", "", f"- {summary['model']} ({model.source})"]
  if summary.get("trained_on"):
    lines.append(f"- trained on: {trained_on(summary['trained_on'])}")
  fp = summary.get("false_positive_rate")
  if fp:
    lines.append(f"- measured false-positive rate of this rule: {fp['median']:.3%} "
                 f"(median; 95% interval {fp.get('low', np.nan):.3%}-"
                 f"{fp.get('high', np.nan):.3%}; {fp.get('description', '')})")
    e = summary["expected_false_candidates"]
    lines.append(f"- expected false candidates in a scan of {summary['n_scanned']} spectra: "
                 f"**{e['median']:.0f}** (95% interval {e.get('low', np.nan):.0f}-"
                 f"{e.get('high', np.nan):.0f}), against {summary['n_candidates']} found")
    purity = (summary.get("expected_purity") or {}).get("by_wd_fraction") or {}
    for frac, p in purity.items():
      lines.append(f"- expected purity of the candidates where {float(frac):.2%} of the spectra "
                   f"are white dwarfs: **{p['median']:.2f}** (median; 95% interval "
                   f"{p['low']:.2f}-{p['high']:.2f}), completeness {p['completeness']:.2f}")
    if purity:
      lines.append(f"  ({summary['expected_purity'].get('note', '')})")
  elif rule:
    lines.append("- no measured false-positive rate is recorded in this model bundle for this "
                 "rule; treat candidates as unverified")
  lines += ["", "## This run", ""]
  done = summary.get("n_already_done", 0)
  if done:
    lines.append(f"- resumed: {done} inputs were already done by an earlier run")
  if summary.get("files_this_run"):
    lines.append(f"- scanned {summary['files_this_run']} inputs in {summary['seconds']:.1f} s "
                 f"({summary['spectra_per_second']:.1f} spectra/s)")
  else:
    lines.append("- nothing left to scan: outputs merged from finished chunks")
  if summary.get("predicted_classes"):
    lines += ["", "Predicted classes:", ""]
    lines += [f"- {n}: {c}" for n, c in summary["predicted_classes"].items()]
  if rule:
    histogram(out, scores, eligible, rule, summary["n_candidates"])
    top_spectra(out, best, model, rule)
    lines += ["", "![scores and the candidate rule](score_histogram.png)", "",
              "![highest-scoring spectra](top_candidates.png)"]
  if summary.get("embeddings"):
    lines += ["", "## Anomalies", ""] + _anomalies(out, summary, model, odd)
  if explain and cand is not None and cand.num_rows:
    lines += ["", _explain(out, cand, model)]
  write_atomic(out / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))


def _anomalies(out, summary, model, odd):
  ref = summary.get("anomaly_reference")
  lines = ["Each spectrum's embedding (the primary network's penultimate features) is stored "
           "in chunks/ for `python -m astrotl.similar`."]
  if not ref:
    return lines + ["", "No anomaly scores: this model bundle carries no reference set of "
                    "training-set embeddings, so the `anomaly` column is null. Add one with "
                    "`astrotl.similar.add_reference(model, training_spectra).save(path)`."]
  lines += ["", f"`anomaly`: mean distance (cosine) of a spectrum's embedding to its "
            f"{ref['k']} nearest among {ref['n']} training spectra, in units of the median of "
            f"that distance for the training spectra themselves ({ref['scale']:.3g}): about 1 "
            "is like the training data, large is unlike anything the model was trained on."]
  if ref.get("training_data"):
    lines.append(f"Training data of the reference: {ref['training_data']}")
  if summary.get("n_anomalies_written"):
    lines.append(f"The {summary['n_anomalies_written']} highest scores: anomalies.fits, "
                 "anomalies.vot.")
  if odd is None or not odd.num_rows:
    return lines + ["", "No spectrum has an anomaly score."]
  plot_spectra(out / "top_anomalies.png", odd, model,
               lambda cols, k: f"anomaly={_fmt(cols['anomaly'][k])}")
  lines += ["", "| file | obsid | anomaly | model class | survey class |", "|---|---|---|---|---|"]
  cls = "class1" if "class1" in odd.column_names else "pred_class"
  for r in odd.to_pylist():
    survey = "/".join(v for v in (r.get("survey_class"), r.get("survey_subclass")) if v)
    lines.append(f"| {os.path.basename(r['file'])} | {r.get('obsid') or ''} | "
                 f"{_fmt(r['anomaly'])} | {r.get(cls) or ''} | {survey} |")
  return lines + ["", "![the most anomalous spectra](top_anomalies.png)"]


def _explain(out, cand, model, top=12):
  from astrotl import explain
  from astrotl.preprocess import spectra
  files = cand["file"].to_pylist()[:top]
  net = list(model.networks.values())[-1]
  target = net.classes.index(net.meta.get("positive", net.classes[-1])) if net.classes else None
  names, x = model.network_inputs(files)
  cams = model.explain(files, target=target, network=net.name)
  wave = spectra.binned(spectra.wavelength_grid(), int(model.input.get("bin", 1)))[:x.shape[1]]
  (out / "cam").mkdir(exist_ok=True)
  for name, flux, c in zip(names, x, cams):
    explain.plot_cam(wave, flux, c, out / "cam" / f"{os.path.basename(name)}.png")
  return f"Class-activation maps of the top {len(names)} candidates: cam/"
