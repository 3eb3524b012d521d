"""`frontiers_jax.distributed`: the checks of --coordinator_address,
--num_processes and --process_id, and when `jax.distributed.initialize` is
called. JAX's own runtime is replaced by a recorder here (it can start only
once per process); tests/test_local_cluster.py runs it for real."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

from frontiers_jax import distributed
from frontiers_jax.errors import UsageError

REPO = pathlib.Path(__file__).resolve().parents[1]
SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
              'SLURM_LOCALID')
OTHER_CLUSTER_VARS = ('OMPI_MCA_orte_hnp_uri', 'KUBERNETES_SERVICE_HOST',
                      'JAX_COORDINATOR_ADDRESS')


@pytest.fixture
def calls(monkeypatch):
  """The calls of `jax.distributed.initialize`, in no cluster environment."""
  for var in SLURM_VARS + OTHER_CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  recorded = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda *args, **kwargs: recorded.append((args, kwargs)))
  return recorded


def slurm(monkeypatch, num_tasks: int):
  for var, value in zip(SLURM_VARS, ('4242', 'gpu[007-008]', str(num_tasks), '1', '0')):
    monkeypatch.setenv(var, value)


def test_explicit_values_are_passed_to_jax(calls):
  assert distributed.initialize('10.0.0.1:1234', 4, 3) == 4
  assert calls == [(('10.0.0.1:1234', 4, 3), {})]


@pytest.mark.parametrize('address,num,pid,flag', [
    ('10.0.0.1', 2, 0, 'coordinator_address'),       # no port
    ('10.0.0.1:http', 2, 0, 'coordinator_address'),
    ('10.0.0.1:70000', 2, 0, 'coordinator_address'),
    (':1234', 2, 0, 'coordinator_address'),
    ('h:1234', 0, 0, 'num_processes'),
    ('h:1234', 2, 2, 'process_id'),
    ('h:1234', 2, -1, 'process_id'),
    ('h:1234', None, 0, 'num_processes'),             # all three or none
    (None, 2, 0, 'coordinator_address'),
])
def test_bad_values_fail_before_jax_starts(calls, address, num, pid, flag):
  with pytest.raises(UsageError) as e:
    distributed.initialize(address, num, pid)
  assert e.value.where == flag
  assert calls == []


def test_nothing_to_join_is_one_process(calls):
  assert distributed.detect_cluster() is None
  assert distributed.initialize() == 1
  assert calls == []


def test_slurm_job_with_two_tasks_is_joined_by_jax_detection(calls, monkeypatch):
  slurm(monkeypatch, num_tasks=2)
  assert distributed.detect_cluster() == ('slurm', 2)
  assert distributed.initialize() == 2
  assert calls == [((), {})]  # JAX reads SLURM's variables itself.


def test_one_task_slurm_job_is_left_alone(calls, monkeypatch):
  slurm(monkeypatch, num_tasks=1)
  assert distributed.initialize() == 1
  assert calls == []


def test_bad_flag_stops_train_py_with_one_line(tmp_path):
  workdir = tmp_path / 'run'
  done = subprocess.run(
      [sys.executable, 'launch/train.py', '--config=configs/approximation.py:tiny',
       f'--workdir={workdir}', '--coordinator_address=127.0.0.1:1234',
       '--num_processes=2', '--process_id=2'],
      cwd=REPO, capture_output=True, text=True, timeout=60,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      'error: process_id: 2 is not allowed with 2 processes; give 0 to 1']
  assert not workdir.exists()
