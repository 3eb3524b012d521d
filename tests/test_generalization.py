"""The randomization spectrum of Zhang et al. (2017), and the workload."""

import numpy as np
import pytest

from frontiers_jax import runs
from frontiers_jax.workloads import generalization as gen
from conftest import load

MOMENTS = (0.3, 0.2)


def _split(n=2000, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.random((n, 6, 5, 1)).astype(np.float32),
          'label': rng.integers(0, 10, n).astype(np.int32)}


def test_none_changes_nothing():
  split = _split()
  out = gen.randomize(split, 'none', 0.5, 0, True, MOMENTS)
  np.testing.assert_array_equal(out['image'], split['image'])
  np.testing.assert_array_equal(out['label'], split['label'])


@pytest.mark.parametrize('kind, p', [('partial', 0.0), ('partial', 0.3),
                                     ('partial', 1.0), ('random_labels', 0.2)])
def test_label_noise_replaces_the_stated_fraction(kind, p):
  split = _split()
  out = gen.randomize(split, kind, p, 0, True, MOMENTS)
  fraction = 1.0 if kind == 'random_labels' else p
  # A replaced label keeps its old value with probability 1/10.
  changed = np.mean(out['label'] != split['label'])
  assert abs(changed - 0.9 * fraction) < 0.035
  np.testing.assert_array_equal(out['image'], split['image'])
  test = gen.randomize(split, kind, p, 0, False, MOMENTS)  # test labels stay real
  np.testing.assert_array_equal(test['label'], split['label'])


def test_shuffled_pixels_is_one_permutation_for_train_and_test():
  train, test = _split(50, 1), _split(50, 2)
  out_train = gen.randomize(train, 'shuffled_pixels', 0, 7, True, MOMENTS)
  out_test = gen.randomize(test, 'shuffled_pixels', 0, 7, False, MOMENTS)
  flat = lambda s: s['image'].reshape(len(s['image']), -1)
  # Recover the permutation from the first training image; it fits all images.
  perm = np.array([np.flatnonzero(flat(train)[0] == v)[0] for v in flat(out_train)[0]])
  np.testing.assert_array_equal(flat(out_train), flat(train)[:, perm])
  np.testing.assert_array_equal(flat(out_test), flat(test)[:, perm])
  assert not np.array_equal(perm, np.arange(len(perm)))


def test_random_pixels_permutes_each_image_differently():
  split = _split(50)
  out = gen.randomize(split, 'random_pixels', 0, 0, True, MOMENTS)
  flat_in = split['image'].reshape(50, -1)
  flat_out = out['image'].reshape(50, -1)
  np.testing.assert_array_equal(np.sort(flat_in, 1), np.sort(flat_out, 1))
  perms = {tuple(np.argsort(np.argsort(f))) for f in flat_out}
  assert len(perms) == 50


def test_gaussian_matches_the_data_moments():
  out = gen.randomize(_split(4000), 'gaussian', 0, 0, True, MOMENTS)
  assert abs(out['image'].mean() - MOMENTS[0]) < 0.01
  assert abs(out['image'].std() - MOMENTS[1]) < 0.01


@pytest.mark.parametrize('kind', gen.RANDOMIZATIONS)
def test_randomization_is_deterministic_in_the_seed(kind):
  a = gen.randomize(_split(), kind, 0.5, 3, True, MOMENTS)
  b = gen.randomize(_split(), kind, 0.5, 3, True, MOMENTS)
  c = gen.randomize(_split(), kind, 0.5, 4, True, MOMENTS)
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  if kind != 'none':
    assert not (np.array_equal(a['image'], c['image']) and
                np.array_equal(a['label'], c['label']))


def test_steps_to_fit():
  history = [{'step': 10, 'eval_train/accuracy': 0.5}, {'step': 20, 'train/loss': 1.0},
             {'step': 30, 'eval_train/accuracy': 0.995}]
  assert gen.steps_to_fit(history) == 30
  assert gen.steps_to_fit(history[:2]) is None


def test_mlp_memorizes_random_labels_of_a_small_set(tmp_path):
  """The paper's finding in miniature: a fit of noise, test at chance."""
  config = load('generalization.py:tiny', randomization='random_labels',
                num_steps=300, log_every=100, eval_every=300,
                **{'model.hidden': '(256,)', 'optim.learning_rate': 3e-3,
                   'data.train_size': 128, 'optim.schedule': 'constant'})
  summary = runs.train(config, str(tmp_path / 'run'))
  assert summary['final']['eval_train/accuracy'] == 1.0
  assert summary['final']['eval/accuracy'] < 0.25
