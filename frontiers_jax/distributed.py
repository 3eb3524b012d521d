"""Joining a multi-process JAX job: a thin layer over `jax.distributed`.

`initialize(address, n, i)` checks the three values a user gave and starts
JAX's distributed runtime with them; `initialize()` with none lets JAX find
the cluster itself (TPU VM pod slices, SLURM and Open MPI jobs, Kubernetes
jobs: the environments of `jax._src.clusters`) and does nothing in a single
process. It must run before any JAX computation.

On a SLURM GPU cluster JAX gives each task one GPU unless told otherwise;
with one task per host, `JAX_LOCAL_DEVICE_IDS=0,1,...` makes all of the host's
GPUs visible (see launch/slurm.sbatch).
"""

import re

from frontiers_jax.errors import check

_ADDRESS = re.compile(r'^(?P<host>[^\s:]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d+)$')


def check_flags(coordinator_address: str | None, num_processes: int | None,
                process_id: int | None) -> None:
  """Raises `UsageError` unless all three are given and consistent, or none."""
  values = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
            'process_id': process_id}
  given = [name for name, value in values.items() if value is not None]
  if not given:
    return
  for name in values:
    check(name in given, name, f'not given, but {given[0]} is',
          'give all three of --coordinator_address, --num_processes, --process_id, '
          'or none (to auto-detect a TPU pod or a SLURM job)')
  match = _ADDRESS.match(coordinator_address)
  check(match is not None and 0 < int(match['port']) < 65536, 'coordinator_address',
        f'{coordinator_address!r} is not host:port',
        'give the host of process 0 and a free port, e.g. 10.0.0.1:1234')
  check(num_processes >= 1, 'num_processes', f'{num_processes} is not allowed',
        'give the number of processes, at least 1')
  check(0 <= process_id < num_processes, 'process_id',
        f'{process_id} is not allowed with {num_processes} processes',
        f'give 0 to {num_processes - 1}')


def detect_cluster() -> tuple[str, int] | None:
  """(name, process count) of the cluster that `jax.distributed.initialize()`
  would find, in JAX's own order; None outside any."""
  from jax._src import clusters  # The detectors jax.distributed itself walks.
  for env in clusters.ClusterEnv._cluster_types:
    if not env.opt_in_only_method and env.is_env_present():
      return env.name, env.get_process_count()
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> int:
  """Joins the job; returns the number of processes (1 when there is nothing to join).

  With the three values: checks them (a `UsageError` before anything starts),
  then connects to the coordinator, which process 0 starts. Without: joins the
  cluster JAX detects when it has more than one process. A one-process SLURM
  job is left alone: JAX would restrict it to one GPU.
  """
  check_flags(coordinator_address, num_processes, process_id)
  import jax  # After the checks: importing jax takes a second.
  if coordinator_address is not None:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return num_processes
  cluster = detect_cluster()
  if cluster is None or cluster[1] <= 1:
    return 1
  jax.distributed.initialize()
  return cluster[1]
