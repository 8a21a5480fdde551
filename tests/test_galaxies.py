import io
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from astrotl import checkpoint, models, parallel, train
from astrotl.io import images as io_images
from astrotl.preprocess import images as prep

TINY_CNN = dict(features=(4, 8, 8, 8), dense_width=16)


# --- train.fit augmentation hook ---------------------------------------------------------

def _one_step_loss(augment, x, y):
  # The MLP compiles in a fraction of a CNN's time; the hook does not care what x is.
  model = models.get("mlp", num_classes=2)
  mesh = parallel.make_mesh(jax.devices()[:1])
  v = train.init_variables(model, x[:1], seed=0)
  tx = optax.sgd(0.1)
  state = train.TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"],
                           tx.init(v["params"]), jax.random.PRNGKey(3))
  step = train.make_train_step(model, tx, mesh, augment=augment)
  batch = parallel.shard_batch({"x": x, "y": y, "valid": np.ones(len(x), bool)}, mesh, len(x))
  _, m = step(parallel.replicate(state, mesh), batch)
  return float(m["loss"])


def test_train_step_applies_augment_to_the_batch():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 16)).astype(np.float32)
  y = rng.integers(0, 2, 8)
  # if the hook were ignored, the first loss would be the loss on x, not on reversed x
  reversed_loss = _one_step_loss(lambda r, b: b[:, ::-1], x, y)
  assert reversed_loss == pytest.approx(_one_step_loss(None, x[:, ::-1].copy(), y), rel=1e-6)
  assert not np.allclose(x, x[:, ::-1])


# --- augmentation --------------------------------------------------------------------------

def test_augment_keeps_shape_and_pixel_values_and_varies_per_image():
  x = np.arange(16 * 5 * 5 * 2, dtype=np.float32).reshape(16, 5, 5, 2)
  out = np.asarray(jax.jit(prep.augment)(jax.random.PRNGKey(0), x))
  assert out.shape == x.shape and out.dtype == x.dtype
  for a, b in zip(out, x):
    np.testing.assert_array_equal(np.sort(a, axis=None), np.sort(b, axis=None))
    # each output is one of the 8 dihedral transforms of its own input
    variants = [np.rot90(f, k) for f in (b, b[:, ::-1]) for k in range(4)]
    assert any(np.array_equal(a, v) for v in variants)
  assert sum(not np.array_equal(a, b) for a, b in zip(out, x)) >= 8
  with pytest.raises(ValueError, match="square"):
    prep.augment(jax.random.PRNGKey(0), np.zeros((2, 4, 6)))


def test_scaling_and_resize():
  x = np.array([[[0, 255], [51, 102]]], np.uint8)
  np.testing.assert_allclose(prep.scale_uint8(x), x / 255.0)
  s = np.asarray(prep.arcsinh_scale(np.array([[[0.0, 1.0], [4.0, 10.0]]])))
  assert s.max() == pytest.approx(1.0) and s.min() == 0.0
  assert np.all(np.diff(s.ravel()) > 0)  # monotonic
  out = prep.to_model_input(np.zeros((3, 150, 150), np.uint8), 32, crop=100)
  assert out.shape == (3, 32, 32, 1) and out.dtype == np.float32


# --- readers -------------------------------------------------------------------------------

def _jpeg_bytes(shape=(12, 12, 3)):
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.full(shape, 100, np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def test_bad_images_raise_errors_naming_the_file(tmp_path):
  good = tmp_path / "good.jpg"
  good.write_bytes(_jpeg_bytes())
  assert io_images.read_image(good, shape=(12, 12, 3)).dtype == np.uint8
  with pytest.raises(io_images.ImageError, match=r"good\.jpg: image has shape \(12, 12, 3\), "
                     r"expected \(64, 64, 3\)"):
    io_images.read_image(good, shape=(64, 64, 3))
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(_jpeg_bytes()[:200])  # truncated mid-scan
  with pytest.raises(io_images.ImageError, match=r"corrupt\.jpg: not a readable PNG/JPEG"):
    io_images.read_image(corrupt)
  with pytest.raises(io_images.ImageError, match=r"missing\.png: cannot read"):
    io_images.read_image(tmp_path / "missing.png")
  with pytest.raises(io_images.ImageError, match=r"x\.fits: not a readable FITS"):
    (tmp_path / "x.fits").write_bytes(b"SIMPLE  =  nonsense")
    io_images.read_image(tmp_path / "x.fits")
  archive = tmp_path / "cutouts.zip"
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("a.jpg", _jpeg_bytes())
    z.writestr("b.jpg", b"not a jpeg")
  with pytest.raises(io_images.ImageError, match=r"cutouts\.zip:b\.jpg: not a readable"):
    list(io_images.read_zip_images(archive, ["a.jpg", "b.jpg"]))


def test_fits_cube_and_npy(tmp_path):
  from astropy.io import fits
  cube = np.random.default_rng(0).random((3, 20, 20)).astype(">f4")
  fits.writeto(tmp_path / "c.fits", cube)
  np.testing.assert_array_equal(io_images.read_image(tmp_path / "c.fits"), np.moveaxis(cube, 0, -1))
  np.save(tmp_path / "a.npy", np.ones((8, 8), np.uint8))
  assert io_images.read_image(tmp_path / "a.npy", shape=(8, 8)).sum() == 64


# --- TFDS builder --------------------------------------------------------------------------

@pytest.mark.parametrize("config,key", [("gz1_early_late_64px", "objid"),
                                        ("decals_rings_64px", "iauname")])
def test_builder_round_trips_the_64px_arrays(shared_data, tmp_path, config, key):
  import tensorflow_datasets as tfds
  from astrotl.datasets.galaxy_morphology import Builder, split_of

  manual = shared_data / "galaxies"
  builder = Builder(config=config, data_dir=str(tmp_path))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  src = np.load(manual / "mini" / f"{config.replace('gz1', 'sdss_gz1')}.npz")
  ids = src[key].astype(str)
  by_id = {i: n for n, i in enumerate(ids)}
  seen = 0
  for split in ("train", "test"):
    source = tfds.data_source(f"galaxy_morphology/{config}", split=split, data_dir=str(tmp_path))
    records = source.__getitems__(list(range(len(source))))
    for r in records:
      object_id = r["id"].decode() if isinstance(r["id"], bytes) else str(r["id"])
      n = by_id[object_id]
      np.testing.assert_array_equal(r["image"], src["images"][n])
      assert r["image"].dtype == np.uint8 and r["label"] == src["labels"][n]
      assert split_of(object_id) == split
    seen += len(records)
  assert seen == len(ids)


def test_builder_names_a_missing_manual_dir(tmp_path):
  import tensorflow_datasets as tfds
  from astrotl.datasets.galaxy_morphology import Builder

  builder = Builder(config="first", data_dir=str(tmp_path / "out"))
  with pytest.raises(FileNotFoundError, match=r"radio_fr/frdeep_first\.npz: not found"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path)))


# --- fine-tuning through train.fit on 8 devices -------------------------------------------

def test_finetune_from_checkpoint_on_eight_devices(shared_data, tmp_path):
  d = np.load(shared_data / "galaxies" / "mini" / "sdss_gz1_early_late_64px.npz")
  x = prep.to_model_input(d["images"][:32], 16)
  y = d["labels"][:32].astype(np.int32)
  cfg = dict(model="cnn2d", model_config=dict(TINY_CNN, num_classes=2), batch_size=16,
             num_steps=2, log_every=1, checkpoint_every=2, progress=False)
  # A source checkpoint on disk, written without a training run to keep the test fast.
  model = train.build_model(train.merged_config(cfg))
  source = {"params": train.init_variables(model, x[:1], seed=7)["params"]}
  ckpt = checkpoint.Checkpointer(tmp_path / "src")
  ckpt.save(5, source)
  ckpt.close()
  ft_cfg = dict(cfg, transfer={"init_from": str(tmp_path / "src"), "n_blocks": 1})
  ft = train.fit(ft_cfg, tmp_path / "ft", {"train": {"x": x, "y": y}}, mesh=parallel.make_mesh(),
                 augment=prep.augmenter())
  assert len(jax.devices()) == 8 and int(ft.state.step) == 2
  got, want = ft.best_variables["params"], source["params"]
  # n_blocks=1: the top module below the head trains, the conv blocks stay as loaded
  for i in range(4):
    np.testing.assert_array_equal(got[f"block_{i}"]["conv"]["kernel"],
                                  want[f"block_{i}"]["conv"]["kernel"])
  assert not np.array_equal(got["dense"]["kernel"], want["dense"]["kernel"])
  assert np.all(np.isfinite([h["loss"] for h in ft.history]))
