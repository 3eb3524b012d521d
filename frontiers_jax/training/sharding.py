"""Data parallelism with `jax.jit` over a one-axis `Mesh`.

The batch is split over the `data` axis; parameters and optimizer state are
replicated. The same code runs on one CPU, on fake CPU devices, on a GPU and on
a TPU slice: only the size of the mesh changes.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from frontiers_jax.errors import check

DATA_AXIS = 'data'


def make_mesh(num_devices: int = 0) -> Mesh:
  """A mesh over all devices (0) or, in a single process, the first n.

  Devices are ordered by process, so that process i holds the i-th block of
  every batch: the rows `frontiers_jax.data.pipeline` gives it.
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
  return Mesh(np.asarray(available), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(mesh: Mesh, local_batch):
  """Assembles this process's rows into global arrays split over `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
