"""Sampling and KV-cache generation: truncations, keys, and cache == no cache, past the context."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frontiers_jax.lm import generate as gen
from frontiers_jax.lm import model as lm

VOCAB, CONTEXT = 13, 8
LONG_PROMPTS = (3, 8, 5)  # one prompt fills the context: the first new token re-prefills


@pytest.fixture(scope='module', autouse=True)
def _fast_compile(fast_compile):
  """Every test here runs with few XLA optimizations (conftest.fast_compile)."""


def tiny(**overrides) -> lm.Transformer:
  fields = dict(vocab_size=VOCAB, context=CONTEXT, num_layers=2, num_heads=4, width=32)
  return lm.Transformer(**{**fields, **overrides})


@functools.lru_cache(maxsize=None)
def random_params(model: lm.Transformer, std: float):
  """Parameters of the model's shapes, drawn on the host (nothing to compile):
  LayerNorm scales 1 + N(0, std^2), every other parameter N(0, std^2)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, CONTEXT), jnp.int32))
  rng = np.random.default_rng(0)
  draw = lambda path, leaf: (float('scale' in jax.tree_util.keystr(path))
                             + std * rng.standard_normal(leaf.shape).astype(np.float32))
  return jax.tree_util.tree_map_with_path(draw, shapes['params'])


def confident_params(model: lm.Transformer):
  """Varied, confident logits (top-2 gaps > 0.005 here, float32 errors ~3e-6), so that
  greedy decoding meets no near-ties."""
  return random_params(model, 0.3)


def uncertain_params(model: lm.Transformer):
  """GPT-2's initial scale: almost uniform next-token distributions, for sampling."""
  return random_params(model, 0.02)


def prompts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return gen.pad_prompts([rng.integers(0, VOCAB, n) for n in lengths], CONTEXT)


# -- Prompts ---------------------------------------------------------------------


def test_pad_prompts():
  tokens, first = gen.pad_prompts([np.array([1, 2]), np.arange(1, 12), np.array([7])], 8)
  chex.assert_type([tokens, first], jnp.int32)
  np.testing.assert_array_equal(first, [6, 0, 7])
  np.testing.assert_array_equal(tokens[0], [0, 0, 0, 0, 0, 0, 1, 2])
  np.testing.assert_array_equal(tokens[1], np.arange(4, 12))  # cropped to the last 8
  np.testing.assert_array_equal(tokens[2], [0] * 7 + [7])
  with pytest.raises(ValueError):
    gen.pad_prompts([np.array([1]), np.array([], np.int32)], 8)


# -- Sampling --------------------------------------------------------------------


sample = jax.jit(gen.sample_logits, static_argnames='top_k')
DRAWS = 20000
PROBS = np.array([0.05, 0.3, 0.02, 0.4, 0.15, 0.03, 0.01, 0.04])  # by token
LOGITS = np.log(PROBS)


def draws(logits_V, key, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
  """DRAWS independent tokens from one row of 8 logits (every test: one shape)."""
  logits_NxV = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (DRAWS, 8))
  return np.asarray(sample(logits_NxV, key, temperature, top_k, top_p))


def test_temperature_zero_is_argmax():
  logits = jax.random.normal(jax.random.key(0), (DRAWS, 8))
  for key in range(3):
    np.testing.assert_array_equal(sample(logits, jax.random.key(key), 0.0),
                                  jnp.argmax(logits, axis=-1))


def test_top_k_stays_in_the_k_largest():
  counts = np.bincount(draws(LOGITS, jax.random.key(1), top_k=3), minlength=8)
  assert set(np.flatnonzero(counts)) == {1, 3, 4}  # 0.3, 0.4, 0.15
  np.testing.assert_allclose(counts[[1, 3, 4]] / DRAWS, PROBS[[1, 3, 4]] / 0.85, atol=0.02)


@pytest.mark.parametrize('top_p, nucleus', [(0.6, {1, 3}), (0.8, {1, 3, 4}), (0.3, {3})])
def test_top_p_stays_in_the_nucleus(top_p, nucleus):
  counts = np.bincount(draws(LOGITS, jax.random.key(2), top_p=top_p), minlength=8)
  assert set(np.flatnonzero(counts)) == nucleus


def test_top_p_after_top_k():
  """Top-3 renormalised: 0.47, 0.35, 0.18, so the 0.7 nucleus is the first two."""
  tokens = draws(LOGITS, jax.random.key(3), top_k=3, top_p=0.7)
  assert set(np.unique(tokens)) == {1, 3}


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_frequencies_match_softmax(temperature):
  logits = np.asarray(jax.random.normal(jax.random.key(4), (8,))) * 1.5
  counts = np.bincount(draws(logits, jax.random.key(5), temperature), minlength=8)
  expected = DRAWS * np.asarray(jax.nn.softmax(logits / temperature))
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 40, chi2  # 7 degrees of freedom: P(chi2 > 40) ~ 1e-6


def test_keys_decide_the_draws():
  a, b = draws(np.zeros(8), jax.random.key(6)), draws(np.zeros(8), jax.random.key(6))
  np.testing.assert_array_equal(a, b)
  assert np.mean(a != draws(np.zeros(8), jax.random.key(7))) > 0.5


# -- Generation: KV cache == full forward passes --------------------------------


# Rotary positions are checked with grouped-query attention: one model (and one compile) for
# both features.
CONFIGS = {'learned': {}, 'rotary-gqa': {'positions': 'rotary', 'num_kv_heads': 2}}
SHORT_PROMPTS = (2, 5, 4)  # the first 3 new tokens fit in the context, the 4th re-prefills


def run_both(model, params, lengths, num_tokens, key, keep=0, **sampling):
  """(tokens, logits) of `generate` and of `generate_reference`."""
  tokens_BxP, first_B = prompts(lengths)
  args = (model, params, tokens_BxP, first_B, num_tokens, key)
  fast = gen.generate(*args, keep=keep, return_logits=True, **sampling)
  slow = gen.generate_reference(*args, keep=keep, return_logits=True, **sampling)
  chex.assert_shape(fast[0], (len(lengths), num_tokens))
  chex.assert_shape(fast[1], (len(lengths), num_tokens, VOCAB))
  return fast, slow


@pytest.mark.parametrize('config, lengths, keep', [('learned', LONG_PROMPTS, 0),
                                                   ('rotary-gqa', SHORT_PROMPTS, CONTEXT - 1)])
def test_greedy_matches_reference(config, lengths, keep):
  """20 new tokens: within the context, then several re-prefills (keep = 4, then 7: one
  every other token)."""
  model = tiny(**CONFIGS[config])
  (fast, fast_logits), (slow, slow_logits) = run_both(
      model, confident_params(model), lengths, 20, jax.random.key(0), keep, temperature=0.0)
  np.testing.assert_array_equal(fast, slow)
  np.testing.assert_allclose(fast_logits, slow_logits, rtol=1e-4, atol=1e-4)
  assert len(np.unique(fast)) > 3  # varied output, not one token repeated


def test_smallest_window_matches_reference():
  """keep = 1: a re-prefill keeps only the new token, at position 0."""
  model = tiny()
  (fast, fast_logits), (slow, slow_logits) = run_both(
      model, confident_params(model), LONG_PROMPTS, 12, jax.random.key(0), 1,
      temperature=0.0)
  np.testing.assert_array_equal(fast, slow)
  np.testing.assert_allclose(fast_logits, slow_logits, rtol=1e-4, atol=1e-4)


def test_sampling_matches_reference():
  """Same keys, same truncation: the same tokens, with or without the cache."""
  model = tiny(**CONFIGS['rotary-gqa'])
  (fast, fast_logits), (slow, slow_logits) = run_both(
      model, uncertain_params(model), SHORT_PROMPTS, 20, jax.random.key(3), CONTEXT - 1,
      temperature=1.5, top_p=0.95)
  np.testing.assert_array_equal(fast, slow)
  np.testing.assert_allclose(fast_logits, slow_logits, rtol=1e-4, atol=1e-4)
  assert len(np.unique(fast)) > VOCAB // 2


def test_generate_compiles_once_and_is_deterministic():
  """Key, temperature, top_p and parameters are traced: new values, no new program."""
  model = tiny()
  tokens_BxP, first_B = prompts(LONG_PROMPTS)
  run = lambda params, seed, **sampling: gen.generate(
      model, params, tokens_BxP, first_B, 20, jax.random.key(seed), top_k=3,
      return_logits=True, **sampling)
  tokens, logits = run(uncertain_params(model), 0, temperature=1.0, top_p=0.9)
  compiled = gen._generate._cache_size()
  again, _ = run(uncertain_params(model), 0, temperature=1.0, top_p=0.9)
  np.testing.assert_array_equal(again, tokens)  # same seed, same tokens
  assert np.any(np.asarray(run(uncertain_params(model), 1, top_p=0.9)[0]) != tokens)
  assert np.any(np.asarray(run(confident_params(model), 0, temperature=1)[0]) != tokens)
  run(uncertain_params(model), 0, temperature=jnp.float32(0.5), keep=CONTEXT // 2)
  assert gen._generate._cache_size() == compiled
  # Every token is among the 3 most likely under the logits it was drawn from.
  top3 = np.argsort(np.asarray(logits), axis=-1)[..., -3:]
  assert np.all(np.any(top3 == np.asarray(tokens)[..., None], axis=-1))


def test_generate_rejects_bad_arguments():
  model = tiny()
  params = uncertain_params(model)
  tokens_BxP, first_B = prompts((3,))
  for keep in (CONTEXT, -1):
    with pytest.raises(ValueError, match='keep'):
      gen.generate(model, params, tokens_BxP, first_B, 4, jax.random.key(0), keep=keep)
  with pytest.raises(ValueError, match='num_tokens'):
    gen.generate(model, params, tokens_BxP, first_B, 0, jax.random.key(0))
  too_long = np.zeros((1, CONTEXT + 1), np.int32)
  with pytest.raises(ValueError, match='prompt length'):
    gen.generate_reference(model, params, too_long, first_B, 4, jax.random.key(0))
