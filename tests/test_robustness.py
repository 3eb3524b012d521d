"""Robustness evaluation: per-attack and worst-case accuracy, masking checks."""

import json
import os
import subprocess
import sys

import pytest

from frontiers_jax.adversarial import robustness
from conftest import REPO


def _result(**accuracy):
  eps = [0.1, 0.3, 1.0]
  worst = [min(v[i] for v in accuracy.values()) for i in range(len(eps))]
  return {'eps': eps, 'accuracy': accuracy, 'worst_case': worst, 'clean_accuracy': 0.99}


def test_a_sound_evaluation_raises_no_warning():
  assert robustness.masking_checks(_result(
      fgsm=[0.6, 0.3, 0.0], pgd=[0.5, 0.1, 0.0], **{'pgd-long': [0.5, 0.09, 0.0]},
      square=[0.55, 0.2, 0.0])) == []


@pytest.mark.parametrize('accuracy, phrase', [
    ({'pgd': [0.5, 0.6, 0.0]}, 'rises with eps'),
    ({'pgd': [0.5, 0.4, 0.3]}, 'not about 0'),
    ({'fgsm': [0.3, 0.1, 0.0], 'pgd': [0.5, 0.1, 0.0]}, 'weaker than FGSM'),
    ({'pgd': [0.5, 0.3, 0.0], 'square': [0.2, 0.3, 0.0]}, 'beats the white-box'),
    ({'pgd': [0.5, 0.3, 0.0], 'pgd-long': [0.6, 0.3, 0.0]}, 'raised robust accuracy'),
])
def test_each_sign_of_gradient_masking_is_flagged(accuracy, phrase):
  warnings = robustness.masking_checks(_result(**accuracy))
  assert any(phrase in w for w in warnings), warnings


def test_the_unbounded_check_waits_for_an_unbounded_eps():
  """A robust model at a bounded eps is no sign of masking; at eps 1 it is."""
  bounded = _result(pgd=[0.9, 0.8, 0.7])
  assert not robustness.masking_checks(bounded, unbounded_eps=10.0)
  assert any('not about 0' in w for w in robustness.masking_checks(bounded, unbounded_eps=0.5))


def test_evaluate_launcher_on_a_tiny_run(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  workdir = str(tmp_path / 'run')
  train = [sys.executable, 'launch/train.py', '--config=configs/adversarial.py:tiny',
           f'--workdir={workdir}', '--config.quiet=true']
  subprocess.run(train, cwd=REPO, env=env, check=True, capture_output=True)
  evaluate = [sys.executable, 'launch/evaluate.py', f'--workdir={workdir}',
              '--config.robustness.attacks=fgsm,pgd', '--config.robustness.l2_eps=()',
              '--config.robustness.num_examples=64',
              '--config.robustness.eot_examples=0', '--config.quiet=false']
  out = subprocess.run(evaluate, cwd=REPO, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  # Progress on stderr, the last line for all 2 eps x 2 attacks x 64 images;
  # nothing of it on stdout, which holds the table.
  progress = [line for line in out.stderr.splitlines() if line.startswith('[evaluate linf]')]
  assert progress and progress[-1].startswith(
      '[evaluate linf] eps 1, pgd: 256/256 attacked images (100.0%)  in '), out.stderr
  assert '[evaluate' not in out.stdout and 'worst case' in out.stdout
  with open(os.path.join(workdir, 'robustness.json')) as f:
    result = json.load(f)
  linf = result['linf']
  assert linf['eps'] == [0.1, 1.0] and linf['num_examples'] == 64
  assert set(linf['accuracy']) == {'fgsm', 'pgd'} and 'l2' not in result
  for name, values in linf['accuracy'].items():
    assert all(0 <= v <= linf['clean_accuracy'] + 1e-9 for v in values), name
  assert linf['worst_case'] == [min(v[i] for v in linf['accuracy'].values())
                                for i in range(2)]
  assert os.path.isfile(os.path.join(workdir, 'figures', 'robustness_linf.png'))


def test_evaluate_without_a_run_is_a_one_line_error(tmp_path):
  out = subprocess.run([sys.executable, 'launch/evaluate.py', f'--workdir={tmp_path}'],
                       cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 2
  assert out.stderr.strip().startswith('error: workdir:') and 'config.json' in out.stderr
