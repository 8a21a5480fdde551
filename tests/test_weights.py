"""Foreign weights: the general importer, UPSILoN-T, and Tan et al.'s PyTorch CNN."""

import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astrotl import models
from astrotl.io import weights as W
from astrotl.preprocess import features as F


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_layouts_and_collections():
  rng = np.random.default_rng(0)
  sd = {
      "lin.weight": rng.standard_normal((3, 5)), "lin.bias": rng.standard_normal(3),
      "c1.weight": rng.standard_normal((4, 2, 7)),
      "c2.weight": rng.standard_normal((4, 2, 3, 5)),
      "c3.weight": rng.standard_normal((4, 2, 1, 5)),
      "bn.weight": np.ones(4), "bn.bias": np.zeros(4), "bn.running_mean": np.arange(4.0),
      "bn.running_var": np.full(4, 2.0), "bn.num_batches_tracked": np.array(7),
  }
  rules = [("lin", "head"), ("c1", "block_0/conv"), ("c2", "block_1/conv"),
           ("c3", "block_2/conv", "conv2d_1xk"), (r"b(n)", r"block_0/b\1")]
  out = W.import_state_dict(sd, rules)
  p, s = out["params"], out["batch_stats"]
  np.testing.assert_array_equal(p["head"]["kernel"], sd["lin.weight"].T)
  np.testing.assert_array_equal(p["block_0"]["conv"]["kernel"], sd["c1.weight"].transpose(2, 1, 0))
  np.testing.assert_array_equal(p["block_1"]["conv"]["kernel"],
                                sd["c2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["block_2"]["conv"]["kernel"],
                                sd["c3.weight"][:, :, 0].transpose(2, 1, 0))
  np.testing.assert_array_equal(p["block_0"]["bn"]["scale"], np.ones(4))
  np.testing.assert_array_equal(s["block_0"]["bn"]["mean"], np.arange(4.0))
  np.testing.assert_array_equal(s["block_0"]["bn"]["var"], np.full(4, 2.0))
  assert "num_batches_tracked" not in str(out)


def test_every_problem_is_listed_at_once():
  sd = {"fc.weight": np.zeros((2, 3)), "fc.bias": np.zeros(2), "extra.weight": np.zeros((2, 2)),
        "other.bias": np.zeros(3), "conv.weight": np.zeros((2, 3, 4))}
  like = {"params": {"head": {"kernel": np.zeros((3, 4)), "bias": np.zeros(2)},
                     "gone": {"kernel": np.zeros((1, 1))}}}
  rules = [("fc", "head"), ("never", "x"), ("conv", "c", "conv2d")]
  with pytest.raises(W.WeightsError) as e:
    W.import_state_dict(sd, rules, like=like)
  msg = str(e.value)
  for text in ("extra.weight", "other.bias", "'never'", "conv.weight: conv2d needs a 4-D",
               "missing: ['params/gone/kernel']", "params/head/kernel: (3, 2) vs expected (3, 4)"):
    assert text in msg, (text, msg)
  with pytest.raises(W.WeightsError, match="unknown layout"):
    W.import_state_dict(sd, [("fc", "head", "linear")])
  with pytest.raises(W.WeightsError, match="written by both"):
    W.import_state_dict({"a.weight": np.zeros((2, 2)), "b.weight": np.zeros((2, 2))},
                        [("a|b", "head")])


def test_npz_without_pickle(tmp_path):
  np.savez(tmp_path / "ok.npz", **{"fc.weight": np.ones((2, 3))})
  assert W.load_npz(tmp_path / "ok.npz")["fc.weight"].shape == (2, 3)
  np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ValueError, match="allow_pickle"):
    W.load_npz(tmp_path / "obj.npz")
  with pytest.raises(FileNotFoundError, match="no such weights file"):
    W.load_npz(tmp_path / "none.npz")


@pytest.fixture(scope="module")
def upsilont_ref(shared_data):
  base = shared_data / "lightcurves"
  expected = json.loads((base / "upsilont_model" / "expected_outputs.json").read_text())
  feats = json.loads((base / "upsilon_samples" /
                      "expected_features_upsilon_1.2.10.json").read_text())
  return base, expected, feats


def _logits(variables, pre, features):
  model = models.get("mlp", num_classes=len(pre["classes"]), first_eps=W.UPSILONT_FIRST_EPS)
  x = F.upsilont_inputs(features, pre)
  return np.asarray(model.apply(variables, jnp.asarray(np.atleast_2d(x), jnp.float32)))


def test_bundled_upsilont_reproduces_reference(upsilont_ref):
  # The reference logits were computed in float64; this network runs in float32
  # (differences seen ~5e-6), hence atol 1e-4 on logits of size ~1-10.
  _, expected, feats = upsilont_ref
  variables, pre = W.upsilont()
  for name, entry in expected.items():
    logits = _logits(variables, pre, feats[name]["features"])[0]
    np.testing.assert_allclose(logits, entry["logits"], atol=1e-4)
    probs = softmax(logits)
    assert pre["classes"][int(np.argmax(probs))] == entry["argmax"]
  rrl = _logits(variables, pre, feats["lm0134l19756.time"]["features"])[0]
  assert abs(softmax(rrl)[pre["classes"].index("RRL_ab")] - 0.9621) < 1e-4


def test_upsilont_from_folder_matches_bundle(upsilont_ref, tmp_path):
  base, _, _ = upsilont_ref
  a, pa = W.upsilont()
  b, pb = W.upsilont(base / "upsilont_model")
  assert pa == pb
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  with pytest.raises(FileNotFoundError, match="upsilont_state_dict.npz: missing"):
    W.upsilont(tmp_path)
  shutil.copy(base / "upsilont_model" / "upsilont_state_dict.npz", tmp_path)
  bad = dict(pb)
  del bad["norm_std"]
  (tmp_path / "upsilont_preprocess.json").write_text(json.dumps(bad))
  with pytest.raises(W.WeightsError, match="upsilont_preprocess.json: field 'norm_std'"):
    W.upsilont(tmp_path)


def test_upsilont_on_our_own_features(upsilont_ref):
  # Our features differ from upsilon's only in the Fourier terms (< 4e-6, see
  # test_features); after scaling (std of phi21/phi31 ~2-3) inputs move < 1e-5, so the
  # probability may move ~1e-5: 1e-3 is a loose bound that still pins the class and value.
  base, _, _ = upsilont_ref
  a = np.loadtxt(base / "upsilon_samples" / "lm0134l19756.time", comments="#")
  keep = a[:, 1] < 99.999
  t, m, e = a[keep, 0], a[keep, 1], a[keep, 2]
  variables, pre = W.upsilont()
  single = softmax(_logits(variables, pre, F.extract(t, m, e))[0])
  batch = F.extract_batch(t[None], m[None], e[None])
  batched = softmax(_logits(variables, pre, {k: batch[k] for k in F.FEATURES})[0])
  i = pre["classes"].index("RRL_ab")
  for probs in (single, batched):
    assert int(np.argmax(probs)) == i
    assert abs(probs[i] - 0.9621) < 1e-3


def test_load_torch_needs_no_torch(monkeypatch, tmp_path):
  # .pt files are read by astrotl's own restricted unpickler: PyTorch only writes them here.
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, (1, 5)), torch.nn.BatchNorm2d(3))
  torch.save(net.state_dict(), tmp_path / "sd.pt")
  want = {k: v.numpy() for k, v in net.state_dict().items()}
  monkeypatch.setitem(sys.modules, "torch", None)
  got = W.load_torch(tmp_path / "sd.pt")
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].dtype == want[k].dtype
    np.testing.assert_array_equal(got[k], want[k])
  with pytest.raises(FileNotFoundError, match="no such weights file"):
    W.load_torch(tmp_path / "x.pt")


def _tan_cnn_model1(torch, num_classes, kernels, channels, strides):
  """Tan et al. (2023) CNN_Model1 as described: Conv2d 1 x k, BN2d, LeakyReLU, max-pool."""
  nn = torch.nn

  class CNNModel1(nn.Module):
    def __init__(self):
      super().__init__()
      cin = 1
      for i, (k, c, s) in enumerate(zip(kernels, channels, strides)):
        setattr(self, f"conv{i}", nn.Sequential(
            nn.Conv2d(cin, c, (1, k)), nn.BatchNorm2d(c), nn.LeakyReLU(0.01),
            nn.MaxPool2d((1, 2), stride=(1, s))))
        cin = c
      self.n = len(kernels)
      self.dense1 = nn.Sequential(nn.LeakyReLU(0.01), nn.Linear(60 * 219, 1024))
      self.dense2 = nn.Sequential(nn.Linear(1024, num_classes))

    def forward(self, x):
      x = x[:, None, None, :]
      for i in range(self.n):
        x = getattr(self, f"conv{i}")(x)
      return self.dense2(self.dense1(x.flatten(1)))

  return CNNModel1()


def test_tan_cnn1d_matches_pytorch(tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  cfg = models.get("cnn1d", num_classes=3)
  net = _tan_cnn_model1(torch, 3, cfg.kernels, cfg.channels, cfg.pool_strides)
  with torch.no_grad():   # non-trivial BatchNorm statistics and affine terms
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
  net.eval()
  torch.save(net.state_dict(), tmp_path / "tan.pt")
  state = W.load_torch(tmp_path / "tan.pt")
  variables = W.tan_cnn1d(state, num_classes=3)

  spectra = np.random.default_rng(1).uniform(0, 1, (4, 3700)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(spectra)).numpy()
  got = np.asarray(cfg.apply(variables, jnp.asarray(spectra)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

  with pytest.raises(W.WeightsError, match="head/kernel: \\(1024, 3\\) vs expected \\(1024, 5\\)"):
    W.tan_cnn1d(state, num_classes=5)
