"""A catalog read in blocks and resolved a chunk at a time (issue 25): the columns, types
and nulls of the whole-file reader; the files, duplicates, .fits/.fits.gz twins, refused
and missing rows of `inputs.from_catalog`, which stays the reference; the outputs of a
scan of those files; resume; and the LAMOST DR9/DR10 general catalogue's own columns."""

import gzip
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from astrotl import data, scan
from astrotl.io import catalog as io_catalog
from astrotl.io import catalog_blocks
from astrotl.scan import inputs, runner

DR1 = "catalogs/learninglamost_my_data3.csv.gz"          # filename column, .fits listed
DR8 = "catalogs/jhliu_dr8_snrg30_grouped_ccf_test.csv"  # archive paths, flat folder


def _quiet(*_):
  pass


def _lines(path):
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rt") as f:
    return f.read().splitlines()


def _fits(arrow_table, path):
  """A FITS table of an arrow table (nulls as astropy writes them: TNULL, NaN, '')."""
  from astropy.table import MaskedColumn, Table
  t = Table()
  for name, col in zip(arrow_table.column_names, arrow_table.columns):
    v = col.to_numpy(zero_copy_only=False)
    mask = col.is_null().to_numpy(zero_copy_only=False)
    if v.dtype == object:
      v = np.array(["" if x is None else str(x) for x in v], str)
    elif pa.types.is_integer(col.type):
      v = np.asarray(col.fill_null(0).to_numpy(), np.int64)
    t[name or "unnamed"] = MaskedColumn(v, mask=mask) if mask.any() else v
  t.write(path)
  return path


def _shifting_csv(path, n=3000):
  """Types a first block cannot know: integers then a float, empty then text, dates."""
  rows = ["id,mag,note,day,flag"]
  rows += [f"{i},{-9999 if i % 9 else 17},,2011-10-{1 + i % 28:02d},{i % 2}" for i in range(n)]
  rows += [f"{n},17.25,bright,2011-10-02,1"]
  path.write_text("\n".join(rows) + "\n")
  return path


def _same_as_read_arrow(path, **sizes):
  want = io_catalog.read_arrow(path)
  b = catalog_blocks.Blocks(path, **sizes)
  b.survey()
  got = pa.concat_tables([t for _, t in b.blocks(0)]) if b.n_rows else b.schema.empty_table()
  assert got.schema.equals(want.schema), (got.schema, want.schema)
  assert got.equals(want)
  assert b.n_rows == want.num_rows
  assert b.nulls == [c.null_count > 0 for c in want.columns]
  for a, z in [(0, 5), (3, 170), (170, 171), (150, 400), (0, 10**6), (5, 3)]:  # any order
    assert b.rows(a, z).equals(want.slice(a, max(0, min(z, want.num_rows) - a))), (a, z)


@pytest.mark.parametrize("kind", ["dr1_csv_gz", "dr8_csv", "dr1_fits", "dr1_fits_gz", "shifting"])
def test_blocks_read_what_read_arrow_reads(kind, shared_data, tmp_path):
  if kind == "shifting":
    path = _shifting_csv(tmp_path / "shifting.csv")
  elif kind.startswith("dr1_fits"):  # 400 real rows: astropy takes a while a block here
    head = io_catalog.read_arrow(shared_data / "spectra" / DR1).slice(0, 400)
    path = _fits(head, tmp_path / "dr1.fits")
    if kind.endswith("gz"):
      with open(path, "rb") as f, gzip.open(tmp_path / "dr1.fits.gz", "wb") as g:
        shutil.copyfileobj(f, g)
      path = tmp_path / "dr1.fits.gz"
  else:
    path = shared_data / "spectra" / (DR1 if kind.startswith("dr1") else DR8)
  _same_as_read_arrow(path, block_bytes=16384, block_rows=64)


def _with_repeats(shared_data, tmp_path, which, head=None):
  """A real catalog (its header and rows `head`, default all) plus rows that list again
  a file of an earlier row: the very row, its .fits.gz twin, a missing file twice, a
  path outside the root and a row with no path; the missing rows also sit in another
  chunk than their first listing."""
  lines = _lines(shared_data / "spectra" / (DR1 if which == "dr1" else DR8))
  header, rows = lines[0], lines[1:]
  rows = [rows[i] for i in head] if head is not None else rows
  col = header.split(",").index("filename" if which == "dr1" else "combined_file")

  def edit(line, f):
    parts = line.split(",")
    parts[col] = f(parts[col])
    return ",".join(parts)

  present = next(r for r in reversed(rows) if which == "dr8" or "B6212" in r)  # on disk
  extra = [present, edit(present, lambda p: p + ".gz" if p.endswith(".fits") else p[:-3]),
           edit(rows[0], lambda p: "nowhere/" + p.split("/")[-1].replace("spec-", "spec-9")),
           edit(rows[0], lambda p: "nowhere/" + p.split("/")[-1].replace("spec-", "spec-9")),
           edit(rows[1], lambda p: "../outside.fits"), edit(rows[2], lambda p: "")]
  path = tmp_path / f"{which}_repeats.csv"
  path.write_text("\n".join([header, *rows[:5], extra[2], *rows[5:], *extra]) + "\n")
  root = shared_data / "spectra" / ("lamost_dr1_pilot_B6212" if which == "dr1"
                                    else "lamost_dr8v1_image_format")
  return path, root


@pytest.mark.parametrize("which", ["dr1", "dr8"])
def test_a_streamed_catalog_lists_what_from_catalog_lists(which, shared_data, tmp_path):
  cat, root = _with_repeats(shared_data, tmp_path, which)
  want = inputs.from_catalog(str(cat), str(root), carry=True)
  assert len(want.duplicates) == 4 and len(want.refused) == 2 and want.missing > 2
  got = inputs.open_catalog(str(cat), str(root))
  assert got.n_items == want.carry.num_rows and got.first is not None
  size = 100
  starts = list(range(0, got.n_items, size))
  files, notes = {}, []
  for a in starts[::2] + starts[1::2][::-1]:  # chunk k is the same whatever came before
    b = min(a + size, got.n_items)
    files[a] = got.chunk_files(a, b)
  for a in starts:  # the carried columns of each file are its first row's
    f = files[a]
    before = sum(len(files[s]) for s in starts if s < a)
    assert got.carried_rows(f, a).equals(want.carry.take(want.catalog_rows(f, before)))
    notes.append(got.chunk_note(a))
  assert sum((files[a] for a in starts), []) == want.paths
  for i, note in enumerate(notes):
    got.tally(i, pa.table({"x": [1]}).replace_schema_metadata(
        {inputs.NOTE: json.dumps(note).encode()}))
  assert (got.n_inputs, got.n_duplicates, got.n_refused, got.missing) == \
      (len(want.paths), len(want.duplicates), len(want.refused), want.missing)
  assert got.carried() == want.carried()
  assert [got.has_nulls(i) for i in range(want.carry.num_columns)] == \
      [want.has_nulls(i) for i in range(want.carry.num_columns)]


def _table(out):
  t = pq.read_table(out / "predictions.parquet")
  t = t.take(np.argsort(t["file"].to_numpy(zero_copy_only=False)))
  return t.select([n for n in t.column_names if not n.endswith(".mask")])


def _errors(out):
  import csv
  with open(out / "errors.csv", newline="") as f:
    return {r["file"] for r in csv.DictReader(f)}


@pytest.mark.parametrize("which,head", [("dr1", list(range(2800, 2840))),
                                        ("dr8", list(range(60)))])
def test_a_streamed_scan_gives_the_outputs_of_a_scan_of_its_files(which, head, shared_data,
                                                                    tmp_path, tiny_bundles):
  """The catalog scan against the reference: the files from_catalog lists, scanned as
  --spectra, with each file's first catalog row beside it."""
  cat, root = _with_repeats(shared_data, tmp_path, which, head)
  want = inputs.from_catalog(str(cat), str(root), carry=True)
  args = dict(model=str(tiny_bundles["separate"]), mode="plain", threshold=0.0, workers=0,
              batch_size=8, chunk_size=16, progress=False, log=_quiet)
  s = scan.scan(catalog=str(cat), root=str(root), out=tmp_path / "cat", **args)
  present = [p for p in want.paths if os.path.exists(p)]
  ref = scan.scan(spectra=present, out=tmp_path / "ref", **args)
  got, exp = _table(tmp_path / "cat"), _table(tmp_path / "ref")
  assert got.column("file").to_pylist() == exp.column("file").to_pylist()
  for name in exp.column_names:  # the model's columns, the header's, the match
    a, b = got.column(name).to_pylist(), exp.column(name).to_pylist()
    if pa.types.is_floating(exp.schema.field(name).type):
      np.testing.assert_allclose(np.array(a, float), np.array(b, float), atol=1e-5)
    else:
      assert a == b, name
  rows = [want.rows[want.paths.index(f)] for f in got.column("file").to_pylist()]
  carried = want.carry.take(rows)
  for name, (i, _) in want.carried().items():  # the catalog's columns, as read whole
    assert got.column(name).to_pylist() == carried.column(i).to_pylist(), name
  assert _errors(tmp_path / "cat") == set(want.paths) - set(present) | _errors(tmp_path / "ref")
  assert (s["n_inputs"], s["n_duplicate_rows"], s["n_refused_rows"], s["n_missing_files"]) \
      == (len(want.paths), len(want.duplicates), len(want.refused), want.missing)
  assert s["n_scanned"] + s["n_errors"] == s["n_inputs"] and ref["n_scanned"] == s["n_scanned"]


def test_an_interrupted_catalog_scan_resumes_to_the_same_outputs(shared_data, tmp_path,
                                                                   tiny_bundles, monkeypatch):
  cat, root = _with_repeats(shared_data, tmp_path, "dr8", list(range(40)))
  args = dict(catalog=str(cat), root=str(root), model=str(tiny_bundles["shared"]), workers=0,
              batch_size=8, chunk_size=8, progress=False, log=_quiet)
  whole = scan.scan(out=tmp_path / "whole", **args)
  put, calls = runner.Writer.put, []

  def stop_at_the_third(self, *a, **k):
    calls.append(1)
    if len(calls) == 3:
      self.close()  # the two chunks before are saved
      raise KeyboardInterrupt
    return put(self, *a, **k)

  monkeypatch.setattr(runner.Writer, "put", stop_at_the_third)
  with pytest.raises(KeyboardInterrupt):
    scan.scan(out=tmp_path / "o", **args)
  monkeypatch.setattr(runner.Writer, "put", put)
  lines = []
  again = scan.scan(out=tmp_path / "o", **dict(args, log=lines.append))
  assert any("16 of 47 inputs already done" in l for l in lines), lines
  for key in ("n_inputs", "n_scanned", "n_errors", "n_duplicate_rows", "n_refused_rows",
              "n_missing_files"):
    assert again[key] == whole[key], key
  assert _table(tmp_path / "o").equals(_table(tmp_path / "whole"))
  # another catalog into the same folder is refused, not mixed in
  cat.write_text(cat.read_text() + _lines(cat)[1] + "\n")
  with pytest.raises(scan.OutputError, match="different inputs_sha256"):
    scan.scan(out=tmp_path / "o", **args)


def _general(tmp_path, kind):
  """The bundled general-catalogue sample as CSV, gzipped CSV, FITS, FITS.gz or DR10 CSV."""
  src = data.sample_dir("spectra") / "lrs_general_catalogue.csv"
  if kind == "csv":
    return src
  if kind == "csv.gz":
    with open(src, "rb") as f, gzip.open(tmp_path / "cat.csv.gz", "wb") as g:
      shutil.copyfileobj(f, g)
    return tmp_path / "cat.csv.gz"
  if kind == "dr10":  # another release's columns are carried just as well
    lines = _lines(src)
    out = [lines[0].replace("obsid,", "obsid,gp_id,", 1)]
    out += [l.replace(",", f",{k % 7},", 1) for k, l in enumerate(lines[1:])]
    (tmp_path / "dr10.csv").write_text("\n".join(out) + "\n")
    return tmp_path / "dr10.csv"
  path = _fits(io_catalog.read_arrow(src), tmp_path / "cat.fits")
  if kind == "fits.gz":
    with open(path, "rb") as f, gzip.open(tmp_path / "cat.fits.gz", "wb") as g:
      shutil.copyfileobj(f, g)
    return tmp_path / "cat.fits.gz"
  return path


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "fits", "fits.gz", "dr10"])
def test_the_lamost_general_catalogue_in_its_own_columns(kind, tmp_path):
  """The sample in the DR9 LRS general catalogue's columns (no path column: each path is
  built from obsdate/planid/lmjd/spid/fiberid, and found by name under the sample)."""
  path = _general(tmp_path, kind)
  names = catalog_blocks.Blocks(path).names
  want = list(io_catalog.LAMOST_GENERAL_COLUMNS)
  assert names == (want[:1] + ["gp_id"] + want[1:] if kind == "dr10" else want)
  found = inputs.open_catalog(str(path), str(data.sample_dir("spectra")))
  files = found.chunk_files(0, found.n_items)
  assert found.n_items == len(files) == 59 and found.chunk_note(0)["missing"] == 0
  assert sorted(files) == sorted(str(r["path"]) for r in data.sample_index("spectra"))
  assert set(found.carried()) == {f"cat_{n}" for n in names}
  _same_as_read_arrow(path, block_bytes=2048, block_rows=16)


def test_a_scan_of_the_general_catalogue_carries_its_columns(tmp_path, tiny_bundles):
  path = _general(tmp_path, "csv")
  s = scan.scan(catalog=str(path), root=str(data.sample_dir("spectra")), out=tmp_path / "o",
                model=str(tiny_bundles["shared"]), workers=0, progress=False, log=_quiet)
  assert (s["n_inputs"], s["n_scanned"], s["n_missing_files"]) == (59, 59, 0)
  t = _table(tmp_path / "o")
  assert {f"cat_{n}" for n in io_catalog.LAMOST_GENERAL_COLUMNS} <= set(t.column_names)
  header = t.column("designation").to_pylist()  # from each file's header
  assert t.column("cat_designation").to_pylist() == [d.removeprefix("LAMOST ") for d in header]
  obsid = t.column("obsid").to_pylist()
  assert t.column("cat_obsid").to_pylist() == obsid and obsid.count(None) == 50  # pilot files
  assert t.schema.field("cat_gaia_source_id").type == pa.string()  # empty in the sample
