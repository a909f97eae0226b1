"""Device mesh ('data', 'fsdp') and the sharding rules for parameters, optimizer state and batches.

- Parameters (and everything shaped like them: optimizer moments) follow one rule: a leaf with >= 2
  dimensions is split over 'fsdp' along its largest dimension divisible by the fsdp size; all other leaves
  (biases, norms, scalars, keys, and leaves with no divisible dimension) are replicated.  Parameters are
  therefore replicated across 'data' and sharded across 'fsdp' (ZeRO-3 style); XLA inserts the gathers.
- Batches are split along their first (batch) dimension over both axes, ('data', 'fsdp'): every device
  holds a distinct slice of the batch, which is what FSDP needs to use all devices for compute.  The
  global batch size must therefore be divisible by data * fsdp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')


def make_mesh(data: int, fsdp: int, devices: Sequence[Any] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all); one of the sizes may be -1 (fill the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got data={data}, fsdp={fsdp}')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh axis sizes must be positive or -1, got data={data}, fsdp={fsdp}')
  if -1 in sizes:
    known = abs(int(np.prod(sizes)))
    if n % known:
      raise ValueError(f'cannot fill mesh data={data}, fsdp={fsdp}: {n} devices not divisible by {known}')
    sizes = [n // known if s == -1 else s for s in sizes]
  if sizes[0] * sizes[1] != n:
    raise ValueError(f'mesh data={sizes[0]} x fsdp={sizes[1]} = {sizes[0] * sizes[1]} devices, '
                     f'but {n} devices are available')
  # Auto axes: shardings are hints to the compiler (jax.make_mesh defaults to Explicit axes).
  return jax.make_mesh(tuple(sizes), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


def leaf_spec(shape: Sequence[int], fsdp_size: int) -> P:
  """The parameter rule for one leaf's shape (see module docstring)."""
  if len(shape) < 2 or fsdp_size <= 1:
    return P()
  candidates = [i for i, dim in enumerate(shape) if dim % fsdp_size == 0]
  if not candidates:
    return P()
  # Largest dimension; on ties the first, e.g. a square kernel splits its input dimension.
  axis = max(candidates, key=lambda i: (shape[i], -i))
  return P(*([None] * axis + ['fsdp']))


def leaf_sharding(shape: Sequence[int], mesh: Mesh) -> NamedSharding:
  """The NamedSharding of one parameter-shaped leaf on `mesh` (the rule of `leaf_spec`)."""
  return NamedSharding(mesh, leaf_spec(shape, mesh.shape['fsdp']))


def param_sharding(tree: Any, mesh: Mesh) -> Any:
  """NamedSharding per leaf of params, optimizer state or a whole train state (arrays or abstract)."""
  return jax.tree.map(lambda x: leaf_sharding(getattr(x, 'shape', np.shape(x)), mesh), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a host batch (pytree of arrays, leading dim = this process's share) on the mesh.

  Single process: the batch is the global batch.  Multi-host: each process passes its own slice and the
  result is one global array (jax.make_array_from_process_local_data).
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


_MULTIHOST_ENV = ('JAX_COORDINATOR_ADDRESS',)
_COUNT_ENV = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'JAX_NUM_PROCESSES')


def multihost_reason(environ: Mapping[str, str] | None = None) -> str | None:
  """What in the environment describes a multi-process job (e.g. 'JAX_NUM_PROCESSES=2'), or None.

  Recognised: JAX_COORDINATOR_ADDRESS (explicit setup), SLURM_NTASKS / OMPI_COMM_WORLD_SIZE /
  JAX_NUM_PROCESSES > 1 (GPU clusters), TPU_WORKER_HOSTNAMES listing more than one host (TPU pod slices).
  """
  env = os.environ if environ is None else environ
  for key in _MULTIHOST_ENV:
    if env.get(key):
      return f'{key}={env[key]}'
  for key in _COUNT_ENV:
    try:
      if int(env.get(key, '1')) > 1:
        return f'{key}={env[key]}'
    except ValueError:
      pass
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]) > 1:
    return 'TPU_WORKER_HOSTNAMES lists several hosts'
  return None


def multihost_env(environ: Mapping[str, str] | None = None) -> bool:
  """Whether the environment describes a multi-process job (`multihost_reason`)."""
  return multihost_reason(environ) is not None


def maybe_initialize_distributed(distributed: bool | None = None, *, heartbeat_timeout_s: int = 60,
                                 init_timeout_s: int = 300) -> bool:
  """Calls `jax.distributed.initialize()` for multi-host runs; returns whether it did.

  distributed: True forces it (config.mesh.distributed = True), False never, None (default) decides from
  the environment (`multihost_env`).  Must run before anything touches the devices.  Arguments come from
  JAX's own cluster detection (TPU pods, SLURM, Open MPI) or, for a hand-made cluster, from
  JAX_COORDINATOR_ADDRESS (read by JAX) plus JAX_NUM_PROCESSES and JAX_PROCESS_ID (read here).

  heartbeat_timeout_s: a process whose heartbeats (sent by the runtime's own thread, whatever Python is doing)
  stop for this long is declared dead, and the runtime ends every other process (research/supervisor.py turns
  that into one line naming the lost process). It also bounds the wait at exit for the other processes (JAX's
  shutdown barrier, 300 s by default), so a process that ends on an error while the others are blocked in a
  collective ends them within that time too. init_timeout_s: how long a process waits for all the others to
  join at start.
  """
  wanted = multihost_env() if distributed is None else distributed
  if not wanted or jax.distributed.is_initialized():
    return False
  from research.train.configuration import ConfigError  # here: configuration does not import this module's users
  kwargs = {}
  for name, key in (('JAX_NUM_PROCESSES', 'num_processes'), ('JAX_PROCESS_ID', 'process_id')):
    if os.environ.get(name):
      try:
        kwargs[key] = int(os.environ[name])
      except ValueError:
        raise ConfigError(f'{name}={os.environ[name]!r} must be an integer') from None
  count, index = kwargs.get('num_processes'), kwargs.get('process_id')
  if count is not None and count < 1:
    raise ConfigError(f'JAX_NUM_PROCESSES={count} must be at least 1 (the number of processes of the job)')
  if index is not None and (index < 0 or (count is not None and index >= count)):
    allowed = f'0 … {count - 1}, one number per process of JAX_NUM_PROCESSES={count}' if count else 'at least 0'
    raise ConfigError(f'JAX_PROCESS_ID={index} must be {allowed}')
  try:
    jax.distributed.initialize(heartbeat_timeout_seconds=int(heartbeat_timeout_s),
                               shutdown_timeout_seconds=int(heartbeat_timeout_s),
                               initialization_timeout=int(init_timeout_s), **kwargs)
  except ValueError as e:
    said = str(e).splitlines()[0]
    if 'should be defined' not in str(e) and 'must be defined' not in str(e):
      raise ConfigError(f'the multi-process job cannot start: {said}') from None
    why = ('mesh.distributed=true, but no multi-process job was found' if distributed else
           f'the environment names a multi-process job ({multihost_reason()}), but not all of it is set')
    raise ConfigError(f'{why}: set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES '
                      'and JAX_PROCESS_ID on every process, or run under SLURM / Open MPI or on every worker of a '
                      'TPU pod slice (docs/training.md, "Multi-process runs"); '
                      f'JAX said: {said}') from None
  # jax.distributed.initialize installs JAX's preemption notifier, which catches SIGTERM for a preemption sync
  # point that nothing here uses: a scheduler's or `timeout`'s TERM then did nothing (the run went on to its last
  # step). Back to the default, as in a single-process run: TERM ends the process (docs/training.md).
  if threading.current_thread() is threading.main_thread():  # (signal handlers are the main thread's to set)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  return True
