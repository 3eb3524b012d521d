"""The acceptance experiments on real data: minutes each, run with `make test-slow`."""

import os

import pytest

from frontiers_jax.training import loop
from conftest import load

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir():
  if not os.environ.get('FRONTIERS_DATA_DIR'):
    pytest.skip('FRONTIERS_DATA_DIR is not set: point it at the original MNIST files')
  return os.environ['FRONTIERS_DATA_DIR']


def test_mnist_random_labels_are_memorized_and_test_is_chance(tmp_path, data_dir):
  """Zhang et al. (2017), Table 1's finding on MNIST with an MLP."""
  config = load('generalization.py:mnist', randomization='random_labels')
  summary = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['final']['eval_train/accuracy'] >= 0.99
  assert 0.07 <= summary['final']['eval/accuracy'] <= 0.13


def test_mnist_standard_training_is_accurate_and_not_robust(tmp_path, data_dir):
  """Issue #3, acceptance 1: >= 99 % clean, PGD-40 (eps 0.3, step 0.01) <= 1 %."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from frontiers_jax import attacks  # noqa: PLC0415

  workdir = str(tmp_path / 'run')
  run = loop.prepare(load('adversarial.py:mnist'), workdir)
  loop.run_training(run)
  state = loop.restore_trained(run)

  @jax.jit
  def counts(x, y, key):
    logits_fn = lambda v: state.apply_fn({'params': state.params}, v)
    _, fooled = attacks.pgd(logits_fn, x, y, key, eps=0.3, step_size=0.01, steps=40)
    return jnp.sum(jnp.argmax(logits_fn(x), -1) == y), jnp.sum(~fooled)

  test = run.data['test']
  clean = robust = 0
  for i in range(0, len(test['label']), 500):
    c, r = counts(test['image'][i:i + 500], test['label'][i:i + 500],
                  jax.random.fold_in(jax.random.key(1), i))
    clean, robust = clean + int(c), robust + int(r)
  assert clean / len(test['label']) >= 0.99
  assert robust / len(test['label']) <= 0.01
