"""Devices and hosts: the data-parallel mesh, batch sharding, jax.distributed start-up.

One mesh with a single `data` axis over all devices of all processes.  Batches are
global arrays sharded on `data`; parameters are replicated.  Each process feeds only
its own rows of every global batch (`process_rows`), so the global batch, and therefore
the training run, is the same whatever the number of processes or devices.
"""

import os

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

_initialized = False


def initialize(distributed: bool = False, coordinator_address=None, num_processes=None,
               process_id=None):
  """Calls jax.distributed.initialize() once when `distributed` is set.

  With no explicit arguments JAX auto-detects SLURM (inside srun) and Cloud TPU; on a
  plain host pass the coordinator (e.g. 127.0.0.1:12345), process count and id, or set
  ASTROTL_COORDINATOR / ASTROTL_NUM_PROCESSES / ASTROTL_PROCESS_ID (launch/local.sh does).
  """
  global _initialized
  if not distributed or _initialized:
    return
  coordinator_address = coordinator_address or os.environ.get("ASTROTL_COORDINATOR")
  if num_processes is None and "ASTROTL_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["ASTROTL_NUM_PROCESSES"])
  if process_id is None and "ASTROTL_PROCESS_ID" in os.environ:
    process_id = int(os.environ["ASTROTL_PROCESS_ID"])
  kwargs = {}
  if coordinator_address:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  elif (ids := slurm_bound_gpus(os.environ)) is not None:
    kwargs = dict(local_device_ids=ids)
  jax.distributed.initialize(**kwargs)
  _initialized = True


def slurm_bound_gpus(env) -> list[int] | None:
  """Local device ids for a SLURM task started with --gpus-per-task, else None.

  JAX's SLURM detection makes task SLURM_LOCALID drive GPU number SLURM_LOCALID of those it
  sees, which assumes every task sees all the node's GPUs.  With --gpus-per-task SLURM binds
  each task to its own GPUs (CUDA_VISIBLE_DEVICES lists only those, seen as 0..k-1), so
  task 3 would ask for a GPU it cannot see ("invalid device ordinal"); it should drive all
  of its own.  JAX_LOCAL_DEVICE_IDS, when set, is left to JAX.
  """
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  if ("SLURM_JOB_ID" not in env or "SLURM_GPUS_PER_TASK" not in env or not visible
      or "JAX_LOCAL_DEVICE_IDS" in env):
    return None
  return list(range(len(visible)))


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-axis `data` mesh over `devices` (default: every device of every process).

  Auto axis types: under Explicit axes integer-label losses fail to differentiate on
  sharded labels (STYLE.md).
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree, mesh):
  """Places a host pytree (same values on every process) replicated on the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def local_devices_in(mesh) -> int:
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def process_rows(global_batch: int, mesh) -> slice:
  """Rows of a global batch this process feeds (contiguous, in process order)."""
  n_dev = mesh.devices.size
  if global_batch % n_dev:
    raise ValueError(f"batch size {global_batch} must be a multiple of the device count {n_dev}")
  per_device = global_batch // n_dev
  first = sum(1 for d in mesh.devices.flat if d.process_index < jax.process_index())
  return slice(first * per_device, (first + local_devices_in(mesh)) * per_device)


def shard_batch(local_batch, mesh, global_batch: int):
  """Global arrays sharded on `data` from this process's rows (a pytree of numpy)."""
  sharding = data_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (global_batch,) + x.shape[1:])

  return jax.tree.map(put, local_batch)


def pad_rows(batch: dict, size: int):
  """Pads every array in `batch` to `size` rows (repeating row 0); returns (batch, valid)."""
  n = len(next(iter(batch.values())))
  if n > size:
    raise ValueError(f"batch of {n} rows does not fit in {size}")
  valid = np.zeros(size, bool)
  valid[:n] = True
  if n == size:
    return batch, valid
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    pad = np.repeat(v[:1] if n else np.zeros((1,) + v.shape[1:], v.dtype), size - n, axis=0)
    out[k] = np.concatenate([v, pad], axis=0)
  return out, valid


def to_host(x) -> np.ndarray:
  """Gathers a (possibly multi-process) global array to a numpy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def enable_compilation_cache(path=None):
  """Keeps compiled XLA programs on disk, so a second run of the same program (a resumed
  scan, the next scan with the same model) skips most of its compilation.

  The folder is `path` if given ('off': none), else $JAX_COMPILATION_CACHE_DIR if set,
  else $ASTROTL_CACHE/jax, else ~/.cache/astrotl/jax; ASTROTL_CACHE=off turns it off.  A
  folder that cannot be created leaves the cache off (it only saves time).
  """
  if path == "off" or (path is None and (os.environ.get("JAX_COMPILATION_CACHE_DIR") or
                                         os.environ.get("ASTROTL_CACHE") == "off")):
    return
  if path is None:
    base = os.environ.get("ASTROTL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "astrotl")
    path = os.path.join(base, "jax")
  path = os.path.expanduser(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
