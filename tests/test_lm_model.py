"""The GPT model: shapes, causality, padding, positions, GQA, precision, KV cache."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frontiers_jax.lm import model as lm

VOCAB, CONTEXT, WIDTH = 13, 16, 32
B, T = 3, 12  # most tests share this shape, so that they share compiled programs


@pytest.fixture(scope='module', autouse=True)
def _fast_compile(fast_compile):
  """Every test here runs with few XLA optimizations (conftest.fast_compile)."""


def tiny(**overrides) -> lm.Transformer:
  fields = dict(vocab_size=VOCAB, context=CONTEXT, num_layers=2, num_heads=4, width=WIDTH)
  return lm.Transformer(**{**fields, **overrides})


@functools.lru_cache(maxsize=None)
def init(model: lm.Transformer):
  """Parameters of a model (learned positions; rotary models ignore the table)."""
  return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, CONTEXT), jnp.int32))['params']


def shapes(model: lm.Transformer):
  """The parameters' shapes and dtypes, without computing them."""
  zeros = jnp.zeros((1, CONTEXT), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), zeros)['params']


@functools.partial(jax.jit, static_argnums=0)
def forward(model, params, tokens_BxT, first_B=None):
  return model.apply({'params': params}, tokens_BxT, first=first_B)


def random_tokens(seed: int, shape) -> jax.Array:
  return jax.random.randint(jax.random.key(seed), shape, 0, VOCAB, jnp.int32)


def test_shapes_and_dtypes():
  model = tiny()
  params = init(model)
  logits = forward(model, params, random_tokens(1, (B, T)))
  chex.assert_shape(logits, (B, T, VOCAB))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  assert params['position_embedding'].shape == (CONTEXT, WIDTH)
  with pytest.raises(ValueError, match='exceed the context'):
    jax.eval_shape(model.apply, {'params': params}, random_tokens(1, (1, CONTEXT + 1)))


@pytest.mark.parametrize('positions', ['learned', 'rotary'])
def test_causal(positions):
  model = tiny(positions=positions)
  params = init(tiny())
  tokens = random_tokens(2, (B, T))
  j = 7
  changed = tokens.at[:, j].set((tokens[:, j] + 1) % VOCAB)
  before, after = forward(model, params, tokens), forward(model, params, changed)
  np.testing.assert_array_equal(before[:, :j], after[:, :j])
  assert np.all(np.abs(before[:, j:] - after[:, j:]).max(axis=-1) > 0)


def test_rotary_is_a_complex_rotation_by_position():
  """Against float64 complex numbers: channel pair (i, i + H/2) is z = a + ib,
  turned by e^(i p theta_i) with theta_i = 10000^(-2i/H); so a query at p and
  a key at r score the same as at p + s and r + s."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 3, 8))
  positions = np.array([[0, 1, 2, 40, 63], [7, 3, 0, 1, 1000]])
  got = np.asarray(lm.rotary(jnp.asarray(x, jnp.float32), jnp.asarray(positions)), np.float64)
  theta = 10000.0 ** (-np.arange(4) / 4)
  z = (x[..., :4] + 1j * x[..., 4:]) * np.exp(1j * positions[:, :, None, None] * theta)
  np.testing.assert_allclose(got, np.concatenate([z.real, z.imag], axis=-1), atol=2e-5)

  def score(p, r):
    q, k = (lm.rotary(jnp.asarray(v, jnp.float32)[None, None, None], jnp.array([[t]]))
            for v, t in ((x[0, 0, 0], p), (x[0, 1, 0], r)))
    return float(jnp.vdot(q, k))
  assert score(9, 4) == pytest.approx(score(30, 25), abs=1e-5)
  assert score(9, 4) != pytest.approx(score(9, 5), abs=1e-3)


def test_training_path_equals_masked_path():
  """is_causal without a mask == the explicit mask with no padding."""
  model = tiny()
  params = init(model)
  tokens = random_tokens(3, (B, T))
  np.testing.assert_allclose(forward(model, params, tokens),
                             forward(model, params, tokens, jnp.zeros(B, jnp.int32)),
                             atol=1e-6)


def test_grouped_query_attention():
  model = tiny(num_kv_heads=2)
  params = init(model)
  head_dim = WIDTH // 4
  attention = params['block_0']['attention']
  assert attention['query']['kernel'].shape == (WIDTH, WIDTH)
  assert attention['key']['kernel'].shape == (WIDTH, 2 * head_dim)
  assert attention['value']['kernel'].shape == (WIDTH, 2 * head_dim)
  saved = 2 * 2 * WIDTH * (WIDTH - 2 * head_dim)  # 2 layers, key and value
  assert lm.count_params(params) == lm.count_params(shapes(tiny())) - saved
  logits = forward(model, params, random_tokens(4, (B, T)))
  chex.assert_shape(logits, (B, T, VOCAB))
  chex.assert_tree_all_finite(logits)
  cache = lm.init_cache(model, B)
  assert len(cache) == 2
  kv = jnp.zeros((B, CONTEXT, 2, head_dim))
  chex.assert_trees_all_equal_shapes_and_dtypes(cache[0], {'k': kv, 'v': kv})
  with pytest.raises(ValueError, match='key/value groups'):
    shapes(tiny(num_kv_heads=3))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = tiny(dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes(model)))
  params = init(tiny())  # the same parameters as the float32 model
  tokens = random_tokens(5, (B, T))
  logits = forward(model, params, tokens)
  chex.assert_type(logits, jnp.float32)
  np.testing.assert_allclose(logits, forward(tiny(), params, tokens), atol=0.05)
  assert lm.init_cache(model, 1)[0]['k'].dtype == jnp.bfloat16


@pytest.mark.parametrize('overrides', [
    {}, {'use_bias': True}, {'positions': 'rotary'},
    {'num_kv_heads': 2, 'use_bias': True, 'positions': 'rotary'},
    {'num_kv_heads': 1, 'mlp_ratio': 2, 'num_layers': 3}])
def test_num_params_matches_initialised_params(overrides):
  model = tiny(**overrides)
  params = shapes(model)
  assert lm.num_params(model) == lm.count_params(params)
  expected = 6 * lm.count_params(params) + 12 * model.num_layers * WIDTH * CONTEXT
  assert lm.flops_per_token(model) == expected


def test_position_embedding_not_counted():
  params = shapes(tiny())
  total = sum(p.size for p in jax.tree.leaves(params))
  assert lm.count_params(params) == total - CONTEXT * WIDTH
  rotary = shapes(tiny(positions='rotary'))
  assert 'position_embedding' not in rotary
  assert lm.count_params(rotary) == sum(p.size for p in jax.tree.leaves(rotary))


@pytest.mark.parametrize('positions', ['learned', 'rotary'])
def test_left_padding_changes_nothing(positions):
  """Positions count from the first real token, and padding is never attended."""
  model = tiny(positions=positions)
  params = init(tiny())
  tokens = random_tokens(6, (B, T))
  pad_B = jnp.array([0, 3, 5], jnp.int32)
  # Row r shifted right by pad_B[r] slots, behind padding tokens (5).
  shifted = jnp.stack([jnp.roll(tokens[r], int(pad_B[r])) for r in range(B)])
  shifted = jnp.where(jnp.arange(T) < pad_B[:, None], 5, shifted)
  plain = forward(model, params, tokens)
  padded = forward(model, params, shifted, pad_B)
  for r in range(B):
    pad = int(pad_B[r])
    np.testing.assert_allclose(padded[r, pad:], plain[r, :T - pad], atol=1e-5)


def test_dropout_only_when_training():
  model = tiny(dropout=0.5)
  params = init(tiny())
  tokens = random_tokens(1, (B, T))
  apply = jax.jit(lambda model, rng, train: model.apply(
      {'params': params}, tokens, train=train, rngs={'dropout': rng}),
      static_argnames=('model', 'train'))
  evaluate = forward(tiny(), params, tokens)
  np.testing.assert_array_equal(apply(model, jax.random.key(1), False), evaluate)
  train = lambda seed: apply(model, jax.random.key(seed), True)
  assert not np.allclose(train(1), evaluate)
  assert not np.allclose(train(1), train(2))
  np.testing.assert_array_equal(train(1), train(1))
  # Without dropout, training mode changes nothing.
  np.testing.assert_array_equal(apply(tiny(), jax.random.key(1), True), evaluate)


def test_invalid_fields():
  with pytest.raises(ValueError, match='heads'):
    shapes(tiny(width=30))
  with pytest.raises(ValueError, match='positions'):
    shapes(tiny(positions='sinusoidal'))
  with pytest.raises(ValueError, match='only meaningful with a cache'):
    jax.eval_shape(lambda t: tiny().apply({'params': init(tiny())}, t, index=2),
                   random_tokens(1, (1, 4)))


@pytest.mark.parametrize('overrides', [{}, {'positions': 'rotary', 'num_kv_heads': 2}])
def test_cached_decoding_equals_full_forward(overrides):
  """Prefill + one token at a time through the cache == one full forward pass."""
  model = tiny(**overrides)
  params = init(tiny(num_kv_heads=overrides.get('num_kv_heads', 0)))
  first = jnp.array([8, 1, 5], jnp.int32)  # left padding: rows of different lengths
  tokens = random_tokens(8, (B, T))
  tokens = jnp.where(jnp.arange(T) < first[:, None], 0, tokens)
  full = forward(model, params, tokens, first)

  @jax.jit
  def call(tokens_BxT, cache, index):
    return model.apply({'params': params}, tokens_BxT, first=first, cache=cache, index=index)

  prefill = 6  # row 0 is still all padding here
  logits, cache = call(tokens[:, :prefill], lm.init_cache(model, B), 0)
  steps = [logits]
  for i in range(prefill, T):
    logits, cache = call(tokens[:, i:i + 1], cache, jnp.int32(i))
    steps.append(logits)
  cached = jnp.concatenate(steps, axis=1)
  np.testing.assert_allclose(cached, full, atol=1e-5)  # padding slots too
  chex.assert_trees_all_equal_shapes_and_dtypes(cache, lm.init_cache(model, B))
