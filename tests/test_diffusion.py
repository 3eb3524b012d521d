"""The diffusion workload: training, EMA, sampling launcher, evaluation."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frontiers_jax import runs
from frontiers_jax import workloads
from frontiers_jax.errors import UsageError
from frontiers_jax.training import loop
from frontiers_jax.workloads import diffusion
from frontiers_jax.workloads import diffusion_scores
from attack_models import fast_jit
from conftest import REPO, load

# Tiny programs: compiling dominates, so the launcher runs skip most of XLA's
# optimizations.
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1',
       'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """A tiny conditional run trained by the launcher: (workdir, summary)."""
  workdir = str(tmp_path_factory.mktemp('diffusion') / 'run')
  train = [sys.executable, 'launch/train.py', '--config=configs/diffusion.py:tiny',
           f'--workdir={workdir}', '--config.quiet=true']
  done = subprocess.run(train, cwd=REPO, env=ENV, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  with open(os.path.join(workdir, 'summary.json')) as f:
    return workdir, json.load(f)


def test_tiny_run_writes_every_figure(tiny_run):
  workdir, summary = tiny_run
  assert np.isfinite(summary['final']['eval/loss'])
  assert sorted(summary['figures']) == [
      'diffusion_forward.png', 'diffusion_loss.png', 'diffusion_reverse.png',
      'diffusion_samples.png', 'diffusion_samples_guided.png']
  for name in summary['figures']:
    assert os.path.getsize(os.path.join(workdir, 'figures', name)) > 1000


def test_training_learns_to_denoise_digits_and_averages_parameters():
  """The test loss of eps prediction starts at 1 (the zero-initialised UNet
  predicts 0 and E|eps|^2 = 1) and must fall far below it; the EMA follows
  its formula."""
  config = load('diffusion.py:tiny', num_steps=120, **{
      'diffusion.num_timesteps': 100, 'optim.learning_rate': 3e-3,
      'optim.warmup_steps': 10})
  workload = diffusion.Diffusion(config)
  data = workload.load_data()
  train, test = data['train'], data['test']
  rng = np.random.default_rng(0)
  batch = lambda split, idx: {'image': jnp.asarray(split['image'][idx]),
                              'label': jnp.asarray(split['label'][idx]),
                              'mask': jnp.ones(len(idx))}
  state = fast_jit(workload.create_state)(jax.random.key(0), batch(train, np.arange(32)))
  step, evaluate = fast_jit(workload.train_step), fast_jit(workload.eval_step)
  test_batch = batch(test, np.arange(256))
  before = evaluate(state, test_batch)
  for i in range(config.num_steps):
    state, _ = step(state, batch(train, rng.choice(len(train['image']), 32)),
                    jax.random.key(i))
  after = evaluate(state.replace(ema_params=state.params), test_batch)
  loss = lambda sums: float(sums['loss'] / sums['count'])
  assert abs(loss(before) - 1.0) < 0.1
  assert loss(after) < 0.45, (loss(before), loss(after))

  # The EMA: ema <- d ema + (1 - d) params_new, d = min(decay, (1 + n) / (10 + n))
  # at step n: 0.1 at the first step, the configured 0.999 from step 9000 on.
  one_batch = batch(train, np.arange(32))
  for n, decay in ((0, 0.1), (9000, 0.999)):
    state = state.replace(step=n, ema_params=jax.tree.map(lambda p: p + 0.01, state.params))
    new, metrics = step(state, one_batch, jax.random.key(n))
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params,
                            new.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 new.ema_params, expected)
    assert np.isfinite(float(metrics['loss'])) and float(metrics['grad_norm']) > 0


@pytest.mark.parametrize('prompt, dataset, label', [
    ('a sneaker', 'fashion_mnist', 7), ('An ankle boot', 'fashion_mnist', 9),
    ('bags', 'fashion_mnist', 8), ('a seven', 'mnist', 7), ('3', 'digits', 3)])
def test_prompts_name_classes(prompt, dataset, label):
  assert diffusion.label_from_prompt(prompt, dataset) == label


def test_unknown_prompt_lists_the_classes():
  with pytest.raises(UsageError, match="'a giraffe' names no class.*\"a sneaker\""):
    diffusion.label_from_prompt('a giraffe', 'fashion_mnist')


@pytest.mark.parametrize('spec, expected', [('ddpm', ('ddpm', 20)), ('ddim:5', ('ddim', 5)),
                                            ('dpm_solver:20', ('dpm_solver', 20))])
def test_sampler_specs(spec, expected):
  assert diffusion.parse_sampler(spec, 20) == expected


@pytest.mark.parametrize('spec', ['ddpm:7', 'ddim', 'ddim:0', 'ddim:21', 'euler:5'])
def test_bad_sampler_specs(spec):
  with pytest.raises(UsageError):
    diffusion.parse_sampler(spec, 20)


def run_sample(workdir, *flags):
  command = [sys.executable, 'launch/sample.py', f'--workdir={workdir}', *flags]
  return subprocess.run(command, cwd=REPO, env={**ENV, 'JAX_LOG_COMPILES': '1'},
                        capture_output=True, text=True, timeout=120)


def test_sample_launcher_writes_a_grid_and_the_images(tiny_run, tmp_path):
  workdir, _ = tiny_run
  out = str(tmp_path / 'samples')
  done = run_sample(workdir, '--sampler=dpm_solver', '--steps=3', '--num=5',
                    '--prompt=a seven', '--guidance=2', f'--out={out}')
  assert done.returncode == 0, done.stderr
  images = np.load(out + '.npy')
  assert images.shape == (5, 8, 8, 1)
  assert images.min() >= 0 and images.max() <= 1
  assert os.path.getsize(out + '.png') > 1000


@pytest.mark.parametrize('flags, message', [
    (['--sampler=ddpm', '--steps=7'], "sampler: 'ddpm:7': ddpm takes all 20 steps"),
    (['--label=12'], 'label: 12 is out of range'),
    (['--prompt=a giraffe'], "prompt: 'a giraffe' names no class of digits"),
    (['--prompt=a seven', '--prompt=a one'], 'prompt: given 2 times'),
])
def test_bad_sample_flags_are_one_line_before_compiling(tiny_run, flags, message):
  workdir, _ = tiny_run
  done = run_sample(workdir, *flags)
  assert done.returncode == 2, done.stderr
  lines = [line for line in done.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1 and message in lines[0], done.stderr
  assert 'Compiling' not in done.stderr and 'Traceback' not in done.stderr


def test_evaluation_reports_fid_accuracy_and_bits(tiny_run):
  workdir, _ = tiny_run
  config = load('diffusion.py:tiny')
  run = runs.prepare(config, workdir)
  state = loop.restore_trained(run)
  result = diffusion_scores.evaluate_generation(run.workload, state, run.data, workdir,
                                                say=lambda _: None)
  assert set(result['fid']) == {'ddpm', 'ddim', 'dpm_solver'}
  assert result['fid']['ddpm'][20] >= 0 and result['fid_floor'] >= 0
  assert 0 <= result['conditional_accuracy'] <= 1
  assert len(result['conditional_accuracy_per_class']) == 10
  assert 0 < result['bits_per_dim'] < 100
  with open(os.path.join(workdir, 'generation.json')) as f:
    assert json.load(f)['num_samples'] == 64
  assert os.path.isfile(os.path.join(workdir, 'figures', 'fid_vs_steps.png'))
  # The feature classifier is trained once and reused.
  assert os.path.isfile(os.path.join(workdir, 'classifier', 'summary.json'))


def test_fewer_images_than_a_batch_are_drawn_as_one_batch_of_that_size():
  workload = workloads.create(load('diffusion.py:tiny'))  # eval.batch_size 32
  drawn = []

  def generate(state, key, batch, image_shape, sampler, steps, labels, guidance):
    del state, key, sampler, steps, guidance
    drawn.append((batch, len(labels)))
    return np.zeros((batch,) + image_shape)
  workload.generate = generate
  for num in (5, 32, 40):
    images = workload.generate_many(None, jax.random.key(0), num, (8, 8, 1), 'ddim', 5,
                                    np.arange(num) % 10)
    assert images.shape == (num, 8, 8, 1)
  assert drawn == [(5, 5), (32, 32), (32, 32), (32, 32)]


def test_bad_spacing_is_one_usage_error():
  config = load('diffusion.py:tiny', **{'sample.spacing': 'cubic'})
  with pytest.raises(UsageError, match="config.sample.spacing.*'cubic'"):
    diffusion.Diffusion(config).validate()
