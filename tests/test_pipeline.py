"""Deterministic, sharded batches from in-memory arrays."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from frontiers_jax.data import pipeline
from frontiers_jax.errors import UsageError


def _arrays(n=103):
  return {'x': np.arange(n, dtype=np.float32)[:, None], 'y': np.arange(n)}


def test_an_epoch_visits_distinct_examples_and_drops_the_remainder():
  batches = pipeline.TrainBatches(_arrays(), global_batch=10, seed=3)
  assert batches.steps_per_epoch == 10
  seen = np.concatenate([batches(s)['y'] for s in range(10)])
  assert len(set(seen)) == 100  # 3 left over, none repeated
  assert not np.array_equal(batches.indices(0), batches.indices(10))  # new epoch order


def test_batch_of_a_step_depends_only_on_seed_and_step():
  a = pipeline.TrainBatches(_arrays(), 10, seed=3)
  b = pipeline.TrainBatches(_arrays(), 10, seed=3)
  for step in (57, 3, 12, 57):  # any order: nothing carried between calls
    np.testing.assert_array_equal(a(step)['y'], b.indices(step))
  assert not np.array_equal(a.indices(5), pipeline.TrainBatches(_arrays(), 10, 4).indices(5))


def test_process_shards_make_up_the_global_batch_in_order():
  whole = pipeline.TrainBatches(_arrays(), 12, seed=0)
  parts = [pipeline.TrainBatches(_arrays(), 12, seed=0, process_index=i,
                                 process_count=3)(7)['y'] for i in range(3)]
  np.testing.assert_array_equal(np.concatenate(parts), whole(7)['y'])


def test_batch_larger_than_the_data_is_a_usage_error():
  with pytest.raises(UsageError, match='exceeds the 103 training examples'):
    pipeline.TrainBatches(_arrays(), 200, seed=0)


@pytest.mark.parametrize('n, batch', [(103, 10), (100, 10), (5, 8)])
def test_eval_batches_cover_each_example_once(n, batch):
  got = list(pipeline.eval_batches(_arrays(n), batch))
  assert all(len(b['y']) == batch for b in got)
  real = np.concatenate([b['y'][b['mask'] == 1] for b in got])
  np.testing.assert_array_equal(real, np.arange(n))
  assert sum(b['mask'].sum() for b in got) == n


# -- Properties, for any sizes -------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), per_process=st.integers(1, 16),
       processes=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**31 - 1),
       step=st.integers(0, 10_000))
def test_shards_partition_the_global_batch_and_epochs_never_repeat(
    n, per_process, processes, seed, step):
  batch = per_process * processes
  if batch > n:
    return
  arrays = {'y': np.arange(n)}
  whole = pipeline.TrainBatches(arrays, batch, seed)
  shards = [pipeline.TrainBatches(arrays, batch, seed, i, processes)(step)['y']
            for i in range(processes)]
  np.testing.assert_array_equal(np.concatenate(shards), whole.indices(step))
  epoch = step // whole.steps_per_epoch
  first = epoch * whole.steps_per_epoch
  seen = np.concatenate([whole.indices(s) for s in range(first, first + whole.steps_per_epoch)])
  assert len(np.unique(seen)) == len(seen) == whole.steps_per_epoch * batch


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), per_process=st.integers(1, 16),
       processes=st.sampled_from([1, 2, 4]))
def test_eval_shards_count_every_example_once(n, per_process, processes):
  arrays = {'y': np.arange(n)}
  counts = np.zeros(n)
  for i in range(processes):
    for b in pipeline.eval_batches(arrays, per_process * processes, i, processes):
      np.add.at(counts, b['y'][b['mask'] == 1], 1)
  np.testing.assert_array_equal(counts, 1)
