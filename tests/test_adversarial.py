"""The adversarial workload: training methods, robust evaluation, TRADES' adversary."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frontiers_jax import runs
from frontiers_jax.workloads import adversarial
from conftest import load


@pytest.mark.parametrize('method', adversarial.METHODS)
def test_tiny_run_of_each_training_method(tmp_path, method):
  summary = runs.train(load('adversarial.py:tiny', train_method=method),
                                    str(tmp_path / method))
  final = summary['final']
  assert 0 <= final['eval/robust_accuracy'] <= final['eval/accuracy'] <= 1
  assert all(np.isfinite(v) for v in final.values())
  if method == 'trades':
    assert final['train/kl'] >= 0
  assert sorted(summary['figures']) == ['adversarial_examples.png', 'robust_accuracy.png']


def test_trades_adversary_stays_in_the_ball_and_the_box():
  w = jax.random.normal(jax.random.key(0), (16, 3))
  logits_fn = lambda x: x.reshape(len(x), -1) @ w
  x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
  x_adv = adversarial.trades_adversary(logits_fn, x, jax.random.key(2), 0.1, 0.03, 10)
  assert float(jnp.abs(x_adv - x).max()) <= 0.1 + 1e-6
  assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
  assert float(jnp.abs(x_adv - x).max()) > 0.05  # it moved


def test_pgd_training_buys_robustness_on_digits(tmp_path):
  """Madry et al. in miniature: the PGD-trained model resists PGD better."""
  results = {}
  for method in ('standard', 'pgd'):
    config = load('adversarial.py:digits', train_method=method, num_steps=300,
                  eval_every=300, log_every=100, checkpoint_every=300,
                  **{'attack.train_steps': 4, 'attack.eval_steps': 10,
                     'attack.step_size': 0.1, 'optim.learning_rate': 3e-3})
    results[method] = runs.train(config, str(tmp_path / method))['final']
  standard, robust = results['standard'], results['pgd']
  assert standard['eval/accuracy'] > 0.85
  assert standard['eval/robust_accuracy'] < standard['eval/accuracy'] - 0.5  # attack works
  assert robust['eval/robust_accuracy'] > standard['eval/robust_accuracy'] + 0.15
