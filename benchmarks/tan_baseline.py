"""The pipeline users run today: Tan et al.'s usage flow, as a timing baseline for the scan.

  python benchmarks/tan_baseline.py --files='/tmp/astrotl-mirror/*/*/*.fits.gz' --n=500

The flow (written here from its description, not copied): astropy opens each FITS file;
the first 3,700 flux pixels are min-max scaled and median-filtered with width 9; PyTorch
runs the multi-class network, then the binary one, on one spectrum at a time.  The
networks have the shipped model's sizes (channels, kernels, dense width, classes) and
random weights: the timing does not depend on the values.
"""

import glob
import time

from absl import app, flags
import numpy as np


def tan_net(torch, config, num_classes):
  """Tan et al.'s CNN_Model1 layout (Conv2d 1xk, BatchNorm2d, LeakyReLU, MaxPool (1, 2))
  with a cnn1d config's channels, kernels, strides and dense width."""
  nn = torch.nn
  chans = (1,) + tuple(config.get("channels", (10, 10, 20, 30, 40, 50, 60, 60)))
  kernels = tuple(config.get("kernels", (1, 2, 3, 4, 5, 7, 8, 9)))
  strides = tuple(config.get("pool_strides", (1, 2, 1, 2, 1, 2, 1, 2)))
  layers, width = [], 3700
  for i, (k, s) in enumerate(zip(kernels, strides)):
    layers += [nn.Conv2d(chans[i], chans[i + 1], kernel_size=(1, k)), nn.BatchNorm2d(chans[i + 1]),
               nn.LeakyReLU(), nn.MaxPool2d(kernel_size=(1, 2), stride=(1, s))]
    width = (width - k + 1 - 2) // s + 1
  dense = int(config.get("dense_width", 1024))
  net = nn.Sequential(*layers, nn.Flatten(), nn.LeakyReLU(), nn.Linear(chans[-1] * width, dense),
                      nn.Linear(dense, num_classes), nn.Softmax(dim=1))
  return net.eval()


def load_one(path):
  """astropy open, first 3700 flux pixels, min-max, median filter 9 (None if unreadable)."""
  import scipy.signal
  from astropy.io import fits
  try:
    with fits.open(path) as h:
      if h[0].data is not None:
        flux = np.asarray(h[0].data[0], np.float64)
      else:
        flux = np.asarray(h[1].data["FLUX"][0], np.float64)
  except Exception:
    return None
  flux = flux[:3700]
  span = flux.max() - flux.min()
  flux = (flux - flux.min()) / (span if span > 0 else 1.0)
  return scipy.signal.medfilt(flux, 9).astype(np.float32)


def run(paths, stage_configs):
  """Spectra per second of the whole flow over `paths` (and the time spent reading)."""
  import torch
  nets = [tan_net(torch, cfg, n) for cfg, n in stage_configs]
  t0 = time.perf_counter()
  read = 0.0
  n = 0
  with torch.no_grad():
    for p in paths:
      t = time.perf_counter()
      x = load_one(p)
      read += time.perf_counter() - t
      if x is None:
        continue
      xt = torch.from_numpy(x)[None, None, None, :]
      probs = nets[0](xt)
      if len(nets) > 1:
        nets[1](xt)
      n += 1
      del probs
  seconds = time.perf_counter() - t0
  return {"n": len(paths), "n_read": n, "seconds": seconds, "rate": len(paths) / seconds,
          "read_seconds": read, "torch_threads": torch.get_num_threads()}


def shipped_configs(model):
  """(config, classes) of each network of an astrotl Model."""
  return [(net.meta.get("config", {}), net.width) for net in model.networks.values()]


def main(argv):
  del argv
  from astrotl import bundle
  paths = sorted(glob.glob(flags.FLAGS.files, recursive=True))[:flags.FLAGS.n]
  model = bundle.load_model(flags.FLAGS.model)
  r = run(paths, shipped_configs(model))
  print(f"Tan-style flow: {r['rate']:.1f} spectra/s on {r['n']} files "
        f"({r['read_seconds'] / r['seconds']:.0%} of the time reading)")


if __name__ == "__main__":
  flags.DEFINE_string("files", None, "Glob of FITS files.")
  flags.DEFINE_integer("n", 500, "Files to time.")
  flags.DEFINE_string("model", "wd_two_stage", "Model whose network sizes to use.")
  app.run(main)
