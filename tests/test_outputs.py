"""The scan's output files as users open them (issue 23): one schema however many rows,
nulls that stay nulls in astropy, pyarrow, FITS and VOTable readers, every catalog column
carried, the candidate rule written whole, and the report's small print."""

import json
import shutil
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.table import Table

from astrotl import data, rules, scan
from astrotl.scan import inputs, report

INT64_MIN = np.iinfo(np.int64).min


def _quiet(*_):
  pass


def _sample():
  """Spectra of three layouts: pilot files have no OBSID (null), the others have one."""
  rows = data.sample_index("spectra")
  picked = []
  for layout, n in (("image-subcontinuum", 3), ("coadd-table", 3), ("image-wavelength", 2)):
    picked += [r for r in rows if r["layout"] == layout][:n]
  return picked


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, tiny_bundles):
  """One scan with candidates (`full`) and the same chunks merged again under a rule that
  selects none (`empty`), with a --known catalog that matches one spectrum."""
  base = tmp_path_factory.mktemp("outputs")
  rows = _sample()
  known = base / "known.csv"
  known.write_text(f"name,ra,dec\nWD J1,{rows[0]['ra']},{rows[0]['dec']}\n")
  args = dict(spectra=[str(r["path"]) for r in rows], model=str(tiny_bundles["separate"]),
              mode="plain", min_snr=1.0, veto=["qso", "GALAXY"], known=str(known),
              workers=0, progress=False, log=_quiet)
  full = scan.scan(out=base / "full", threshold=0.0, **args)
  shutil.copytree(base / "full", base / "empty")
  empty = scan.scan(out=base / "empty", threshold=1.0, **args)  # merged from the chunks
  assert full["n_candidates"] >= 2 and empty["n_candidates"] == 0
  return {"full": (base / "full", full), "empty": (base / "empty", empty)}


def _kinds(t):
  return {n: t[n].dtype.kind for n in t.colnames}


def test_an_empty_candidate_table_has_the_schema_of_a_full_one(scanned):
  full, empty = scanned["full"][0], scanned["empty"][0]
  for stem in ("candidates.fits", "candidates.vot"):
    a, b = Table.read(full / stem), Table.read(empty / stem)
    assert len(b) == 0 and len(a) > 0
    assert _kinds(a) == _kinds(b), stem
    for name in ("file", "designation", "survey_class", "survey_subclass", "class1"):
      assert b[name].dtype.kind in "USO" and b[name].dtype.kind != "f", (stem, name)
  va = parse_single_table(str(full / "candidates.vot"))
  vb = parse_single_table(str(empty / "candidates.vot"))
  assert [(f.name, f.datatype, f.arraysize) for f in va.fields] == \
      [(f.name, f.datatype, f.arraysize) for f in vb.fields]
  with fits.open(empty / "candidates.fits") as h:
    assert h[1].columns["designation"].format.endswith("A")  # text, not a double


def test_votable_text_is_variable_length_never_arraysize_1(scanned):
  for out, _ in scanned.values():
    text = (out / "candidates.vot").read_text()
    assert 'arraysize="1"' not in text
    vot = parse_single_table(str(out / "candidates.vot"))
    assert {f.arraysize for f in vot.fields if f.datatype in ("char", "unicodeChar")} == {"*"}


def test_astropy_reads_parquet_nulls_as_masked_columns_of_their_own_type(scanned):
  out, _ = scanned["full"]
  arrow = pq.read_table(out / "predictions.parquet")
  null = arrow["obsid"].is_null().to_numpy(zero_copy_only=False)
  assert arrow.schema.field("obsid").type == "int64" and 0 < null.sum() < len(null)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # astropy casts NaN under the mask
    t = Table.read(out / "predictions.parquet")
  assert t["obsid"].dtype == np.int64 and hasattr(t["obsid"], "mask")
  np.testing.assert_array_equal(np.asarray(t["obsid"].mask), null)
  assert list(t["obsid"][~null]) == arrow["obsid"].drop_null().to_pylist()
  # text: masked where null, never the text 'None' (or 'N', cut to the column's width)
  kid = arrow["known_id"].is_null().to_numpy(zero_copy_only=False)
  assert kid.any() and not kid.all()
  np.testing.assert_array_equal(np.asarray(t["known_id"].mask), kid)
  assert list(t["known_id"][~kid]) == ["WD J1"]
  # the mask columns are astropy's business: its table has no column more
  assert "obsid.mask" in arrow.column_names and "obsid.mask" not in t.colnames
  assert not any(n.endswith(".mask") for n in t.colnames)
  assert t["ra"].unit == "deg" and t["obsid"].description


def test_fits_and_votable_nulls_are_nulls(scanned):
  out, _ = scanned["full"]
  pred = pq.read_table(out / "predictions.parquet")
  want = {r["file"]: r["obsid"] for r in pred.filter(pred["candidate"]).to_pylist()}
  assert None in want.values() and set(want.values()) != {None}
  header = fits.getheader(out / "candidates.fits", 1)
  k = [header[f"TTYPE{i}"] for i in range(1, header["TFIELDS"] + 1)].index("obsid") + 1
  assert header[f"TNULL{k}"] == INT64_MIN  # not astropy's 999999, a possible obsid
  assert "<TD>-9223372036854775808</TD>" not in (out / "candidates.vot").read_text()
  for name in ("candidates.fits", "candidates.vot"):
    t = Table.read(out / name)
    assert t["obsid"].dtype.str[1:] == "i8" and len(t) == len(want)
    got = {str(f): (None if m else int(v))
           for f, v, m in zip(t["file"], t["obsid"].data, np.ma.getmaskarray(t["obsid"]))}
    assert got == want, name


def test_the_rule_is_written_whole(scanned):
  out, summary = scanned["full"]
  rule = summary["rule"]
  assert len(rule) > 68 and rule.endswith("survey class not in {QSO, GALAXY}")
  header = fits.getheader(out / "candidates.fits", 1)
  assert header["RULE"] == rule and header["LONGSTRN"] == "OGIP 1.0"
  assert Table.read(out / "candidates.fits").meta["RULE"] == rule
  vot = parse_single_table(str(out / "candidates.vot"))
  assert {i.name: i.value for i in vot.infos}["RULE"] == rule


def test_summary_counts_known_candidates_by_that_name(scanned):
  out, summary = scanned["full"]
  saved = json.loads((out / "summary.json").read_text())
  assert "n_known" not in saved and saved["n_known_candidates"] == summary["n_known_candidates"]
  assert summary["n_known_candidates"] == 1
  assert "- known: 1 of the candidates lie within" in (out / "report.md").read_text()


def test_report_says_what_orange_means_and_what_a_finetuned_model_learnt():
  rule = {"type": "two_stage", "score": "p_wd", "threshold": 0.5, "agree": "class1",
          "classes": ["WD", "WD+M"], "min_snr": 4.0, "veto": ["QSO", "GALAXY"]}
  # the orange bars are rules.admitted & class1 agreeing: the legend names all three
  assert report.eligible_label(rule) == ("class1 in {WD, WD+M} and snr >= 4 and survey class "
                                         "not in {QSO, GALAXY}")
  assert report.eligible_label({"type": "class", "score": "p_A", "threshold": 0.5}).startswith(
      "every spectrum")
  cols = {"p_wd": np.array([0.9, 0.9]), "class1": np.array(["WD+M", "WD+M"]),
          "snr": np.array([2.0, 9.0]), "survey_class": np.array(["STAR", "STAR"])}
  assert list(rules.admitted(rule, cols)) == [False, True]  # low S/N WD+M: grey, as labelled
  about = {"catalog": "/data/labels.csv", "kind": "spectrum", "classes": ["A", "F"],
           "group_by": "designation", "counts": {"train": {"A": 5, "F": 4},
                                                 "validation": {"A": 1, "F": 1},
                                                 "test": {"A": 1, "F": 1}},
           "n_unreadable": 1, "unreadable": [["x.fits", "truncated"]], "n_skipped": 0}
  line = report.trained_on(about)
  assert line == ("labels.csv (spectra): 13 examples of A, F (train 9, validation 2, test 2), "
                  "objects grouped by designation; 1 unreadable file")
  assert "{" not in line and report.trained_on("real LAMOST stars") == "real LAMOST stars"


def test_carried_names_keep_the_catalogs_own_names():
  names = ["combined_obsid", "combined_snru", "combined_snru.1", "GroupID", "", "RA", "ra"]
  got = inputs.carried_names(names)
  assert list(got) == ["cat_combined_obsid", "cat_combined_snru", "cat_combined_snru_1",
                       "cat_GroupID", "cat_column5", "cat_RA", "cat_ra_2"]
  assert got["cat_combined_snru_1"] == (2, "combined_snru.1")


def test_every_column_of_the_dr8_grouped_catalog_is_carried(tmp_path, tiny_bundles, shared_data):
  """The user's catalog: GroupID, GroupSize and combined_snru.1 reach the outputs, with the
  combined_ prefix kept and the original name in each description."""
  src = shared_data / "spectra" / "catalogs" / "jhliu_dr8_snrg30_grouped_ccf_test.csv"
  lines = src.read_text().splitlines()
  cat = tmp_path / "dr8.csv"
  cat.write_text("\n".join(lines[:5]) + "\n")  # its header and first four rows, as written
  header = lines[0].split(",")
  out = tmp_path / "o"
  s = scan.scan(catalog=str(cat), root=str(shared_data / "spectra"), out=out,
                model=str(tiny_bundles["separate"]), mode="plain", threshold=0.0, workers=0,
                progress=False, log=_quiet)
  assert s["n_scanned"] == 4
  t = pq.read_table(out / "predictions.parquet")
  want = {f"cat_{h.replace('.', '_')}": h for h in header}
  assert set(want) <= set(t.column_names)
  assert {"cat_GroupID", "cat_GroupSize", "cat_combined_snru_1", "cat_combined_obsid"} <= \
      set(t.column_names)
  rows = {int(r.split(",")[0]): r.split(",") for r in lines[1:5]}
  for r in t.select(["cat_combined_obsid", "cat_GroupID", "cat_combined_snru_1",
                     "cat_combined_file"]).to_pylist():
    line = rows[r["cat_combined_obsid"]]
    assert r["cat_GroupID"] == float(line[header.index("GroupID")])
    assert r["cat_combined_snru_1"] == float(line[header.index("combined_snru.1")])
    assert r["cat_combined_file"] == line[header.index("combined_file")]
  a = Table.read(out / "predictions.parquet")
  assert a["cat_combined_snru_1"].description == "catalog column combined_snru.1"
  assert a["cat_combined_ra_obs"].unit == "deg"
  c = Table.read(out / "candidates.fits")
  assert set(want) <= set(c.colnames)
