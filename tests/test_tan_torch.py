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
