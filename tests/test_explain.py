import jax
import numpy as np
import pytest

from astrotl import explain, models, train
from astrotl.preprocess.spectra import wavelength_grid

SMALL = {
    "resnet1d": dict(widths=(4, 8), blocks_per_stage=1, kernel_size=5),
    "cnn1d": dict(channels=(4, 4, 8, 8), kernels=(1, 3, 5, 7), pool_strides=(1, 2, 1, 2),
                  dense_width=16, num_classes=3),
}


def _model(name, length=300, **cfg):
  model = models.get(name, **{**SMALL[name], **cfg})
  x = np.zeros((1, length), np.float32)
  return model, train.init_variables(model, x, seed=0)


def _upsample(m, length):
  src = (np.arange(m.shape[-1]) + 0.5) * length / m.shape[-1] - 0.5
  return np.stack([np.interp(np.arange(length), src, row) for row in m])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_cam_shape_range_and_finiteness(name):
  model, v = _model(name)
  x = np.random.default_rng(0).normal(size=(7, 300)).astype(np.float32)
  c = explain.cam(model, v, x, batch_size=4)  # two chunks, the last one padded
  assert c.shape == (7, 300) and c.dtype == np.float32
  assert np.isfinite(c).all() and c.min() >= 0
  np.testing.assert_allclose(c.max(1), 1.0, rtol=1e-5)
  # chunking and padding do not change any spectrum's map
  np.testing.assert_allclose(explain.cam(model, v, x[3:4]), c[3:4], rtol=1e-4, atol=1e-6)


def test_cam_of_global_pool_and_linear_head_is_weighted_feature_map():
  # For features -> mean over length -> Dense, d out / d A[l, c] = W[c] / L', so Grad-CAM
  # reduces to relu(A @ W): an independent check of the gradients and the upsampling.
  model, v = _model("resnet1d", length=256)
  x = np.random.default_rng(1).normal(size=(3, 256)).astype(np.float32)
  _, inter = model.apply(v, x, capture_intermediates=True)
  a = np.asarray(inter["intermediates"]["block_1"]["__call__"][0])
  w = np.asarray(v["params"]["head"]["kernel"])[:, 0]
  for sign in (1, -1):
    want = _upsample(np.maximum(sign * (a @ w), 0), 256)
    want /= want.max(1, keepdims=True)
    np.testing.assert_allclose(explain.cam(model, v, x, sign=sign), want, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_cam_stays_inside_the_only_nonzero_window(name):
  # No conv biases matter at init (BN mean 0, biases 0), so features are zero wherever
  # the receptive field sees only zeros: all of the map must sit on the window.
  model, v = _model(name, length=400)
  x = np.zeros((4, 400), np.float32)
  x[:, 250:290] = np.random.default_rng(2).normal(size=(4, 40)) + 2.0
  c = explain.cam(model, v, x)
  assert np.all(c.sum(1) > 0)
  inside = c[:, 220:320].sum(1) / c.sum(1)
  assert np.all(inside > 0.97), inside


def test_classification_target_defaults_to_argmax_and_selects_the_class():
  model, v = _model("cnn1d")
  x = np.random.default_rng(3).normal(size=(6, 300)).astype(np.float32)
  pred = np.asarray(model.apply(v, x)).argmax(-1)
  np.testing.assert_allclose(explain.cam(model, v, x), explain.cam(model, v, x, target=pred))
  other = (pred + 1) % 3
  assert not np.allclose(explain.cam(model, v, x, target=other), explain.cam(model, v, x))


def test_clear_errors():
  model, v = _model("resnet1d")
  x = np.zeros((2, 300), np.float32)
  with pytest.raises(ValueError, match="target must be None for a regression"):
    explain.cam(model, v, x, target=0)
  with pytest.raises(ValueError, match="sign must be"):
    explain.cam(model, v, x, sign=0.5)
  with pytest.raises(ValueError, match=r"flux must be \(batch, length\)"):
    explain.cam(model, v, x[0])
  cls, cv = _model("cnn1d")
  with pytest.raises(ValueError, match="target must be < the 3 classes"):
    explain.cam(cls, cv, x, target=3)
  mlp = models.get("mlp", num_classes=2)
  mv = train.init_variables(mlp, np.zeros((1, 16), np.float32), seed=0)
  with pytest.raises(ValueError, match="does not sow `intermediates/features`"):
    explain.cam(mlp, mv, np.zeros((2, 16), np.float32))


def test_regression_fit_on_eight_devices_then_cam_finds_the_signal_window(tmp_path):
  # Only a Gaussian absorption-like bump at pixel 112 carries the label (its depth);
  # everything else is noise.  A few logcosh steps must learn it and the map must find it.
  assert len(jax.devices()) == 8
  rng = np.random.default_rng(0)
  length, centre = 256, 112
  bump = np.exp(-0.5 * ((np.arange(length) - centre) / 6.0) ** 2)

  def make(n):
    y = rng.uniform(0, 3, n).astype(np.float32)
    return (rng.normal(0, 0.5, (n, length)) + y[:, None] * bump).astype(np.float32), y

  (xt, yt), (xv, yv) = make(256), make(64)
  cfg = dict(model="resnet1d", model_config=dict(widths=(8, 16), blocks_per_stage=1, kernel_size=5),
             loss="logcosh", batch_size=32,
             num_steps=60, learning_rate=3e-3, progress=False, eval_every=20,
             checkpoint_every=60)
  result = train.fit(cfg, tmp_path, {"train": {"x": xt, "y": yt},
                                     "validation": {"x": xv, "y": yv}})
  assert result.best["val_mae"] < 0.6  # predicting the mean gives 0.75
  model = train.build_model(train.merged_config(cfg))
  c = explain.cam(model, result.best_variables, xv)
  strong = yv > 1.5
  window = slice(centre - 32, centre + 32)  # a quarter of the pixels
  assert np.median(c[strong, window].sum(1) / c[strong].sum(1)) > 0.5
  assert np.all(np.abs(c[strong].argmax(1) - centre) <= 32)


def test_line_contrast_and_plot(tmp_path):
  wave = wavelength_grid()
  c = np.exp(-0.5 * ((wave - explain.LINES["H$\\alpha$"]) / 10.0) ** 2)
  contrast = explain.line_contrast(wave, c)
  assert contrast["H$\\alpha$"] > 10
  assert max(v for k, v in contrast.items() if k != "H$\\alpha$") < 0.1
  flux = 1.0 - 0.5 * c
  path = tmp_path / "cam.png"
  explain.plot_cam(wave, flux, c, path, title="test")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
  with pytest.raises(ValueError, match="same length"):
    explain.plot_cam(wave, flux[:-1], c, path)
