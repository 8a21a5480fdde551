"""Scanning with Tan et al.'s published PyTorch networks (whole pickled modules)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from astrotl import bundle, data  # noqa: E402
from astrotl import io as aio  # noqa: E402
from astrotl.io import weights  # noqa: E402
from astrotl.preprocess import spectra  # noqa: E402

nn = torch.nn


def _block(cin, cout, k, s):
  return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=(1, k), stride=1), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(), nn.MaxPool2d(stride=s, kernel_size=(1, 2)))


class CNN_Model1(nn.Module):  # noqa: N801 -- the published class name, pickled by name
  """Tan et al. 2023's network, layer for layer, as their scripts build it."""

  def __init__(self, num_class):
    super().__init__()
    chans, ks = (1, 10, 10, 20, 30, 40, 50, 60, 60), (1, 2, 3, 4, 5, 7, 8, 9)
    for i in range(8):
      setattr(self, f"conv{i}", _block(chans[i], chans[i + 1], ks[i], 1 if i % 2 == 0 else 2))
    self.dense1 = nn.Sequential(nn.LeakyReLU(), nn.Linear(60 * 1 * 219, 1024))
    self.dense2 = nn.Sequential(nn.Linear(1024, num_class))
    self.sf = nn.Sequential(nn.Softmax(dim=1))

  def forward(self, x):
    for i in range(8):
      x = getattr(self, f"conv{i}")(x)
    return self.sf(self.dense2(self.dense1(x.view(-1, 60 * 1 * 219))))


def _net(num_class, seed):
  torch.manual_seed(seed)
  net = CNN_Model1(num_class)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.3, 0.3)
        m.running_var.uniform_(0.5, 2.0)
  return net.eval()


def test_whole_module_pickles_load_inertly(tmp_path):
  net = _net(7, 0)
  torch.save(net, tmp_path / "7_cnn_model.pt")  # how the authors saved theirs
  got = weights.load_torch(tmp_path / "7_cnn_model.pt")
  want = net.state_dict()
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k].numpy())


def test_scan_with_tan_weights_equals_pytorch(tmp_path):
  p7, p2 = tmp_path / "7_cnn_model.pt", tmp_path / "2_cnn_model.pt"
  net7, net2 = _net(7, 1), _net(2, 2)
  torch.save(net7, p7)
  torch.save(net2, p2)
  model = bundle.load_model(f"torch:{p7},{p2}")
  files = [str(r["path"]) for r in data.sample_index("spectra")[:4]]
  got = model.predict(files)
  xs = []
  for f in files:
    s = aio.read(f)
    flux, _, bad = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    xs.append(spectra.tan_normalise(flux, bad))
  x = torch.from_numpy(np.stack(xs).astype(np.float32))[:, None, None, :]
  with torch.no_grad():
    want7, want2 = net7(x).numpy(), net2(x).numpy()[:, 1]
  p1 = np.stack([got[f"p1_{c}"] for c in model.classes], -1)
  np.testing.assert_allclose(p1, want7, atol=1e-4)
  np.testing.assert_allclose(got["p_wd"], want2, atol=1e-4)


# --- benchmarks/torch_flow.py: the PyTorch user's flow the scan is compared with ---------

def _torch_flow():
  import pathlib
  import sys
  here = str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks")
  sys.path.insert(0, here)
  try:
    import torch_flow  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(here)
  return torch_flow


def _one_file_per_layout():
  rows = data.sample_index("spectra")
  files = {}
  for layout in ("image-subcontinuum", "image-wavelength", "coadd-table"):  # DR1, DR6, DR9
    files[layout] = next(str(r["path"]) for r in rows if r.get("layout") == layout)
  return list(files.values())


@pytest.fixture(scope="module")
def wd_model():
  return bundle.load_model("wd_two_stage")


def test_torch_flow_inputs_and_networks_match_the_bundle(wd_model):
  import jax
  tf = _torch_flow()
  model = wd_model
  nets = list(model.networks.values())
  files = _one_file_per_layout()
  # The Dataset's astropy + numpy/scipy input is the bundle's input, as astrotl makes it
  # (spectra.network_input, the function the device runs, here with numpy).
  want = []
  for f in files:
    s = aio.read(f)
    flux, ivar, bad = spectra.resample(np.log10(s.wavelength), s.flux, s.ivar, s.mask)
    want.append(spectra.network_input(flux, ivar, bad, model.input))
  want = np.stack(want)
  ds = tf.Spectra(files)
  items = [ds[i] for i in range(len(ds))]
  assert all(ok for _, ok in items)
  x = torch.stack([x for x, _ in items])
  np.testing.assert_allclose(x.numpy(), want, atol=1e-3)
  # Every kind: one (B, classes) output per network; Conv2d and two Conv1d networks have
  # the same parameters, the shared trunk one trunk fewer.
  sizes = {}
  for kind in ("conv2d", "conv1d_two", "conv1d_shared"):
    module = tf.build(kind, model)
    with torch.inference_mode():
      outs = module(x)
    assert [tuple(o.shape) for o in outs] == [(3, net.width) for net in nets]
    for o in outs:
      np.testing.assert_allclose(o.sum(-1).numpy(), 1.0, atol=1e-5)
    sizes[kind] = sum(p.numel() for p in module.parameters())
  trunk = sum(p.numel() for p in tf.conv1d_trunk(nets[0].model, 3700)[0].parameters())
  assert sizes["conv2d"] == sizes["conv1d_two"] == sizes["conv1d_shared"] + trunk
  assert tf.describe(model)["bundle_shares_trunk"]
  # With the bundle's weights, the Conv1d networks give the bundle's probabilities.
  probs = jax.jit(lambda x: [net.finish(net.model.apply(net.variables, x)) for net in nets])
  astrotl_p = [np.asarray(p) for p in probs(want)]
  for shared in (True, False):
    module = tf.copy_weights(tf.Conv1dNets(nets, shared=shared).eval(), nets)
    with torch.inference_mode():
      outs = module(torch.from_numpy(want))
    for o, p in zip(outs, astrotl_p):
      np.testing.assert_allclose(o.numpy(), p, atol=1e-5)


def test_torch_flow_runs_end_to_end(wd_model):
  tf = _torch_flow()
  files = _one_file_per_layout() + ["/nonexistent/spec.fits.gz"]
  r = tf.run_loader(files, tf.build("conv1d_shared", wd_model), batch_size=2, workers=0)
  assert (r["n"], r["n_read"]) == (4, 3)
  r = tf.run(files[:2], wd_model, ["loader", "net_conv2d_single"], batch_size=2, workers=0,
             seconds=0.01, log=lambda _: None)
  assert sorted(r) == ["loader", "net_conv2d_single"]
  assert all(v["rate"] > 0 for v in r.values())
