"""Train-step throughput of the Tan et al. cnn1d: astrotl (JAX) versus the same network
in PyTorch, same machine, same run.  Run by hand; not a test.

  python benchmarks/train_throughput.py --batch=128 --steps=20

Prints spectra/s for both and their ratio, and writes
benchmarks/results/train_throughput_<device>.json.  PyTorch is optional (the astrotl[torch]
extra); without it only astrotl is measured.  Runs unchanged on CPU and GPU.
"""

import json
import pathlib
import platform
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from astrotl import models, parallel, train

_BATCH = flags.DEFINE_integer("batch", 128, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
_LENGTH = flags.DEFINE_integer("length", 3700, "Spectrum length.")
_OUT = flags.DEFINE_string("out", str(pathlib.Path(__file__).parent / "results"), "Output dir.")


def time_astrotl(batch, steps, length):
  model = models.get("cnn1d")
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  x = rng.random((batch, length), dtype=np.float32)
  y = rng.integers(0, 7, batch)
  v = train.init_variables(model, x[:1], 0)
  tx = optax.sgd(1e-4, momentum=0.9)
  state = parallel.replicate(train.TrainState(jnp.zeros((), jnp.int32), v["params"],
                                              v["batch_stats"], tx.init(v["params"]),
                                              jax.random.PRNGKey(0)), mesh)
  step = train.make_train_step(model, tx, mesh)
  b = parallel.shard_batch({"x": x, "y": y, "valid": np.ones(batch, bool)}, mesh, batch)
  for _ in range(3):
    state, m = step(state, b)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, b)
  jax.block_until_ready(m)
  return batch * steps / (time.perf_counter() - t)


def time_torch(batch, steps, length):
  import torch
  from torch import nn

  def block(cin, cout, k, s):
    return nn.Sequential(nn.Conv2d(cin, cout, (1, k)), nn.BatchNorm2d(cout), nn.LeakyReLU(),
                         nn.MaxPool2d((1, 2), stride=s))

  chans, ks, ss = (1, 10, 10, 20, 30, 40, 50, 60, 60), (1, 2, 3, 4, 5, 7, 8, 9), (1, 2) * 4
  # Tan et al.'s CNN_Model1: Conv2d with 1xk kernels on (batch, 1, 1, length)
  net = nn.Sequential(*[block(chans[i], chans[i + 1], ks[i], ss[i]) for i in range(8)],
                      nn.Flatten(), nn.LeakyReLU(), nn.LazyLinear(1024), nn.Linear(1024, 7))
  device = "cuda" if torch.cuda.is_available() else "cpu"
  net = net.to(device)
  x = torch.rand(batch, 1, 1, length, device=device)
  y = torch.randint(0, 7, (batch,), device=device)
  net(x)  # materialise the lazy layer
  opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
  loss_fn = nn.CrossEntropyLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return loss

  for _ in range(3):
    step()
  if device == "cuda":
    torch.cuda.synchronize()
  t = time.perf_counter()
  for _ in range(steps):
    loss = step()
  loss.item()
  if device == "cuda":
    torch.cuda.synchronize()
  return batch * steps / (time.perf_counter() - t), torch.__version__, torch.get_num_threads()


def main(argv):
  del argv
  batch, steps, length = _BATCH.value, _STEPS.value, _LENGTH.value
  result = {"batch": batch, "steps": steps, "length": length, "jax": jax.__version__,
            "device": str(jax.devices()[0].device_kind), "n_devices": jax.device_count(),
            "machine": platform.processor() or platform.machine()}
  result["astrotl_spectra_per_s"] = time_astrotl(batch, steps, length)
  print(f"astrotl: {result['astrotl_spectra_per_s']:.1f} spectra/s")
  try:
    rate, version, threads = time_torch(batch, steps, length)
  except ImportError:
    print("torch not installed: pip install astrotl[torch] to compare")
  else:
    result.update(torch_spectra_per_s=rate, torch=version, torch_threads=threads,
                  ratio=result["astrotl_spectra_per_s"] / rate)
    print(f"pytorch: {rate:.1f} spectra/s  ->  astrotl / pytorch = {result['ratio']:.2f}x")
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  kind = "gpu" if jax.default_backend() == "gpu" else jax.default_backend()
  (out / f"train_throughput_{kind}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
