"""A workdir in a bucket (`--workdir=gs://bucket/run`, as launch/tpu_vm.py
uses): what process 0 writes goes through `etils.epath`.

There is no network here: an in-memory fsspec file system stands in for gcsfs
behind `gs://`. Orbax writes gs:// checkpoints with its own GCS driver; that
part is not exercised.
"""

import json
import os
import uuid

import pytest
import tensorboardX
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import _registry as fsspec_protocols

from frontiers_jax.training import logs
from frontiers_jax.training import loop


@pytest.fixture
def bucket(monkeypatch):
  """A fresh gs:// workdir in memory; TensorBoard events are not written
  (tensorboardX writes gs:// with google-cloud-storage)."""
  monkeypatch.setitem(fsspec_protocols, 'gcs', MemoryFileSystem)

  class NoEvents:
    def __init__(self, logdir):
      assert logdir.startswith('gs://')

    add_scalar = flush = close = lambda self, *args: None

  monkeypatch.setattr(tensorboardX, 'SummaryWriter', NoEvents)
  return f'gs://bucket/{uuid.uuid4().hex}'


def test_metrics_are_written_rewound_and_read_back(bucket):
  log = logs.MetricsLog(bucket)
  for step in (3, 6, 9):
    log.write(step, {'train/loss': 1.0 / step})
  assert [r['step'] for r in logs.read_history(bucket)] == [3, 6, 9]
  log.rewind(6)  # A resume from the step-6 checkpoint.
  log.write(9, {'train/loss': 0.5})
  log.close()
  text = (epath.Path(bucket) / 'metrics.jsonl').read_text()
  assert text.splitlines() == [json.dumps({'step': 3, 'train/loss': 1 / 3}),
                               json.dumps({'step': 6, 'train/loss': 1 / 6}),
                               json.dumps({'step': 9, 'train/loss': 0.5})]
  assert sorted(p.name for p in epath.Path(bucket).iterdir()) == ['metrics.jsonl']


def test_figures_are_drawn_locally_and_copied(bucket):
  class Workload:
    def report(self, state, data, history, fig_dir):
      assert not logs.is_remote(fig_dir)  # matplotlib writes local files
      paths = [os.path.join(fig_dir, name) for name in ('a.png', 'b.txt')]
      for path in paths:
        with open(path, 'w') as f:
          f.write(os.path.basename(path))
      return {'test/score': 1.0}, paths

  fig_dir = f'{bucket}/figures'
  metrics, paths = loop._report(Workload(), None, None, [], fig_dir)
  assert metrics == {'test/score': 1.0}
  assert paths == [f'{fig_dir}/a.png', f'{fig_dir}/b.txt']
  assert [epath.Path(p).read_text() for p in paths] == ['a.png', 'b.txt']


def test_a_bucket_workdir_is_not_checked_as_a_local_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  loop.check_workdir('gs://bucket/run')
  assert not os.listdir(tmp_path)  # no local 'gs:' folder
