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
