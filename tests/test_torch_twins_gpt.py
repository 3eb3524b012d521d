"""PyTorch twins of the language model and its optimizer (frontiers_jax.bench).

With the JAX weights copied in, the twin computes the same logits; one (or a
few) optimizer steps of the twin move every parameter as the project's own
JAX train step does; the torch learning-rate schedules are optax's.
"""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from frontiers_jax import config as config_lib
from frontiers_jax.lm import generate
from frontiers_jax.lm import model as model_lib
from frontiers_jax.training import optim
from frontiers_jax.workloads import lm
from conftest import load

torch = pytest.importorskip('torch',
                            reason='the PyTorch twins need torch (pip install -e .[bench])')
from frontiers_jax.bench import torch_gpt, torch_optim  # noqa: E402

VOCAB, CONTEXT, BATCH = 20, 16, 4
SMALL = dict(vocab_size=VOCAB, context=CONTEXT, num_layers=2, num_heads=4, width=32)


@pytest.fixture(scope='module', autouse=True)
def setup(fast_compile):
  """Tiny programs compile faster with few XLA optimizations; torch on 2 threads."""
  threads = torch.get_num_threads()
  torch.set_num_threads(2)
  torch.manual_seed(0)
  yield
  torch.set_num_threads(threads)


def random_tokens(length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, length)).astype(np.int32)


def random_params(model: model_lib.Transformer, seed: int = 1) -> dict:
  """Parameters of `model`'s shapes drawn at random (no slow initialisation):
  normal(0.05) weights and biases, LayerNorm scales 1 + normal(0.05)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), random_tokens(1)[:1])['params']
  rng = np.random.default_rng(seed)
  draw = lambda path, x: (path[-1].key == 'scale') + 0.05 * rng.standard_normal(
      x.shape, np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def twin_of(model: model_lib.Transformer, params) -> 'torch_gpt.TorchGPT':
  twin = torch_gpt.TorchGPT.from_module(model)
  torch_gpt.load_flax_params(twin, params)
  return twin


def max_difference(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# -- The model ----------------------------------------------------------------------


@pytest.mark.parametrize('fields', [
    dict(positions='learned'),
    dict(positions='rotary', use_bias=True),
    dict(num_kv_heads=2, use_bias=True),
    dict(num_kv_heads=1, positions='rotary', dropout=0.1),
], ids=['learned', 'rotary_bias', 'gqa_bias', 'mqa_rotary_dropout'])
def test_twin_logits_equal_jax_logits(fields):
  model = model_lib.Transformer(**SMALL, **fields)
  tokens = random_tokens(CONTEXT)
  params = random_params(model)
  expected = np.asarray(jax.jit(model.apply)({'params': params}, tokens))
  twin = twin_of(model, params).eval()
  with torch.no_grad():
    logits = twin(torch.from_numpy(tokens).long())
  assert logits.dtype == torch.float32 and logits.shape == (BATCH, CONTEXT, VOCAB)
  np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-4, atol=1e-5)
  with torch.no_grad():  # a shorter sequence uses the first rows of the position table
    short = twin(torch.from_numpy(tokens[:, :5]).long())
  np.testing.assert_allclose(short.numpy(), expected[:, :5], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('fields', [
    dict(positions='learned'),
    dict(positions='rotary', use_bias=True),
    dict(num_kv_heads=2, positions='rotary'),
], ids=['learned', 'rotary_bias', 'gqa_rotary'])
def test_twin_cached_greedy_decoding_equals_jax_generate(fields):
  """The twin's KV-cache decoding (prefill, then one call per token) picks the
  tokens of the project's `generate` at temperature 0, and its cached logits
  equal the JAX model's."""
  model = model_lib.Transformer(**SMALL, **fields)
  params = random_params(model)
  prompts = random_tokens(5)
  num_tokens = CONTEXT - 5 + 1  # the last token's logits come from the last slot
  expected = np.asarray(generate.generate(model, params, prompts, np.zeros(BATCH, np.int32),
                                          num_tokens, jax.random.key(0), temperature=0.0))
  twin = twin_of(model, params).eval()
  got = torch_gpt.greedy_decode(twin, twin, torch.from_numpy(prompts).long(), num_tokens)
  np.testing.assert_array_equal(got.numpy(), expected)
  # The cache holds what a full pass computes: the logits of the whole
  # sequence, fed one slot at a time, equal the uncached forward's.
  sequence = np.concatenate([prompts, expected[:, :-1]], axis=1)
  full = np.asarray(jax.jit(model.apply)({'params': params}, sequence))
  with torch.no_grad():
    cache = twin.init_cache(BATCH)
    steps = [twin(torch.from_numpy(sequence[:, :5]).long(), cache, torch.tensor(0))]
    steps += [twin(torch.from_numpy(sequence[:, s:s + 1]).long(), cache, torch.tensor(s))
              for s in range(5, CONTEXT)]
  np.testing.assert_allclose(torch.cat(steps, dim=1).numpy(), full, rtol=1e-4, atol=1e-5)


def test_twin_decoding_refuses_more_tokens_than_the_context():
  model = model_lib.Transformer(**SMALL)
  twin = twin_of(model, random_params(model))
  with pytest.raises(ValueError, match='exceed the context of 16'):
    torch_gpt.greedy_decode(twin, twin, torch.zeros((1, 8), dtype=torch.long), CONTEXT)


def test_twin_dropout_acts_in_train_mode_only():
  model = model_lib.Transformer(**SMALL, dropout=0.5)
  twin = twin_of(model, random_params(model))
  tokens = torch.from_numpy(random_tokens(CONTEXT)).long()
  twin.eval()
  with torch.no_grad():
    assert torch.equal(twin(tokens), twin(tokens))
    twin.train()
    assert not torch.allclose(twin(tokens), twin(tokens))


@pytest.mark.parametrize('fields', [dict(), dict(use_bias=True, positions='rotary',
                                                 num_kv_heads=2)])
def test_flax_torch_flax_round_trip_is_exact(fields):
  model = model_lib.Transformer(**SMALL, **fields)
  params = random_params(model)
  back = torch_gpt.flax_params_from_torch(twin_of(model, params), like=params)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.asarray(y))


def test_load_refuses_incomplete_or_mismatched_params():
  model = model_lib.Transformer(**SMALL)
  params = random_params(model)
  twin = torch_gpt.TorchGPT.from_module(model)
  flat = traverse_util.flatten_dict(params)
  del flat[('ln_final', 'scale')]
  with pytest.raises(KeyError, match='ln_final.weight'):
    torch_gpt.load_flax_params(twin, traverse_util.unflatten_dict(flat))
  other = model_lib.Transformer(**{**SMALL, 'width': 16})
  with pytest.raises(ValueError, match='shape'):
    torch_gpt.load_flax_params(twin, random_params(other))


# -- Training steps -----------------------------------------------------------------


def lm_workload(model_fields: dict, num_steps: int, **optim_overrides) -> lm.LanguageModel:
  """The project's LM workload (configs/lm.py:tiny's optimizer) on a small model."""
  overrides = {f'model.{k}': v for k, v in model_fields.items()}
  overrides['num_steps'] = num_steps
  overrides.update({f'optim.{k}': v for k, v in optim_overrides.items()})
  config = load('lm.py:tiny', **{'model.num_layers': 2, 'model.num_heads': 4,
                                 'model.width': 32, 'model.context': CONTEXT, **overrides})
  workload = lm.LanguageModel(config)
  workload.tokenizer = types.SimpleNamespace(vocab_size=VOCAB)  # only its size is used
  return workload


@pytest.mark.parametrize('model_fields, optim_overrides, steps', [
    # One AdamW step at a constant rate: tiny's optimizer otherwise (b2 0.99,
    # weight decay 0.1, clipping at 1).
    ({}, dict(schedule='constant'), 1),
    # Warm-up from 0 (the first update only fills Adam's moments), then cosine.
    # Biases with rotary positions: with learned positions the key bias has a
    # gradient of exactly 0 (softmax ignores a shift common to a query's
    # scores), Adam turns the rounding noise in it into steps of up to lr, and
    # that noise differs between the frameworks (see torch_gpt's docstring).
    (dict(use_bias=True, positions='rotary', num_kv_heads=2),
     dict(schedule='warmup_cosine', warmup_steps=2, learning_rate=3e-3), 3),
], ids=['adamw_constant', 'adamw_warmup_cosine'])
def test_twin_steps_equal_jax_steps(model_fields, optim_overrides, steps):
  workload = lm_workload(model_fields, num_steps=max(steps + 1, 4), **optim_overrides)
  tokens = random_tokens(CONTEXT + 1, seed=3)
  batch = {'tokens': jnp.asarray(tokens)}
  state = workload.new_state(workload.model.apply, random_params(workload.model))
  initial = state.params
  twin = twin_of(workload.model, state.params).train()
  made = torch_optim.make_torch_optimizer(workload.config.optim, twin.named_parameters(),
                                          workload.config.num_steps)
  train_step = jax.jit(workload.train_step)
  for step in range(steps):
    state, metrics = train_step(state, batch, jax.random.key(step))
    loss = torch_gpt.lm_loss(twin, torch.from_numpy(tokens).long())
    np.testing.assert_allclose(loss.item(), float(metrics['loss']), rtol=1e-4)
    torch_optim.torch_step(twin, *made, loss)
  after = torch_gpt.flax_params_from_torch(twin, like=state.params)
  assert max_difference(state.params, initial) > 1e-3  # the steps did move the parameters
  for x, y in zip(jax.tree.leaves(after), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(x, np.asarray(y), rtol=1e-4, atol=1e-4)


# -- The optimizer ------------------------------------------------------------------


def optim_config(**overrides) -> ml_collections.ConfigDict:
  c = config_lib.base_config().optim
  c.update(dict(name='adamw', learning_rate=1e-3, final_learning_rate=1e-4, b2=0.99,
                weight_decay=0.1, clip_norm=1.0, warmup_steps=3), **overrides)
  return c


@pytest.mark.parametrize('overrides', [
    dict(schedule='constant'),
    dict(schedule='warmup_cosine', warmup_steps=2),
    dict(name='adam', schedule='cosine', clip_norm=0.0),
    dict(weight_decay=0.5, clip_norm=100.0),  # decay dominates; the norm is below the clip
], ids=['adamw_constant', 'adamw_warmup_cosine', 'adam_cosine', 'adamw_strong_decay'])
def test_torch_optimizer_steps_equal_optax_steps(overrides):
  """Fixed gradients (no model noise), so the comparison can be tight: the
  weight decay alone moves a parameter by lr * wd * p = 1e-4 per step here."""
  c = optim_config(**overrides)
  num_steps, rng = 6, np.random.default_rng(0)
  params = {'w': rng.standard_normal((3, 4), np.float32),
            'b': rng.standard_normal(4, np.float32),
            'scale': 1 + rng.standard_normal(4, np.float32)}
  grads = [jax.tree.map(lambda p: rng.standard_normal(p.shape, np.float32), params)
           for _ in range(num_steps)]
  twins = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
  module = torch.nn.ParameterDict(twins)
  made = torch_optim.make_torch_optimizer(c, module.named_parameters(), num_steps)
  tx = optim.make_optimizer(c, num_steps)
  state, jax_params = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
    loss = sum(torch.sum(p * torch.from_numpy(g[k])) for k, p in twins.items())
    torch_optim.torch_step(module, *made, loss)  # the gradient of loss is g
  for k, p in twins.items():
    np.testing.assert_allclose(p.detach().numpy(), jax_params[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('schedule, warmup_steps', [
    ('constant', 0), ('cosine', 0), ('warmup_cosine', 3), ('warmup_cosine', 0)])
def test_torch_schedule_equals_optax_schedule(schedule, warmup_steps):
  c = optim_config(schedule=schedule, warmup_steps=warmup_steps)
  num_steps = 10
  expected = optim.learning_rate_schedule(c, num_steps)
  parameter = torch.nn.Parameter(torch.zeros(3))
  optimizer, scheduler, _ = torch_optim.make_torch_optimizer(
      c, [('p', parameter)], num_steps)
  for step in range(num_steps + 3):  # past the end: the floor
    assert optimizer.param_groups[0]['lr'] == pytest.approx(float(expected(step)),
                                                            rel=1e-6, abs=1e-12), step
    optimizer.step()  # no gradients: nothing moves, but the order is torch's
    scheduler.step()


def test_adamw_decays_matrices_only_and_adam_not_at_all():
  params = [('w', torch.nn.Parameter(torch.ones(2, 3))),
            ('b', torch.nn.Parameter(torch.ones(3)))]
  made = torch_optim.make_torch_optimizer(optim_config(), params, 10)
  groups = made.optimizer.param_groups
  assert isinstance(made.optimizer, torch.optim.AdamW) and made.clip_norm == 1.0
  assert [(g['weight_decay'], [p.ndim for p in g['params']]) for g in groups] == [
      (0.1, [2]), (0.0, [1])]
  assert groups[0]['betas'] == (0.9, 0.99) and groups[0]['eps'] == 1e-8
  adam = torch_optim.make_torch_optimizer(optim_config(name='adam'), params, 10).optimizer
  assert type(adam) is torch.optim.Adam
  assert [g['weight_decay'] for g in adam.param_groups] == [0]


@pytest.mark.parametrize('name', ['sgd', 'momentum'])
def test_untwinned_optimizers_are_refused(name):
  with pytest.raises(ValueError, match='adam, adamw'):
    torch_optim.make_torch_optimizer(optim_config(name=name), [], 10)
