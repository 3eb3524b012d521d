"""The language-model workload: data, steps, metrics, launchers, sweep."""

import dataclasses
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frontiers_jax import config as config_lib
from frontiers_jax import runs
from frontiers_jax import sweep
from frontiers_jax.data import pipeline
from frontiers_jax.errors import UsageError
from frontiers_jax.lm import arithmetic, model as model_lib
from frontiers_jax.training import loop, optim, perf
from frontiers_jax.workloads import lm
from frontiers_jax.workloads.base import SampleRequest
from attack_models import fast_jit
from conftest import REPO, load

ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1',
       'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
# A small English text for runs on a UTF-8 file (`data.path`).
TEXT = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\n'
        'All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die '
        'than to famish?\n\nAll:\nResolved. resolved.\n\n') * 12


def text_config(path: str, **overrides):
  """The tiny schedule on a text file, with a 2-layer char model."""
  return load('lm.py:tiny', **{
      'data.name': 'tiny_shakespeare', 'data.path': path, 'model.context': 16,
      'model.num_layers': 2, 'model.width': 32, 'sample.num_tokens': 20,
      'sample.prompt': 'All:', 'sample.num_samples': 2, **overrides})


@pytest.fixture(scope='module', autouse=True)
def _fast_compile(fast_compile):
  """Every test here runs with few XLA optimizations (conftest.fast_compile)."""


@pytest.fixture(scope='module')
def text_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('text') / 'speech.txt'
  path.write_text(TEXT)
  return str(path)


# -- Data --------------------------------------------------------------------------


@pytest.mark.parametrize('n', [10, 17, 64, 65, 66])
@pytest.mark.parametrize('context', [1, 4, 16])
def test_covering_windows_predict_every_token_but_the_first_once(n, context):
  tokens = np.arange(n) * 3 + 1  # distinct values stand for positions
  if n <= context:
    with pytest.raises(UsageError, match='context'):
      pipeline.covering_windows(tokens, context)
    return
  windows = pipeline.covering_windows(tokens, context)
  assert windows['tokens'].shape[1] == context + 1
  counted = np.zeros(n)
  targets = (windows['tokens'][:, 1:] - 1) // 3
  np.add.at(counted, targets.ravel(), windows['weights'].ravel())
  np.testing.assert_array_equal(counted, [0] + [1] * (n - 1))
  # Every window is a contiguous piece of the stream.
  assert np.all(np.diff(windows['tokens'], axis=1) == 3)


def test_random_windows_depend_on_seed_and_step_and_split_over_processes():
  tokens = np.arange(1000)
  whole = pipeline.RandomWindows(tokens, 9, 8, seed=3)
  again = pipeline.RandomWindows(tokens, 9, 8, seed=3)
  np.testing.assert_array_equal(whole(5)['tokens'], again(5)['tokens'])
  assert not np.array_equal(whole(5)['tokens'], whole(6)['tokens'])
  batch = whole(5)['tokens']
  assert batch.shape == (8, 9) and np.all(np.diff(batch, axis=1) == 1)
  assert batch.max() < 1000
  parts = [pipeline.RandomWindows(tokens, 9, 8, 3, i, 2)(5)['tokens'] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), batch)
  with pytest.raises(UsageError, match='context'):
    pipeline.RandomWindows(np.arange(9), 9, 8, 0)


def test_arithmetic_problems_are_right_held_out_and_deterministic():
  for reverse in (False, True):
    splits = arithmetic.make_splits(3, 500, 100, seed=0, reverse=reverse)
    tok = arithmetic.tokenizer()
    for row in splits['test']['tokens'][:50]:
      text = tok.decode(row)
      question, answer = text.split('=')
      a, b = map(int, question.split('+'))
      assert len(text) == 12 and arithmetic.read_answer(answer, reverse) == a + b
    codes = lambda s: {tok.decode(r)[:8] for r in s['tokens']}
    assert len(codes(splits['train'])) == 500 and len(codes(splits['test'])) == 100
    assert not codes(splits['train']) & codes(splits['test'])
    assert splits['train']['weights'][0].tolist() == [0] * 7 + [1] * 4
  again = arithmetic.make_splits(3, 500, 100, seed=0, reverse=True)
  np.testing.assert_array_equal(again['train']['tokens'], splits['train']['tokens'])
  assert arithmetic.format_problem(123, 456, 3, reverse=False) == '123+456=0579'
  assert arithmetic.format_problem(999, 1, 3, reverse=True) == '999+001=0001'
  with pytest.raises(UsageError, match='num_train'):
    arithmetic.make_splits(1, 90, 20, seed=0, reverse=True)


# -- Optimizer --------------------------------------------------------------------------


def test_adamw_decays_matrices_only_and_cosine_reaches_its_floor():
  c = load('lm.py:tiny').optim
  schedule = optim.learning_rate_schedule(c, 100)
  assert float(schedule(0)) == 0.0
  assert math.isclose(float(schedule(c.warmup_steps)), c.learning_rate, rel_tol=1e-6)
  assert math.isclose(float(schedule(100)), c.final_learning_rate, rel_tol=1e-6)
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2), 'scale': jnp.ones(2)}
  tx = optim.make_optimizer(c, 100)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  for _ in range(5):  # past warm-up's zero rate at step 0
    updates, state = tx.update(zero_grads, state, params)
  # With zero gradients only weight decay moves a parameter.
  assert float(jnp.abs(updates['kernel']).max()) > 0
  assert float(jnp.abs(updates['bias']).max()) == 0
  assert float(jnp.abs(updates['scale']).max()) == 0


# -- Steps ------------------------------------------------------------------------------


def _workload_and_batch(text_file, **overrides):
  workload = lm.LanguageModel(text_config(text_file, **overrides))
  data = workload.load_data()
  batch = jax.tree.map(jnp.asarray, workload.train_batches(data, 16, seed=0)(0))
  return workload, data, batch


def test_gradient_accumulation_gives_the_step_of_the_whole_batch(text_file):
  workload, _, batch = _workload_and_batch(text_file)
  state = fast_jit(workload.create_state)(jax.random.key(0), batch)
  whole, m1 = fast_jit(workload.train_step)(state, batch, jax.random.key(1))
  workload.config.unlock()
  workload.config.optim.accumulation_steps = 4
  # XLA counts the scan's body once: the loop multiplies its FLOPs back.
  assert workload.perf_spec().loop_iterations == 4
  parts, m4 = fast_jit(workload.train_step)(state, batch, jax.random.key(1))
  for k in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5)
  chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  jax.tree.map(chex_close, whole.params, parts.params)


def test_train_loss_is_the_mean_token_cross_entropy_in_float64(text_file):
  workload, _, batch = _workload_and_batch(text_file)
  state = fast_jit(workload.create_state)(jax.random.key(0), batch)
  _, metrics = fast_jit(workload.train_step)(state, batch, jax.random.key(1))
  logits = np.asarray(workload.model.apply({'params': state.params}, batch['tokens'][:, :-1]),
                      np.float64)
  targets = np.asarray(batch['tokens'][:, 1:])
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  expected = np.mean(log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0])
  assert math.isclose(float(metrics['loss']), expected, rel_tol=1e-5)
  # An untrained model is near uniform: loss near log(vocabulary).
  assert abs(expected - math.log(workload.tokenizer.vocab_size)) < 0.1


def test_xla_flops_agree_with_the_closed_form(text_file):
  workload, _, batch = _workload_and_batch(text_file, **{'model.width': 64})
  state = fast_jit(workload.create_state)(jax.random.key(0), batch)
  flops = perf.step_flops(jax.jit(workload.train_step), state, batch, jax.random.key(0))
  formula = workload.formula_flops_per_step() * 16 / workload.config.batch_size
  # The formula counts matmuls only; XLA adds softmax, norms and the update.
  assert 0.9 < flops / formula < 1.6, (flops, formula)
  assert perf.mfu(2e9, 0.5, 2e9, 2) == 1 / 0.5 / 2


def test_matmul_peak_is_a_plausible_rate():
  peak = perf.matmul_peak(jnp.float32)
  assert 1e8 < peak < 1e15


def test_the_mfu_peak_is_printed_as_measured(text_file):
  workload, _, _ = _workload_and_batch(text_file, **{'model.dtype': 'bfloat16'})
  speed = loop._Speed(workload, batch_size=16, num_devices=2)
  speed.peak_per_device = 6.614e10
  assert speed.describe() == ('MFU peak: 66.1 GFLOP/s per device x 2, measured now '
                              '(bfloat16 matmuls)')


# -- Runs through the shared loop -------------------------------------------------------


@pytest.fixture(scope='module')
def text_run(tmp_path_factory, text_file):
  workdir = str(tmp_path_factory.mktemp('lm') / 'run')
  config = text_config(text_file)
  summary = runs.train(config, workdir)
  return workdir, summary


def test_text_run_reports_loss_perplexity_bits_and_speed(text_run):
  workdir, summary = text_run
  final = summary['final']
  assert math.isclose(final['eval/perplexity'], math.exp(final['eval/loss']), rel_tol=1e-6)
  # ASCII text and one character per token: bits per byte = loss / ln 2.
  assert math.isclose(final['eval/bits_per_byte'], final['eval/loss'] / math.log(2),
                      rel_tol=1e-5)
  assert summary['tokens_per_s'] == pytest.approx(summary['examples_per_s'] * 16)
  assert 0 < summary['mfu'] < 1
  assert summary['flops_per_step'] > 0 and summary['peak_flops_per_device'] > 0
  with open(os.path.join(workdir, 'figures', 'samples.txt')) as f:
    samples = f.read()
  assert samples.count('--- sample') == 2 and 'All:' in samples


def test_bpe_run_counts_bits_per_byte_of_the_text(text_file, tmp_path):
  config = text_config(text_file, **{'data.tokenizer': 'bpe', 'data.vocab_size': 300,
                                     'num_steps': 3, 'eval_every': 0})
  summary = runs.train(config, str(tmp_path / 'bpe'))
  final = summary['final']
  # Each BPE token covers more than one byte: fewer bits per byte than per token.
  assert final['eval/bits_per_byte'] < 0.8 * final['eval/loss'] / math.log(2)


def test_sample_launcher_prints_text(text_run):
  workdir, _ = text_run
  sample = [sys.executable, 'launch/sample.py', f'--workdir={workdir}', '--prompt=All:',
            '--prompt=First Citizen, hear', '--num_tokens=12', '--temperature=0.8',
            '--top_k=5', '--top_p=0.9', '--seed=3', '--num_samples=2']
  done = subprocess.run(sample, cwd=REPO, env=ENV, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert done.stdout.count('--- sample') == 4
  assert done.stdout.count("(prompt 'All:') ---\nAll:") == 2
  # A comma is part of the prompt: the repeated flag never splits its value.
  assert done.stdout.count("(prompt 'First Citizen, hear') ---\nFirst Citizen, hear") == 2
  with open(os.path.join(workdir, 'samples', 'lm_seed3.txt')) as f:
    written = f.read()
  assert written in done.stdout
  bad = subprocess.run(sample + ['--top_p=0'], cwd=REPO, env=ENV, capture_output=True,
                       text=True)
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
  assert 'top_p' in bad.stderr


def request(**changes) -> SampleRequest:
  """`frontiers sample`'s flags, as `check_sample` reads them."""
  return dataclasses.replace(SampleRequest(prompts=('All:',), num_tokens=12, temperature=0.8,
                                           top_k=5, top_p=0.9, num_samples=2), **changes)


@pytest.mark.parametrize('change, message', [
    ({'top_p': 0.0}, 'top_p'), ({'temperature': -1.0}, 'temperature'),
    ({'prompts': ('Zebra',)}, "'Z'"), ({'prompts': ('All:', 'Zebra')}, "'Z'"),
    ({'prompts': ('All:', '')}, 'empty'), ({'num_tokens': 0}, 'num_tokens'),
    ({'top_k': -1}, 'top_k'), ({'num_samples': 0}, 'num_samples')])
def test_bad_sampling_flags_are_one_line_errors(text_file, change, message):
  workload = lm.LanguageModel(text_config(text_file))
  workload.load_data()
  workload.check_sample(request())
  with pytest.raises(UsageError, match=message) as error:
    workload.check_sample(request(**change))
  assert '\n' not in error.value.line()


def test_same_seed_same_text_and_greedy_is_deterministic(text_run, text_file):
  workdir, _ = text_run
  workload = lm.LanguageModel(config_lib.load_run_config(workdir))
  workload.load_data()
  state = loop.restore_trained(runs.prepare(workload.config, workdir))
  texts = lambda seed, temperature: workload.sample_texts(
      state.params, ['All:', 'First'], 15, jax.random.key(seed), temperature, 5, 0.9)
  assert texts(1, 0.8) == texts(1, 0.8)
  assert texts(1, 0.8) != texts(2, 0.8)
  assert texts(1, 0.0) == texts(2, 0.0)  # greedy ignores the key
  assert all(len(t) == 15 for t in texts(1, 0.8))  # one character per token


def test_emergence_config_names_its_sweep_and_the_flag_overrides_it():
  config = load('emergence.py')
  key, values = sweep.sweep_spec(None, config)
  assert key == 'model.width' and len(values) >= 5
  sizes = []
  for width in values:
    c = load('emergence.py', **{key: width})
    sizes.append(model_lib.num_params(model_lib.Transformer(
        vocab_size=len(arithmetic.ALPHABET), context=c.model.context,
        num_layers=c.model.num_layers, num_heads=c.model.num_heads, width=c.model.width)))
  assert sizes == sorted(sizes) and sizes[-1] >= 30 * sizes[0]  # the span
  assert sweep.sweep_spec('seed=1,2', config) == ('seed', ['1', '2'])
  with pytest.raises(UsageError, match='sweep'):
    sweep.sweep_spec(None, load('lm.py:tiny'))


@pytest.mark.parametrize('key, value, message', [
    ('model.width', '31', 'heads'),
    ('model.num_kv_heads', '3', 'num_kv_heads'),
    ('model.context', '3', 'context'),
    ('optim.accumulation_steps', '3', 'accumulation_steps'),
    ('data.tokenizer', 'words', 'tokenizer'),
    ('model.positions', 'sinusoidal', 'positions'),
    ('sample.top_p', '1.5', 'top_p'),
    ('data.path', 'some.txt', 'data.path'),
    ('optim.final_learning_rate', '0.5', 'final_learning_rate'),
    ('optim.b2', '1.0', 'b2'),
    ('model.attention_impl', 'flash', 'attention_impl'),
])
def test_bad_config_is_one_line_error_before_compiling(key, value, message, tmp_path):
  config = load('lm.py:tiny')
  config_lib.apply_overrides(config, [(key, value)])
  with pytest.raises(UsageError, match=message):
    runs.prepare(config, str(tmp_path / 'never'))
  assert not os.path.exists(tmp_path / 'never')
