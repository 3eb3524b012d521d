"""Sampling text from a Transformer, with a KV cache and a sliding window.

A language model gives p(next token | past). Generation repeats: compute the
logits of the next token, draw one (`sample_logits`), append it, go on.

Sampling. Temperature tau divides the logits: tau -> 0 approaches the most
likely token (tau == 0 is exactly greedy argmax), tau = 1 is the model's own
distribution, larger tau flattens it. Two truncations remove the unreliable
tail first (temperature, then top-k, then top-p):
  top-k   keep the k most likely tokens (Fan et al. 2018);
  top-p   keep the smallest set of most likely tokens whose probabilities add
          up to at least p, the "nucleus" (Holtzman et al. 2020). The most
          likely token is always kept.
Token i of a run is drawn with key fold_in(key, i), so a run is a pure
function of its inputs.

KV cache. Without a cache, every new token costs a forward pass over the whole
past. With one, the keys and values of past tokens are stored, so the prompt is
processed once ("prefill", one call over P tokens) and each new token costs a
single-token call that attends over the cache. `generate` runs the prefill,
then every decoding step inside `lax.while_loop`s, all in one compiled program.

Prompts of different lengths are left-padded to a common length P
(`pad_prompts`); `first[r]` is the slot of row r's first real token. Position
ids count from it, so a prompt means the same thing whatever its padding.

The window, beyond the context. The cache has `context` slots. Slots
0 .. length-1 hold the window: the last `length` tokens of the sequence so far
(prompt and generated tokens; padding included while it is still inside).
To append token x to a window of length < context, x goes into slot `length`
(one decoding step). When the window is full (length == context), it is
re-prefilled instead: the new window is the last `keep` tokens of the sequence
so far, x included, i.e. the old slots context-keep+1 .. context-1 followed by
x; one prefill call recomputes their keys and values in slots 0 .. keep-1, and
each row's first real token moves to first' = max(0, first - (context-keep+1)).
Position ids then restart from each row's first real token in the window (from
0 at slot 0 once the padding has left the window), so the model sees every
window exactly as if it were a prompt. The logits of x's position predict the
next token. Hence the model always conditions on between `keep` and `context`
tokens of the past (fewer only while the prompt and output are shorter than
`keep`); `keep` (default context // 2) trades quality (large) against how
often the O(keep^2) re-prefill runs (small). A prompt of exactly `context`
tokens fills the cache, so its first appended token triggers a re-prefill.

`generate_reference` implements the same rule the slow, obvious way: a Python
loop that runs a full forward pass without a cache over the current window for
every token (the window given as a prompt, left-padded to the context). It
exists for the tests, which check that both agree.
"""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from frontiers_jax.lm.model import init_cache
from frontiers_jax.lm.model import Transformer


def pad_prompts(prompts: Sequence[np.ndarray], context: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads 1-D token arrays with 0 to a common length P.

  Each prompt is first cropped to its last `context` tokens.

  Returns:
    (tokens int32 [B, P], first int32 [B]): first[r] is the slot of row r's
    first real token.
  """
  cropped = [np.asarray(p, np.int32).reshape(-1)[-context:] for p in prompts]
  if not cropped or any(p.size == 0 for p in cropped):
    raise ValueError('every prompt needs at least one token')
  length = max(p.size for p in cropped)
  tokens_BxP = np.zeros((len(cropped), length), np.int32)
  first_B = np.zeros(len(cropped), np.int32)
  for r, p in enumerate(cropped):
    tokens_BxP[r, length - p.size:] = p
    first_B[r] = length - p.size
  return tokens_BxP, first_B


def _top_k(logits_BxV: jax.Array, k: int) -> jax.Array:
  """Masks (to -inf) all but the k largest logits of each row (ties at the k-th kept)."""
  if k <= 0 or k >= logits_BxV.shape[-1]:
    return logits_BxV
  kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
  return jnp.where(logits_BxV >= kth_Bx1, logits_BxV, -jnp.inf)


def _top_p(logits_BxV: jax.Array, p: jax.Array) -> jax.Array:
  """Masks (to -inf) the logits outside each row's nucleus of probability p."""
  sorted_BxV = jnp.flip(jnp.sort(logits_BxV, axis=-1), axis=-1)
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of the likelier tokens
  rank_V = jnp.arange(logits_BxV.shape[-1])
  in_nucleus = (before_BxV < p) | (rank_V == 0)
  cutoff_Bx1 = jnp.min(jnp.where(in_nucleus, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
  keep = (logits_BxV >= cutoff_Bx1) | (p >= 1.0)
  return jnp.where(keep, logits_BxV, -jnp.inf)


def sample_logits(logits_BxV: jax.Array, key: jax.Array, temperature: Any,
                  top_k: int = 0, top_p: Any = 1.0) -> jax.Array:
  """Draws one token per row: int32 [B].

  Args:
    logits_BxV: float logits [B, V].
    key: a PRNG key.
    temperature: divides the logits; 0 means greedy (argmax). May be traced.
    top_k: keep only the k largest logits (static; 0: off).
    top_p: keep only the nucleus of probability top_p (may be traced; 1.0: off).
  """
  logits_BxV = jnp.asarray(logits_BxV, jnp.float32)
  temperature = jnp.asarray(temperature, jnp.float32)
  greedy_B = jnp.argmax(logits_BxV, axis=-1)
  scaled_BxV = logits_BxV / jnp.where(temperature > 0, temperature, 1.0)
  scaled_BxV = _top_p(_top_k(scaled_BxV, top_k), jnp.asarray(top_p, jnp.float32))
  sampled_B = jax.random.categorical(key, scaled_BxV, axis=-1)
  return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


def _check(model: Transformer, prompts_BxP, num_tokens: int, keep: int) -> int:
  """Validates the arguments of a generation; returns the resolved `keep`."""
  keep = keep or model.context // 2
  if not 1 <= keep < model.context:
    raise ValueError(f'keep must be in [1, {model.context}), not {keep}')
  length = np.shape(prompts_BxP)[1]
  if not 1 <= length <= model.context:
    raise ValueError(f'prompt length {length} is not in [1, {model.context}] '
                     '(pad_prompts crops)')
  if num_tokens < 1:
    raise ValueError(f'num_tokens must be at least 1, not {num_tokens}')
  return keep


def generate(model: Transformer, params, prompts: jax.Array, first: jax.Array,
             num_tokens: int, key: jax.Array, temperature: Any = 1.0, top_k: int = 0,
             top_p: Any = 1.0, keep: int = 0, return_logits: bool = False):
  """Samples `num_tokens` tokens after each prompt, with a KV cache; one compiled program.

  The program (`_generate`) is compiled once per model, shapes, num_tokens,
  top_k, keep and return_logits; parameters, prompts, key, temperature and
  top_p are traced, however they are passed.

  Args:
    model: the Transformer.
    params: its parameters (the 'params' collection).
    prompts: int32 [B, P], left-padded (see `pad_prompts`), 1 <= P <= context.
    first: int32 [B], the slot of each row's first real token.
    num_tokens: how many tokens to generate, at least 1.
    key: PRNG key; token i is drawn with fold_in(key, i).
    temperature, top_k, top_p: see `sample_logits`.
    keep: the window kept at a re-prefill, in [1, context) (0: context // 2).
    return_logits: also return the logits each token was drawn from.

  Returns:
    int32 tokens [B, num_tokens]; with return_logits, (tokens, float32 logits
    [B, num_tokens, V]).
  """
  keep = _check(model, prompts, num_tokens, keep)
  return _generate(model, params, jnp.asarray(prompts, jnp.int32), jnp.asarray(first, jnp.int32),
                   key, jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
                   int(num_tokens), int(top_k), keep, bool(return_logits))


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9, 10))
def _generate(model: Transformer, params, prompts: jax.Array, first: jax.Array, key: jax.Array,
              temperature: jax.Array, top_p: jax.Array, num_tokens: int, top_k: int, keep: int,
              return_logits: bool):
  """`generate` after argument checks.

  The prompt's prefill draws token 0. Then each pass of the outer loop fills
  one window: a re-prefill if the window is full, then single-token decoding
  steps (the inner loop) until it is full again or all tokens are drawn.
  The KV cache goes through a `lax.cond` once per window, not once per token:
  XLA:CPU copies every operand of a conditional, the whole cache included,
  which measured twice the time of the decoding step itself at batch 8.
  """
  batch, prompt_length = prompts.shape
  context = model.context
  shift = context - keep + 1  # the first old slot that survives a re-prefill

  def forward(tokens_BxT, first_B, cache, index):
    logits_BxTxV, cache = model.apply({'params': params}, tokens_BxT, first=first_B,
                                      cache=cache, index=index)
    return logits_BxTxV[:, -1], cache

  def emit(state, logits_BxV):
    """Draws token number `count` from `logits_BxV` and records it."""
    count = state['count']
    token_B = sample_logits(logits_BxV, jax.random.fold_in(key, count), temperature, top_k,
                            top_p)
    state = dict(state, token=token_B, count=count + 1,
                 out=jax.lax.dynamic_update_slice(state['out'], token_B[:, None], (0, count)))
    if return_logits:
      state['logits'] = jax.lax.dynamic_update_slice(
          state['logits'], logits_BxV[:, None], (0, count, 0))
    return state

  def append(state):
    """One decoding step: the last token goes into slot `length`."""
    length, token_Bx1 = state['length'], state['token'][:, None]
    logits_BxV, cache = forward(token_Bx1, state['first'], state['cache'], length)
    window_BxC = jax.lax.dynamic_update_slice(state['window'], token_Bx1, (0, length))
    return emit(dict(state, cache=cache, window=window_BxC, length=length + 1), logits_BxV)

  def refill(state):
    """The window is full: re-prefill its last keep - 1 tokens and the last token."""
    tokens_BxK = jnp.concatenate([state['window'][:, shift:], state['token'][:, None]], axis=1)
    first_B = jnp.maximum(state['first'] - shift, 0)
    logits_BxV, cache = forward(tokens_BxK, first_B, state['cache'], 0)
    state = dict(state, cache=cache, window=state['window'].at[:, :keep].set(tokens_BxK),
                 first=first_B, length=jnp.int32(keep))
    return emit(state, logits_BxV)

  def fill_window(state):
    state = jax.lax.cond(state['length'] == context, refill, lambda s: s, state)
    unfinished = lambda s: (s['length'] < context) & (s['count'] < num_tokens)
    return jax.lax.while_loop(unfinished, append, state)

  logits_BxV, cache = forward(prompts, first, init_cache(model, batch), 0)
  state = dict(cache=cache, first=first, length=jnp.int32(prompt_length),
               window=jnp.zeros((batch, context), jnp.int32).at[:, :prompt_length].set(prompts),
               token=jnp.zeros((batch,), jnp.int32), count=jnp.int32(0),
               out=jnp.zeros((batch, num_tokens), jnp.int32))
  if return_logits:
    state['logits'] = jnp.zeros((batch, num_tokens, logits_BxV.shape[-1]), jnp.float32)
  state = emit(state, logits_BxV)
  state = jax.lax.while_loop(lambda s: s['count'] < num_tokens, fill_window, state)
  if return_logits:
    return state['out'], state['logits']
  return state['out']


_sample = jax.jit(sample_logits, static_argnames='top_k')


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(model: Transformer, params, tokens_BxC, first_B):
  return model.apply({'params': params}, tokens_BxC, first=first_B)[:, -1]


def generate_reference(model: Transformer, params, prompts: np.ndarray, first: np.ndarray,
                       num_tokens: int, key: jax.Array, temperature: Any = 1.0,
                       top_k: int = 0, top_p: Any = 1.0, keep: int = 0,
                       return_logits: bool = False):
  """`generate` without a cache: a full forward pass over the window for every token.

  Same arguments, windowing rule, keys and results as `generate`; slow, for tests.
  Each window of L tokens is given to the model as a prompt left-padded to the
  context (first + context - L), so that one compiled program serves all L.
  """
  keep = _check(model, prompts, num_tokens, keep)
  context = model.context
  shift = context - keep + 1
  window_BxL = np.asarray(prompts, np.int32)
  first_B = np.asarray(first, np.int32)
  tokens, logits = [], []
  for i in range(num_tokens):
    if i > 0:
      token_Bx1 = tokens[-1][:, None]
      if window_BxL.shape[1] == context:  # full: keep the last `keep` tokens
        window_BxL = np.concatenate([window_BxL[:, shift:], token_Bx1], axis=1)
        first_B = np.maximum(first_B - shift, 0)
      else:
        window_BxL = np.concatenate([window_BxL, token_Bx1], axis=1)
    pad = context - window_BxL.shape[1]
    padded_BxC = np.pad(window_BxL, ((0, 0), (pad, 0)))
    logits_BxV = _last_logits(model, params, padded_BxC, first_B + pad)
    token_B = _sample(logits_BxV, jax.random.fold_in(key, i), temperature, top_k, top_p)
    tokens.append(np.asarray(token_B))
    logits.append(np.asarray(logits_BxV))
  tokens_BxN = np.stack(tokens, axis=1)
  if return_logits:
    return tokens_BxN, np.stack(logits, axis=1)
  return tokens_BxN
