import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astrotl import models, surgery


def _init(model, shape):
  return model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                    jnp.zeros(shape))


def test_cnn1d_default_is_tan_et_al():
  model = models.get("cnn1d")
  v = _init(model, (2, 3700))
  _, inter = model.apply({"params": v["params"], "batch_stats": v["batch_stats"]},
                         jnp.zeros((2, 3700)), capture_intermediates=True)
  assert v["params"]["dense"]["kernel"].shape == (219 * 60, 1024)
  assert v["params"]["head"]["kernel"].shape == (1024, 7)
  kernels = [v["params"][f"block_{i}"]["conv"]["kernel"].shape for i in range(8)]
  assert [k[0] for k in kernels] == [1, 2, 3, 4, 5, 7, 8, 9]
  assert [k[2] for k in kernels] == [10, 10, 20, 30, 40, 50, 60, 60]
  assert inter["intermediates"]["block_7"]["__call__"][0].shape == (2, 219, 60)


def test_resnet1d_has_25_convs_and_12_blocks():
  v = _init(models.get("resnet1d", kernel_size=7), (2, 512))
  names = surgery.names(v["params"])
  main_convs = [n for n in names if n.endswith("kernel") and "conv" in n and "proj" not in n]
  assert len(main_convs) == 25
  assert sorted({n.split("/")[0] for n in names if n.startswith("block_")}) == sorted(
      f"block_{i}" for i in range(12))
  assert v["params"]["stem"]["conv"]["kernel"].shape[0] == 7
  assert v["params"]["head"]["kernel"].shape[-1] == 1


@pytest.mark.parametrize("name,shape,out", [
    ("cnn1d", (3, 3700), 7), ("resnet1d", (3, 800), 1), ("cnn2d", (3, 69, 69, 3), 2),
    ("alexnet", (3, 64, 64, 3), 2), ("mlp", (3, 16), 21)])
def test_forward_shapes_and_head_name(name, shape, out):
  model = models.get(name)
  v = _init(model, shape)
  assert "head" in v["params"]
  y = model.apply({k: v[k] for k in v if k != "perturbations"},
                  np.random.default_rng(0).normal(size=shape).astype(np.float32))
  assert y.shape == (3, out)
  assert np.all(np.isfinite(y))


def test_mlp_first_eps_configurable():
  m = models.get("mlp", first_eps=64.0)
  v = _init(m, (2, 16))
  x = np.ones((2, 16), np.float32)
  y64 = m.apply(v, x)
  y = models.get("mlp").apply(v, x)
  assert not np.allclose(y64, y)


def test_registry_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown model 'nope'"):
    models.get("nope")
  with pytest.raises(ValueError, match="no config field"):
    models.get("cnn1d", widht=3)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("length", [9, 10])
def test_cnn1d_max_pool_equals_flax_max_pool(stride, length):
  import flax.linen as nn
  from astrotl.models.cnn1d import max_pool2
  x = np.random.default_rng(0).normal(size=(2, length, 3)).astype(np.float32)
  np.testing.assert_array_equal(max_pool2(x, stride),
                                nn.max_pool(x, (2,), strides=(stride,), padding="VALID"))


def test_outputs_embedding_and_features():
  """output="embedding" is what the head sees; a cnn1d run from its feature map equals the
  full run (how two networks with one frozen trunk share it)."""
  x = np.random.default_rng(0).random((2, 3700)).astype(np.float32)
  m = models.get("cnn1d", num_classes=3, dense_width=16)
  v = m.init(jax.random.PRNGKey(0), x)
  f = m.apply(v, x, output="features")
  assert f.shape == (2, 219, 60)
  np.testing.assert_allclose(m.apply(v, f, from_features=True), m.apply(v, x), atol=1e-6)
  e = m.apply(v, x, output="embedding")
  head = v["params"]["head"]
  np.testing.assert_allclose(e @ head["kernel"] + head["bias"], m.apply(v, x), atol=1e-5)
  for name, xx, width in (("resnet1d", x, 128), ("mlp", x[:, :16], 256)):
    mm = models.get(name)
    vv = mm.init(jax.random.PRNGKey(0), xx)
    assert mm.apply(vv, xx, output="embedding").shape == (2, width)
  with pytest.raises(ValueError, match="output"):
    m.apply(v, x, output="nope")
