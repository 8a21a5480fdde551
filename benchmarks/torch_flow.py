"""The flow a competent PyTorch user would write for the same search: a stronger
baseline for the scan than Tan et al.'s one-spectrum-at-a-time loop (tan_baseline.py).

  python benchmarks/torch_flow.py --files='/tmp/astrotl-mirror/*/*/*.fits.gz' --n=2000

(benchmarks/scan_throughput.py runs it as its own process on the scan's files.)

Reading: a torch Dataset whose items are read with astropy and made into the bundle's
network input (its "tan_robust" input, written here in numpy/scipy from its definition in
astrotl.preprocess.spectra: LAMOST masks, linear resampling onto the common log grid,
bad pixels filled from good neighbours, the first 3,700 pixels median-filtered (width 9),
then min-max), served by a DataLoader with one worker per core and batches of 256.

Networks: the shipped bundle's sizes (channels, kernels, pool strides, dense width,
classes), random weights (the timing does not depend on them), eval mode,
torch.inference_mode(), torch.set_num_threads(cores):
  conv2d        Tan et al.'s Conv2d(1, k) layout (tan_baseline.tan_net), both networks;
  conv1d_two    the same with Conv1d/BatchNorm1d/MaxPool1d, both networks in full;
  conv1d_shared Conv1d, stage 2 on stage 1's trunk (the bundle shares it), so the trunk
                runs once per batch and each network adds only its dense layers.

Flows (FLOWS): "loader" (the DataLoader alone), "conv2d_batched", "conv1d_two",
"conv1d_shared" (DataLoader reading + networks, the command's files start to end, worker
start-up included), and networks only on tensors preloaded in memory: "net_conv2d_single"
(one spectrum at a time, as Tan's flow), "net_conv2d_batched", "net_conv1d_two",
"net_conv1d_shared".  Unlike astrotl's "network only", which includes resampling and
normalisation on the device, these start from the finished inputs.
"""

import glob
import os
import pathlib
import sys
import time

from astropy.io import fits
import numpy as np
import scipy.ndimage
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).parent))
try:  # one tan_net, shared with Tan's flow
  import tan_baseline  # noqa: E402  pylint: disable=g-import-not-at-top
finally:
  sys.path.pop(0)

LOGLAM0, DLOGLAM = 3.5682, 1e-4  # astrotl.preprocess.spectra's common grid
LOADER_FLOWS = ("loader", "conv2d_batched", "conv1d_two", "conv1d_shared")
NET_FLOWS = ("net_conv2d_single", "net_conv2d_batched", "net_conv1d_two", "net_conv1d_shared")
FLOWS = LOADER_FLOWS + NET_FLOWS


def cores():
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# --- reading ----------------------------------------------------------------------------

def read_lamost(path):
  """(wavelength float64, flux, ivar, bad) of a LAMOST LRS file, with astropy.

  Layouts: DR9+ (COADD table), DR2-DR8 (image rows flux, ivar, wavelength, andmask), DR1
  (image rows flux, ivar, subcontinuum, andmask; wavelength from COEFF0/COEFF1).  Bad:
  flux or ivar not finite, ivar <= 0, or ANDMASK set."""
  with fits.open(path, memmap=False) as h:
    if h[0].data is None:
      row = h[1].data[0]
      flux, ivar, wave, andmask = row["FLUX"], row["IVAR"], row["WAVELENGTH"], row["ANDMASK"]
    else:
      image, header = h[0].data, h[0].header
      flux, ivar, andmask = image[0], image[1], image[3]
      if "wave" in str(header.get("EXTEN0", "")).lower():
        wave = image[2]
      else:
        wave = 10.0 ** (header["COEFF0"] + header["COEFF1"] * np.arange(image.shape[1]))
    flux, ivar = np.asarray(flux, np.float32), np.asarray(ivar, np.float32)
    wave = np.asarray(wave, np.float64)
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | ~(ivar > 0) | (np.asarray(andmask) != 0)
  return wave, flux, ivar, bad


def tan_robust(wave, flux, bad, pixels=3700, width=9):
  """The bundle's "tan_robust" input of one spectrum, float32 (pixels,)."""
  # Linear interpolation onto the grid pixels; a grid pixel is bad outside the data or
  # next to a bad input pixel it takes weight from.  Positions rounded to float32 as
  # astrotl's are: a spectrum already on the grid (DR1) then lands on whole pixels, where
  # float64 leaves 379.99999999 and a bad neighbour would mask pixel 380.
  u = ((np.log10(wave) - LOGLAM0) / DLOGLAM).astype(np.float32)
  n = len(u)
  grid = np.arange(pixels, dtype=np.float64)
  pos = np.interp(grid, u, np.arange(n, dtype=np.float64), left=-1.0, right=-1.0)
  lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
  hi = np.minimum(lo + 1, n - 1)
  w = np.clip(pos - lo, 0.0, 1.0)
  f = np.where(bad, 0.0, flux)
  x = (1 - w) * f[lo] + w * f[hi]
  out_bad = (pos < 0) | (bad[lo] & (w < 1)) | (bad[hi] & (w > 0))
  good = np.flatnonzero(~out_bad)
  if good.size == 0:
    return np.zeros(pixels, np.float32)
  x = np.interp(grid, good, x[good])  # fill bad pixels (ends take the nearest good value)
  x = scipy.ndimage.median_filter(x, size=width, mode="reflect")  # before min-max: robust
  span = x.max() - x.min()
  return ((x - x.min()) / span if span > 0 else np.zeros(pixels)).astype(np.float32)


class Spectra(torch.utils.data.Dataset):
  """Network inputs of FITS files, read with astropy; items (x, ok), x zeros if unreadable."""

  def __init__(self, paths, pixels=3700):
    self.paths, self.pixels = list(paths), pixels

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    try:
      wave, flux, _, bad = read_lamost(self.paths[i])
      return torch.from_numpy(tan_robust(wave, flux, bad, self.pixels)), True
    except Exception:  # noqa: BLE001 -- a bad file costs its row, not the run
      return torch.zeros(self.pixels), False


def loader(paths, batch_size=256, workers=None, pixels=3700):
  workers = cores() if workers is None else workers
  return torch.utils.data.DataLoader(Spectra(paths, pixels), batch_size=batch_size,
                                     num_workers=workers, shuffle=False,
                                     persistent_workers=False)


# --- networks -----------------------------------------------------------------------------

def conv1d_trunk(m, pixels):
  """cnn1d's conv blocks (model m: its channels, kernels, strides) in Conv1d; (trunk,
  flattened features)."""
  layers, chans, width = [], 1, pixels
  for c, k, s in zip(m.channels, m.kernels, m.pool_strides):
    layers += [nn.Conv1d(chans, c, k), nn.BatchNorm1d(c), nn.LeakyReLU(0.01),
               nn.MaxPool1d(2, stride=s)]
    chans, width = c, (width - k + 1 - 2) // s + 1
  return nn.Sequential(*layers), chans * width


class Conv1dNets(nn.Module):
  """A bundle's cnn1d networks in PyTorch; forward (B, pixels) -> [probabilities (B, classes)
  of each network].  shared: one trunk for all (stage 2 on stage 1's trunk)."""

  def __init__(self, networks, pixels=3700, shared=True):
    super().__init__()
    self.shared = shared
    trunks, heads = [], []
    for net in networks[:1] if shared else networks:
      trunk, features = conv1d_trunk(net.model, pixels)
      trunks.append(trunk)
    for net in networks:
      m = net.model
      heads.append(nn.Sequential(nn.Flatten(), nn.LeakyReLU(0.01),
                                 nn.Linear(features, m.dense_width),
                                 nn.Linear(m.dense_width, net.width)))
    self.trunks, self.heads = nn.ModuleList(trunks), nn.ModuleList(heads)
    self.temperatures = [net.temperature for net in networks]

  def forward(self, x):
    x = x[:, None, :]
    feats = [t(x) for t in self.trunks]
    return [torch.softmax(h(feats[0 if self.shared else i]) / t, dim=-1)
            for i, (h, t) in enumerate(zip(self.heads, self.temperatures))]


class Conv2dNets(nn.Module):
  """Tan et al.'s Conv2d(1, k) networks (tan_baseline.tan_net) with the bundle's sizes."""

  def __init__(self, networks):
    super().__init__()
    self.nets = nn.ModuleList(tan_baseline.tan_net(torch, net.meta.get("config", {}), net.width)
                              for net in networks)

  def forward(self, x):
    return [net(x[:, None, None, :]) for net in self.nets]


def build(kind, model, seed=0):
  """Random-weight networks of `model`'s sizes, eval mode: kind conv2d, conv1d_two or
  conv1d_shared."""
  torch.manual_seed(seed)
  networks = list(model.networks.values())
  pixels = int(model.input.get("pixels", 3700))
  if kind == "conv2d":
    module = Conv2dNets(networks)
  elif kind in ("conv1d_two", "conv1d_shared"):
    module = Conv1dNets(networks, pixels, shared=kind == "conv1d_shared")
  else:
    raise ValueError(f"unknown network kind {kind!r}")
  return module.eval()


def copy_weights(module, networks):
  """Loads a bundle's weights (flax cnn1d variables) into Conv1dNets, so its outputs can
  be checked against astrotl's."""
  def t(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))
  with torch.no_grad():
    for trunk, net in zip(module.trunks, networks):
      params, stats = net.variables["params"], net.variables["batch_stats"]
      convs = [l for l in trunk if isinstance(l, nn.Conv1d)]
      bns = [l for l in trunk if isinstance(l, nn.BatchNorm1d)]
      for i, (conv, bn) in enumerate(zip(convs, bns)):
        p, s = params[f"block_{i}"], stats[f"block_{i}"]["bn"]
        conv.weight.copy_(t(p["conv"]["kernel"]).permute(2, 1, 0))  # (k, in, out) -> (out, in, k)
        conv.bias.copy_(t(p["conv"]["bias"]))
        bn.weight.copy_(t(p["bn"]["scale"]))
        bn.bias.copy_(t(p["bn"]["bias"]))
        bn.running_mean.copy_(t(s["mean"]))
        bn.running_var.copy_(t(s["var"]))
    for head, net in zip(module.heads, networks):
      params = net.variables["params"]
      dense, out = head[2], head[3]
      chans = net.model.channels[-1]
      k = t(params["dense"]["kernel"])  # rows position-major (w * C + c); torch: c * W + w
      width = k.shape[0] // chans
      dense.weight.copy_(k.reshape(width, chans, -1).permute(2, 1, 0).reshape(k.shape[1], -1))
      dense.bias.copy_(t(params["dense"]["bias"]))
      out.weight.copy_(t(params["head"]["kernel"]).T)
      out.bias.copy_(t(params["head"]["bias"]))
  return module


# --- timing -------------------------------------------------------------------------------

def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize()


def run_loader(paths, module, batch_size=256, workers=None, pixels=3700, device="cpu"):
  """Spectra per second of DataLoader reading + `module` (None: reading alone) over
  `paths`, start to end (worker start-up included); probabilities kept on the host."""
  device = torch.device(device)
  if module is not None:
    module.to(device)
  t0 = time.perf_counter()
  first, n_ok, outs = None, 0, []
  with torch.inference_mode():
    for x, ok in loader(paths, batch_size, workers, pixels):
      if first is None:
        first = time.perf_counter() - t0
      n_ok += int(ok.sum())
      if module is not None:
        outs.append([p.cpu() for p in module(x.to(device, non_blocking=True))])
  seconds = time.perf_counter() - t0
  return {"n": len(paths), "n_read": n_ok, "seconds": seconds, "rate": len(paths) / seconds,
          "first_batch_seconds": first}


def run_preloaded(x, module, batch_size=256, seconds=20.0, device="cpu"):
  """Spectra per second of `module` alone on inputs x (N, pixels) in memory, batches of
  `batch_size` (1: one spectrum at a time) cycled for about `seconds` after one warm-up."""
  device = torch.device(device)
  module.to(device)
  x = torch.as_tensor(x).to(device)
  batches = [x[i:i + batch_size] for i in range(0, len(x) - batch_size + 1, batch_size)]
  with torch.inference_mode():
    module(batches[0])
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
      for b in batches:
        module(b)
        n += len(b)
    _sync(device)
    elapsed = time.perf_counter() - t0
  return {"n": n, "seconds": elapsed, "rate": n / elapsed}


def resolve(flows):
  """FLOWS named in a list ("all" for every one)."""
  names = list(FLOWS) if "all" in flows else list(flows)
  unknown = [f for f in names if f not in FLOWS]
  if unknown:
    raise ValueError(f"unknown torch flows {unknown}; known: {', '.join(FLOWS)}")
  return names


def run(paths, model, flows=FLOWS, batch_size=256, workers=None, seconds=20.0, device="cpu",
        log=print):
  """{flow: result} of the named flows on `paths` with `model`'s network sizes."""
  workers = cores() if workers is None else workers
  torch.set_num_threads(cores())
  pixels = int(model.input.get("pixels", 3700))
  out, x = {}, None
  for flow in resolve(flows):
    if flow in LOADER_FLOWS:
      module = None if flow == "loader" else build(flow.replace("_batched", ""), model)
      r = run_loader(paths, module, batch_size, workers, pixels, device)
      log(f"torch {flow:20s} {r['rate']:8.1f} spectra/s ({r['n']} files, DataLoader "
          f"{workers} workers, first batch after {r['first_batch_seconds']:.1f} s)")
    else:
      if x is None:  # the inputs, read once
        n = min(batch_size, len(paths))
        x = torch.stack([Spectra(paths[:n], pixels)[i][0] for i in range(n)])
        x = x[torch.arange(batch_size) % n]
      single = flow == "net_conv2d_single"
      kind = flow[len("net_"):].replace("_single", "").replace("_batched", "")
      r = run_preloaded(x, build(kind, model), 1 if single else batch_size, seconds, device)
      log(f"torch {flow:20s} {r['rate']:8.1f} spectra/s (networks only, "
          f"{'one at a time' if single else f'batches of {batch_size}'})")
    out[flow] = dict(r, batch_size=1 if flow == "net_conv2d_single" else batch_size,
                     workers=workers if flow in LOADER_FLOWS else 0)
  return out


def describe(model):
  """What the JSON records about the torch side."""
  names = list(model.networks)
  return {"version": torch.__version__, "threads": torch.get_num_threads(),
          "cores": cores(), "bundle_shares_trunk": len(names) > 1 and all(
              model.shared_trunk(names[0], n) for n in names[1:])}


def main(argv):
  del argv
  import json
  from absl import flags
  from astrotl import bundle
  f = flags.FLAGS
  if f.paths:
    paths = pathlib.Path(f.paths).read_text().split("\n")
    paths = [p for p in paths if p][:f.n or None]
  else:
    paths = sorted(glob.glob(f.files, recursive=True))[:f.n or None]
  model = bundle.load_model(f.model)
  r = {"flows": run(paths, model, f.flows, f.batch_size, f.workers, f.seconds, f.device)}
  r.update(describe(model))
  print({k: v for k, v in r.items() if k != "flows"})
  if f.json:
    pathlib.Path(f.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("files", None, "Glob of FITS files.")
  flags.DEFINE_string("paths", None, "Or a text file of FITS paths, one a line.")
  flags.DEFINE_integer("n", 2000, "Files to time (0: all).")
  flags.DEFINE_string("model", "wd_two_stage", "Model whose network sizes to use.")
  flags.DEFINE_list("flows", ["all"], f"Flows: all or some of {', '.join(FLOWS)}.")
  flags.DEFINE_integer("batch_size", 256, "Batch size.")
  flags.DEFINE_integer("workers", None, "DataLoader workers (default: the cores).")
  flags.DEFINE_float("seconds", 20.0, "Seconds of each networks-only timing.")
  flags.DEFINE_string("device", "cpu", "torch device (cpu, cuda).")
  flags.DEFINE_string("json", None, "Write the results here.")
  app.run(main)
