"""Config files, variants, `--config.*` overrides and the shared checks."""

import ml_collections
import pytest

from frontiers_jax import config as config_lib
from frontiers_jax.errors import UsageError
from conftest import CONFIGS, load


@pytest.mark.parametrize('spec', [
    'approximation.py', 'approximation.py:abs', 'approximation.py:ripple',
    'approximation.py:tiny', 'generalization.py', 'generalization.py:mnist',
    'generalization.py:digits_cnn', 'generalization.py:mnist_cnn',
    'generalization.py:tiny', 'adversarial.py', 'adversarial.py:mnist',
    'adversarial.py:mnist_pgd', 'adversarial.py:mnist_pgd_cpu', 'adversarial.py:mnist_trades',
    'adversarial.py:cifar10', 'adversarial.py:tiny', 'diffusion.py', 'diffusion.py:mnist',
    'diffusion.py:fashion_mnist', 'diffusion.py:mnist_cpu', 'diffusion.py:fashion_mnist_cpu',
    'diffusion.py:tiny', 'lm.py',
    'lm.py:shakespeare_char', 'lm.py:shakespeare_bpe', 'lm.py:arithmetic', 'lm.py:tiny',
    'emergence.py', 'emergence.py:tiny'])
def test_every_variant_loads_locked_and_valid(spec):
  config = load(spec)
  # nanoGPT's CPU batch of 12 splits over 4 devices, not 8.
  num_devices = 4 if config.batch_size == 12 else 8
  config_lib.validate_common(config, num_devices=num_devices)
  with pytest.raises(AttributeError):
    config.no_such_key = 1  # Locked: new keys are refused.


def test_variants_differ_where_named():
  assert load('generalization.py:mnist').data.name == 'mnist'
  assert load('generalization.py:mnist_cnn').model.name == 'cnn'
  assert load('approximation.py:ripple').target == 'ripple'
  assert load('diffusion.py:fashion_mnist_cpu').data.name == 'fashion_mnist'
  assert load('diffusion.py:fashion_mnist_cpu').num_steps == 2000


# A choice the issue leaves to the config, the positions: rotary on the CPU
# model (measured better there), nanoGPT's learned table on the GPU model.
@pytest.mark.parametrize('spec, shape, dropout, positions', [
    ('lm.py:shakespeare_char_cpu', (4, 4, 128, 64, 12, 2000), 0.0, 'rotary'),
    ('lm.py:shakespeare_char', (6, 6, 384, 256, 64, 5000), 0.2, 'learned')])
def test_shakespeare_configs_are_nanogpts(spec, shape, dropout, positions):
  """nanoGPT's two Shakespeare configurations, key by key."""
  c = load(spec)
  m, o = c.model, c.optim
  assert (m.num_layers, m.num_heads, m.width, m.context, c.batch_size, c.num_steps) == shape
  assert (m.dropout, m.use_bias, m.num_kv_heads, c.data.tokenizer) == (dropout, False, 0, 'char')
  # b1 is no key: optax's default 0.9, as nanoGPT's.
  assert (o.name, o.b2, o.weight_decay, o.clip_norm) == ('adamw', 0.99, 0.1, 1.0)
  assert (o.schedule, o.learning_rate, o.warmup_steps, o.final_learning_rate) == (
      'warmup_cosine', 1e-3, 100, 1e-4)
  assert (o.accumulation_steps, m.positions) == (1, positions)


def test_unknown_variant_names_the_choices():
  with pytest.raises(UsageError, match=r"unknown variant 'nope'.*digits"):
    load('generalization.py:nope')


def test_missing_config_file():
  with pytest.raises(UsageError, match='does not exist'):
    config_lib.load_config(f'{CONFIGS}/nope.py')


def test_split_override_args():
  rest, overrides = config_lib.split_override_args(
      ['prog', '--workdir=d', '--config.a.b=1', '--config.c', '2', '--x'])
  assert rest == ['prog', '--workdir=d', '--x']
  assert overrides == [('a.b', '1'), ('c', '2')]


def _config():
  c = ml_collections.ConfigDict({'n': 1, 'lr': 0.1, 'flag': False, 'name': 'a',
                                 'widths': (1, 2), 'sub': {'k': 3}})
  c.lock()
  return c


@pytest.mark.parametrize('key, text, expected', [
    ('n', '7', 7), ('lr', '1e-4', 1e-4), ('lr', '3', 3.0), ('flag', 'true', True),
    ('flag', '0', False), ('name', 'b', 'b'), ('widths', '4,8,16', (4, 8, 16)),
    ('widths', '(32,)', (32,)), ('widths', '64', (64,)), ('sub.k', '9', 9)])
def test_override_parses_to_the_keys_type(key, text, expected):
  c = _config()
  config_lib.apply_overrides(c, [(key, text)])
  value = c.sub.k if key == 'sub.k' else c[key]
  assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize('key, text, message', [
    ('nope', '1', r'config\.nope: unknown key; known keys here: flag, lr, n'),
    ('sub.nope', '1', r'config\.sub\.nope: unknown key; known keys here: k'),
    ('n', 'abc', r"config\.n: 'abc' is not an int"),
    ('n', '1.5', r"config\.n: '1.5' is not an int"),
    ('lr', 'fast', r"config\.lr: 'fast' is not a float"),
    ('flag', 'maybe', r"config\.flag: 'maybe' is not a bool"),
    ('sub', '1', r'config\.sub: is a group of keys'),
])
def test_bad_override_is_one_clear_error(key, text, message):
  with pytest.raises(UsageError, match=message):
    config_lib.apply_overrides(_config(), [(key, text)])


@pytest.mark.parametrize('override, where', [
    (('num_steps', '0'), 'config.num_steps'),
    (('num_steps', '-5'), 'config.num_steps'),
    (('batch_size', '0'), 'config.batch_size'),
    (('batch_size', '12'), 'config.batch_size'),  # not divisible by 8
    (('optim.learning_rate', '0'), 'config.optim.learning_rate'),
    (('optim.learning_rate', '-0.001'), 'config.optim.learning_rate'),
    (('optim.name', 'lion'), 'config.optim.name'),
    (('optim.schedule', 'step'), 'config.optim.schedule'),
    (('eval_every', '-1'), 'config.eval_every'),
])
def test_validate_common_rejects(override, where):
  config = load('generalization.py:tiny')
  config_lib.apply_overrides(config, [override])
  with pytest.raises(UsageError) as e:
    config_lib.validate_common(config, num_devices=8)
  assert e.value.where == where
  assert override[1] in e.value.problem


def _save_run_config(workdir, config_dict):
  import json
  import os
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config_dict, f)


def test_run_config_made_before_new_keys_gets_their_defaults(tmp_path, capsys):
  # A run saved before optim.b2 and model.dtype existed: evaluate and sample
  # must still load it, with the defaults (which keep the old behaviour).
  saved = load('adversarial.py:tiny').to_dict()
  del saved['optim']['b2'], saved['model']['dtype'], saved['mesh']
  saved['optim']['learning_rate'] = 0.0123  # saved values win over defaults
  _save_run_config(tmp_path, saved)
  config = config_lib.load_run_config(str(tmp_path))
  assert config.optim.b2 == 0.999
  assert config.model.dtype == 'float32'
  assert config.mesh.fsdp == 1
  assert config.optim.learning_rate == 0.0123
  assert config.model.features == tuple(saved['model']['features'])
  note = capsys.readouterr().err
  assert 'predates the keys mesh, model.dtype, optim.b2;' in note
  with pytest.raises(AttributeError):
    config.no_such_key = 1  # still locked


def test_complete_run_config_loads_without_a_note(tmp_path, capsys):
  saved = load('lm.py:tiny').to_dict()
  _save_run_config(tmp_path, saved)
  config = config_lib.load_run_config(str(tmp_path))
  assert config.to_dict() == load('lm.py:tiny').to_dict()
  assert capsys.readouterr().err == ''
