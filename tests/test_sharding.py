"""FSDP (`config.mesh.fsdp`) on 8 fake CPU devices: the partition rule, the
checks, and training that matches pure data parallelism."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from frontiers_jax import runs
from frontiers_jax.errors import UsageError
from frontiers_jax.training import loop, sharding
from conftest import load

# The sharded and the replicated step add the devices' partial gradient sums
# in different orders (a reduce-scatter against an all-reduce); measured
# differences are reported in README "Sharding and precision".
RTOL, ATOL = 1e-5, 1e-6


@pytest.mark.parametrize('shape, fsdp, min_size, spec', [
    ((64, 32), 4, 0, P('fsdp', None)),              # the largest dimension
    ((30, 64), 4, 0, P(None, 'fsdp')),              # 30 does not divide by 4
    ((32, 32), 8, 0, P('fsdp', None)),              # equals: the first
    ((3, 3, 1, 8), 8, 0, P(None, None, None, 'fsdp')),  # a conv kernel
    ((3, 3, 1, 6), 4, 0, P()),                      # nothing divides: whole
    ((), 4, 0, P()),                                # a scalar (a step count)
    ((64,), 4, 1024, P()),                          # smaller than min_size
    ((64, 32), 4, 2048, P('fsdp', None)),           # exactly min_size: split
    ((64, 32), 1, 0, P()),                          # data parallel
])
def test_fsdp_spec(shape, fsdp, min_size, spec):
  assert sharding.fsdp_spec(shape, fsdp, min_size) == spec


def test_mesh_is_data_by_fsdp_in_process_order():
  mesh = sharding.make_mesh(0, fsdp=4)
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4}
  # Flattened, the batch axes keep the device order: process i, then ids.
  assert [d.id for d in mesh.devices.flat] == sorted(d.id for d in jax.devices())


@pytest.mark.parametrize('overrides, problem', [
    ({'mesh.fsdp': 3}, '3 does not divide the 8 devices'),
    ({'mesh.fsdp': 0}, '0 does not divide the 8 devices'),
    ({'mesh.fsdp': 16}, '16 does not divide the 8 devices'),
    ({'mesh.fsdp': 4, 'num_devices': 2}, '4 does not divide the 2 devices'),
])
def test_bad_fsdp_size_is_one_error_before_anything_runs(tmp_path, overrides, problem):
  with pytest.raises(UsageError) as e:
    runs.prepare(load('generalization.py:tiny', **overrides), str(tmp_path / 'run'))
  assert e.value.where == 'config.mesh.fsdp'
  assert e.value.problem == problem
  assert not os.path.exists(tmp_path / 'run')


def _train(tmp_path, spec, fsdp, name=None, **overrides):
  workdir = str(tmp_path / (name or f'fsdp{fsdp}'))
  config = load(spec, **{'mesh.fsdp': fsdp, 'mesh.fsdp_min_size': 0, **overrides})
  summary = runs.train(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return workdir, config, summary, records


def _assert_records_close(expected, actual):
  assert [r.keys() for r in expected] == [r.keys() for r in actual]
  for a, b in zip(expected, actual):
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=RTOL, atol=ATOL, err_msg=key)


@pytest.mark.parametrize('spec, sizes', [('generalization.py:tiny', (4, 8)),
                                         ('lm.py:tiny', (4,))])
def test_fsdp_trains_like_data_parallel(tmp_path, spec, sizes):
  dp_workdir, dp_config, dp_summary, dp_records = _train(tmp_path, spec, 1)
  dp_memory = dp_summary['mesh_memory']
  assert dp_memory['state_bytes_per_device'] == dp_memory['state_bytes']  # replicated
  dp_params = loop.restore_trained(runs.prepare(dp_config, dp_workdir)).params
  for fsdp in sizes:
    workdir, config, summary, records = _train(tmp_path, spec, fsdp)
    _assert_records_close(dp_records, records)
    memory = summary['mesh_memory']
    assert (memory['data'], memory['fsdp']) == (8 // fsdp, fsdp)
    assert memory['state_bytes'] == dp_memory['state_bytes']
    # Almost every byte is split: what stays whole is a few small arrays.
    assert memory['state_bytes_per_device'] < 1.5 * memory['state_bytes'] / fsdp
    # The checkpoint comes back split as it was trained, with the same values.
    state = loop.restore_trained(runs.prepare(config, workdir))
    leaves = jax.tree.leaves(state.params)
    assert sum(1 for x in leaves if 'fsdp' in x.sharding.spec) >= len(leaves) // 2
    for x in leaves:
      assert x.sharding.spec == sharding.fsdp_spec(x.shape, fsdp, 0)
      assert x.dtype == np.float32
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL),
                 jax.device_get(dp_params), jax.device_get(state.params))


def test_resume_with_another_fsdp_size(tmp_path):
  # Orbax reads each device's slice of the saved arrays: a run saved as pure
  # data parallel resumes split over fsdp 8, and ends where it would have.
  spec = 'generalization.py:tiny'
  workdir, _, _, records = _train(tmp_path, spec, 1)
  moved = str(tmp_path / 'moved')
  shutil.copytree(workdir, moved)
  shutil.rmtree(os.path.join(moved, 'checkpoints', '12'))
  config = load(spec, **{'mesh.fsdp': 8, 'mesh.fsdp_min_size': 0})
  summary = runs.train(config, moved)
  assert summary['resumed_from_step'] == 8
  with open(os.path.join(moved, 'metrics.jsonl')) as f:
    _assert_records_close(records, [json.loads(line) for line in f])
