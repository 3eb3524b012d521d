"""The acceptance experiments on real data: minutes each, run with `make test-slow`."""

import json
import os
import subprocess
import sys

import pytest

from frontiers_jax import runs
from frontiers_jax.training import loop
from conftest import REPO, load

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir():
  if not os.environ.get('FRONTIERS_DATA_DIR'):
    pytest.skip('FRONTIERS_DATA_DIR is not set: point it at the original MNIST files')
  return os.environ['FRONTIERS_DATA_DIR']


def test_mnist_random_labels_are_memorized_and_test_is_chance(tmp_path, data_dir):
  """Zhang et al. (2017), Table 1's finding on MNIST with an MLP."""
  config = load('generalization.py:mnist', randomization='random_labels')
  summary = runs.train(config, str(tmp_path / 'run'))
  assert summary['final']['eval_train/accuracy'] >= 0.99
  assert 0.07 <= summary['final']['eval/accuracy'] <= 0.13


def test_mnist_standard_training_is_accurate_and_not_robust(tmp_path, data_dir):
  """MNIST, standard training: >= 99 % clean, PGD-40 (eps 0.3, step 0.01) <= 1 %."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from frontiers_jax.adversarial import attacks  # noqa: PLC0415

  workdir = str(tmp_path / 'run')
  run = runs.prepare(load('adversarial.py:mnist'), workdir)
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


def test_digits_diffusion_few_step_samplers_match_ddpm(tmp_path):
  """Few-step samplers match DDPM, on the demo's digits model (embedded data): FID of
  DDIM-50 and DPM-Solver++-20 within 10 % of ancestral DDPM over all 1000 steps,
  2000 samples each. The README's two commands, on one device (the suite's 8
  fake devices on one core make the 2 million DDPM network calls crawl)."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  workdir = str(tmp_path / 'run')
  for command in (
      ['launch/train.py', '--config=configs/diffusion.py:digits', f'--workdir={workdir}'],
      ['launch/evaluate.py', f'--workdir={workdir}', '--config.eval.num_samples=2000',
       "--config.eval.fid_samplers=ddpm,ddim:50,dpm_solver:20",
       '--config.eval.bpd_examples=0']):
    done = subprocess.run([sys.executable, *command], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
  with open(os.path.join(workdir, 'generation.json')) as f:
    fid = json.load(f)['fid']
  reference = fid['ddpm']['1000']
  assert abs(fid['ddim']['50'] - reference) <= 0.1 * reference, fid
  assert abs(fid['dpm_solver']['20'] - reference) <= 0.1 * reference, fid
