"""The shared loop, in process: outputs, sharding, tracing, resume, failures."""

import glob
import json
import os
import signal
import threading
import time

import chex
import jax
import numpy as np
import pytest

from frontiers_jax import runs
from frontiers_jax.training import loop
from conftest import load


def _run(tmp_path, spec, name='run', **overrides):
  workdir = str(tmp_path / name)
  summary = runs.train(load(spec, **overrides), workdir)
  return workdir, summary


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize('spec', ['generalization.py:tiny', 'approximation.py:tiny'])
def test_tiny_run_writes_every_output(tmp_path, spec):
  workdir, summary = _run(tmp_path, spec)
  for name in ('config.json', 'metrics.jsonl', 'summary.json'):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert glob.glob(f'{workdir}/tensorboard/events.out.tfevents.*')
  assert sorted(os.listdir(f'{workdir}/checkpoints')) == ['12', '8']  # keep 2
  assert glob.glob(f'{workdir}/figures/*.png')
  records = _records(workdir)
  assert [r['step'] for r in records] == [3, 6, 9, 12]
  assert all(np.isfinite(v) for r in records for v in r.values())
  assert {'train/loss', 'eval/loss'} <= set(records[-1])
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f) == summary
  assert summary['final']['eval/loss'] == records[-1]['eval/loss']
  assert summary['devices']['count'] == 8 and summary['versions']['jax'] == jax.__version__
  assert summary['steps_per_s'] > 0


def test_training_reduces_the_loss(tmp_path):
  _, summary = _run(tmp_path, 'generalization.py:tiny', num_steps=60, log_every=20,
                    eval_every=60, **{'optim.learning_rate': 1e-2})
  records = _records(str(tmp_path / 'run'))
  assert records[-1]['train/loss'] < 0.7 * records[0]['train/loss']
  assert summary['final']['eval/accuracy'] > 0.5  # digits: chance is 0.1


def test_training_gives_sigterm_back_when_it_ends(tmp_path):
  """The loop turns SIGTERM into "checkpoint and stop" while it trains only:
  afterwards the handler that was there before is back."""
  def before(signum, frame):
    del signum, frame
  assert threading.current_thread() is threading.main_thread()  # Else none is installed.
  previous = signal.signal(signal.SIGTERM, before)
  try:
    _run(tmp_path, 'generalization.py:tiny')
    assert signal.getsignal(signal.SIGTERM) is before
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_at_most_two_steps_in_flight(tmp_path, monkeypatch):
  """Steps are dispatched asynchronously; unbounded, Python would run up to a
  log interval ahead of the device, and a SIGTERM's checkpoint would wait for
  all of those steps (minutes of a slow model: past a preemption's grace).
  Each step here sleeps 20 ms on the device; wherever the loop reads the
  preemption flag after step s, steps up to s - 2 must be done."""
  executed, lags = [], []
  make_train_step = loop.make_train_step

  def slow_make_train_step(workload, *args, **kwargs):
    def train_step(state, batch, rng):
      jax.debug.callback(lambda s: (time.sleep(0.02), executed.append(int(s))), state.step)
      return workload.train_step(state, batch, rng)
    return make_train_step(type('Slow', (), {'train_step': staticmethod(train_step)}),
                           *args, **kwargs)

  def notice():
    return (lambda step: lags.append(step - 1 - max(executed, default=-1)) or False,
            lambda: None)
  monkeypatch.setattr(loop, 'make_train_step', slow_make_train_step)
  monkeypatch.setattr(loop, '_preemption_notice', notice)
  _run(tmp_path, 'generalization.py:tiny', num_steps=30, log_every=30, eval_every=0,
       checkpoint_every=30)
  assert sorted(executed) == list(range(30))  # One call a step: the count is right.
  assert len(lags) == 30 and max(lags) <= 1, lags


@pytest.mark.parametrize('spec', ['generalization.py:tiny', 'approximation.py:tiny'])
def test_eight_devices_give_the_single_device_losses(tmp_path, spec):
  # The only difference is the order of summation across the batch shards.
  one = _records(_run(tmp_path, spec, 'one', num_devices=1)[0])
  eight = _records(_run(tmp_path, spec, 'eight', num_devices=8)[0])
  assert [r.keys() for r in one] == [r.keys() for r in eight]
  for a, b in zip(one, eight):
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-7, err_msg=key)


def test_train_step_compiles_once(tmp_path, monkeypatch):
  # Wrap the workload's step: the loop must trace it once for all 12 steps,
  # log resets and checkpoint saves included.
  from frontiers_jax.workloads import generalization
  original = generalization.Generalization.train_step
  traced = chex.assert_max_traces(n=1)(lambda self, *a: original(self, *a))
  monkeypatch.setattr(generalization.Generalization, 'train_step', traced)
  # eval_shape (for the metric zeros) traces once too: allow that by clearing.
  monkeypatch.setattr(loop, 'zero_metrics', _zero_metrics_without_tracing)
  _run(tmp_path, 'generalization.py:tiny')


def _zero_metrics_without_tracing(workload, state, batch):
  del workload, state, batch
  return {k: np.zeros((), np.float32) for k in ('loss', 'grad_norm', 'accuracy')}


def test_nan_stops_the_run_and_keeps_good_checkpoints(tmp_path):
  workdir = str(tmp_path / 'nan')
  config = load('generalization.py:tiny', **{'optim.learning_rate': 1e30,
                                              'checkpoint_every': 1})
  with pytest.raises(loop.Diverged, match=r'step \d+: train/\w+ is (nan|inf)'):
    runs.train(config, workdir)
  assert not os.path.exists(f'{workdir}/summary.json')
  saved = os.listdir(f'{workdir}/checkpoints')
  records = _records(workdir) if os.path.exists(f'{workdir}/metrics.jsonl') else []
  assert all(np.isfinite(v) for r in records for v in r.values())
  # Every checkpoint kept is at or before the last finite log step.
  last_good = records[-1]['step'] if records else 1
  assert all(int(s) <= max(last_good, 1) for s in saved if s.isdigit())


class _GroupedEval:
  """An eval step with a metric per group, as bias's aligned/conflicting ones."""
  extra_eval_splits = ()

  def derived_metrics(self, means):
    return {}


def _grouped_eval_step(state, batch):
  del state
  import jax.numpy as jnp
  group_a = (batch['group'] == 0) * batch['mask']
  group_b = (batch['group'] == 1) * batch['mask']
  return {'count': jnp.sum(batch['mask']), 'value': jnp.sum(batch['x'] * batch['mask']),
          'count_a_value': jnp.sum(group_a), 'a_value': jnp.sum(batch['x'] * group_a),
          'count_b_value': jnp.sum(group_b), 'b_value': jnp.sum(batch['x'] * group_b)}


def test_evaluate_divides_by_each_metrics_count_and_skips_empty_groups():
  from frontiers_jax.training import sharding
  mesh = sharding.make_mesh(0)
  x = np.arange(20, dtype=np.float32)
  group = np.zeros(20, np.int32)  # group 1 has no example
  group[:7] = 0
  data = {'test': {'x': x, 'group': group}}
  results = loop.evaluate(_GroupedEval(), jax.jit(_grouped_eval_step), mesh, None, data,
                          batch_size=8)  # 20 is not a multiple: a padded, masked batch
  assert results == {'eval/value': pytest.approx(x.mean()),
                     'eval/a_value': pytest.approx(x.mean())}
  group[::2] = 1
  results = loop.evaluate(_GroupedEval(), jax.jit(_grouped_eval_step), mesh, None, data,
                          batch_size=8)
  assert results['eval/a_value'] == pytest.approx(x[1::2].mean())
  assert results['eval/b_value'] == pytest.approx(x[::2].mean())
