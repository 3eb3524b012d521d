"""Data parallelism and FSDP with `jax.jit` over a two-axis `Mesh`.

The devices form a `data` x `fsdp` grid (`config.mesh.fsdp` is the size of
the `fsdp` axis; 1, the default, is pure data parallelism). The batch is split
over both axes together, so every device gets its own rows. Parameters and
optimizer state are either replicated (fsdp 1) or split over the `fsdp` axis
(fully sharded data parallelism, ZeRO-3 in DeepSpeed's terms, Rajbhandari et
al. 2020): each array keeps one slice of one dimension per device of its
`fsdp` group, and is replicated across the `data` axis.

No collective is written by hand. The train state is created by
`jax.jit(init, out_shardings=state_shardings(...))` and the step is jitted with
the same shardings in and out; XLA's SPMD partitioner then all-gathers each
parameter where the forward and backward passes need it whole, and
reduce-scatters the gradients so that each device updates only its slice. The
same code runs on one CPU, on fake CPU devices, on a GPU and on a TPU slice:
only the shape of the mesh changes.
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from frontiers_jax.errors import check

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch is split over both


def fsdp_settings(config) -> tuple[int, int]:
  """(fsdp, min_size) of `config.mesh`; (1, 0) for a config saved before the
  keys existed (an older run's config.json)."""
  mesh = config.get('mesh') or {}
  return mesh.get('fsdp', 1), mesh.get('fsdp_min_size', 0)


def make_mesh(num_devices: int = 0, fsdp: int = 1) -> Mesh:
  """A `data` x `fsdp` mesh over all devices (0) or, in a single process, the first n.

  Devices are ordered by process, so that process i holds the i-th block of
  every batch: the rows `frontiers_jax.data.pipeline` gives it. An `fsdp`
  group is `fsdp` consecutive devices (of one process when it has that many).
  """
  available = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  if num_devices:
    check(num_devices <= len(available), 'config.num_devices',
          f'{num_devices} devices asked for, {len(available)} present',
          f'give 0 (all) or at most {len(available)}')
    check(jax.process_count() == 1, 'config.num_devices',
          'a device subset is not allowed with several processes',
          'give 0 (all devices)')
    available = available[:num_devices]
  n = len(available)
  divisors = ', '.join(str(k) for k in range(1, n + 1) if n % k == 0)
  check(isinstance(fsdp, int) and fsdp >= 1 and n % fsdp == 0, 'config.mesh.fsdp',
        f'{fsdp} does not divide the {n} devices',
        f'give 1 (data parallel) or another divisor of {n}: {divisors}')
  return Mesh(np.asarray(available).reshape(n // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device (`data` and `fsdp`); other axes whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(mesh: Mesh, local_batch):
  """Assembles this process's rows into global arrays split over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  """The partition of one array of `shape` over an `fsdp` axis of that size.

  The largest dimension that `fsdp` divides is split (the first of equals);
  scalars, arrays of fewer than `min_size` elements (biases, norm scales:
  gathering them costs more than storing them) and arrays with no divisible
  dimension stay whole on every device.
  """
  if fsdp == 1 or not shape or math.prod(shape) < min_size:
    return P()
  divisible = [i for i, size in enumerate(shape) if size % fsdp == 0]
  if not divisible:
    return P()
  dim = max(divisible, key=lambda i: (shape[i], -i))
  return P(*(FSDP_AXIS if i == dim else None for i in range(len(shape))))


def state_shardings(mesh: Mesh, abstract_state, min_size: int):
  """A `NamedSharding` per leaf of a train state (arrays or shape structs),
  by `fsdp_spec`. Optimizer moments have their parameter's shape, so they
  are split like it."""
  fsdp = mesh.shape[FSDP_AXIS]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp, min_size)),
      abstract_state)


def bytes_per_device(tree) -> dict[jax.Device, int]:
  """Bytes of `tree`'s arrays held by each of this process's devices,
  counted from the arrays' addressable shards."""
  out = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
  return out


def step_memory(compiled) -> dict[str, int] | None:
  """Per-device bytes of a compiled step program by XLA's memory analysis:
  arguments, outputs, temporaries (activations, gathered parameters,
  gradients) and the donated bytes that outputs reuse. None where the
  backend gives none."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):  # Some backends have none.
    return None
  if stats is None:
    return None
  return {key: int(getattr(stats, f'{key}_size_in_bytes'))
          for key in ('argument', 'output', 'temp', 'alias')}


def mib(num_bytes: float) -> str:
  return f'{num_bytes / 2**20:.2f} MiB'


def describe_memory(mesh: Mesh, state, step: dict[str, int] | None) -> tuple[str, dict]:
  """A start-up line on the mesh and the memory per device, and its numbers
  (for summary.json)."""
  per_device = bytes_per_device(state)
  held = max(per_device.values())
  total = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  leaves = jax.tree.leaves(state)
  split = sum(1 for leaf in leaves if any(leaf.sharding.spec))
  numbers = {'data': mesh.shape[DATA_AXIS], 'fsdp': mesh.shape[FSDP_AXIS],
             'state_bytes': total, 'state_bytes_per_device': held}
  line = (f'mesh: data {mesh.shape[DATA_AXIS]} x fsdp {mesh.shape[FSDP_AXIS]} '
          f'({mesh.size} devices); train state {mib(held)} per device of {mib(total)} '
          f'({split} of {len(leaves)} arrays split over fsdp)')
  if step:
    numbers.update({f'step_{k}_bytes_per_device': v for k, v in step.items()})
    line += (f'; step program per device: arguments {mib(step["argument"])}, '
             f'temporaries {mib(step["temp"])}')
  return line, numbers
