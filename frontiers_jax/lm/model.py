"""A decoder-only Transformer language model (GPT; Radford et al. 2018, 2019).

The network maps token ids to next-token logits. Each token is embedded, its
position is added (a learned table, or rotary embeddings inside attention),
and `num_layers` pre-LayerNorm blocks refine the sequence:

  x <- x + Dropout(Attention(LN(x)))     tokens exchange information
  x <- x + Dropout(MLP(LN(x)))           each token is transformed alone

A last LayerNorm and the transposed token embedding ("weight tying", Press &
Wolf 2017) give the logits. Attention is causal: a token sees itself and the
tokens before it, never after, so one forward pass over T tokens trains T
next-token predictions at once.

Slots, padding and positions. Token t of a call sits in slot s = index + t
(index is 0 without a cache). Rows of a batch may be left-padded: `first[r]`
is the slot of row r's first real token. The position id of slot s is
max(s - first[r], 0), so a sequence means the same thing whatever its padding;
a query in slot s attends to the keys in slots first[r] .. s. Padding is never
attended to by real tokens; a padding slot attends only to itself, which keeps
its (unused) outputs finite.

Positions come in two flavours. 'learned' adds a trained vector per position
id to the token embedding (GPT-2). 'rotary' (RoPE; Su et al. 2021) rotates
pairs of query and key channels by angles proportional to the position id, so
that q . k depends only on the distance between the two tokens.

Grouped-query attention (Ainslie et al. 2023): with num_kv_heads < num_heads,
each group of num_heads // num_kv_heads query heads shares one key/value head,
shrinking the KV cache by that factor.

KV cache. Generating token after token, the keys and values of the past do not
change, so they are kept: `init_cache` allocates one buffer of `context` slots
per layer, and a call with `cache` writes its keys and values at slots
index .. index + T - 1 and lets its queries attend over the whole buffer (the
causal mask hides the slots not yet written). Prefill is one call with the
prompt at index 0; each decoding step is a call with T = 1. The cache goes in
and out as a plain pytree, so the state of decoding is explicit.

Attention uses `jax.nn.dot_product_attention`. The training path (no cache,
no `first`) passes `is_causal=True` and no mask, which lets a fused kernel
(cuDNN flash attention, `attention_impl='cudnn'`) skip the masked half. Fused
kernels have no dropout on the attention probabilities, so this model has none
either; dropout acts on the embeddings and on the residual branches only.

Initialisation follows GPT-2: normal(0.02) weights, and the two projections
that write into the residual stream scaled by 1 / sqrt(2 * num_layers), so
the stream's variance does not grow with depth. Parameters are float32;
`dtype` sets the compute precision (e.g. bfloat16); logits are float32.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Cache = tuple  # one {'k': [B, S, K, H], 'v': [B, S, K, H]} dict per layer


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def kv_heads(model: 'Transformer') -> int:
  """The number of key/value heads (num_heads when num_kv_heads is 0)."""
  return model.num_kv_heads or model.num_heads


def head_dim(model: 'Transformer') -> int:
  """Channels per attention head: width // num_heads."""
  return model.width // model.num_heads


def check(model: 'Transformer') -> None:
  """Raises ValueError on inconsistent fields."""
  if model.width % model.num_heads:
    raise ValueError(f'width {model.width} does not split into {model.num_heads} heads')
  if model.num_heads % kv_heads(model):
    raise ValueError(f'{model.num_heads} heads do not split into '
                     f'{kv_heads(model)} key/value groups')
  if model.positions not in ('learned', 'rotary'):
    raise ValueError(f"positions must be 'learned' or 'rotary', not {model.positions!r}")
  if model.positions == 'rotary' and head_dim(model) % 2:
    raise ValueError(f'rotary embeddings need an even head_dim, not {head_dim(model)}')


def rotary(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, base: float = 10000.) -> jax.Array:
  """Rotary position embedding, "rotate-half" convention (GPT-NeoX, Llama).

  Channel i of the first half pairs with channel i of the second half; the pair
  is rotated by the angle p * base^(-2i / H) for position id p.
  """
  half = x_BxTxNxH.shape[-1] // 2
  freqs_F = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * freqs_F
  cos = jnp.cos(angles_BxTxF)[:, :, None, :]
  sin = jnp.sin(angles_BxTxF)[:, :, None, :]
  x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def per_token(layer, x_BxTxD: jax.Array) -> jax.Array:
  """Applies a per-token layer to the B*T rows of x, then restores [B, T, ...].

  Same values as applying it to [B, T, D] directly, but on XLA:CPU the
  backward of a Dense over [B, T, D] (its weight gradient contracts two axes)
  measured about 3x slower than over [B*T, D] rows.
  """
  b, t, d = x_BxTxD.shape
  return layer(x_BxTxD.reshape(b * t, d)).reshape(b, t, -1)


class Attention(nn.Module):
  """Causal multi-head (or grouped-query) self-attention with an optional KV cache."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rotary: bool
  use_bias: bool
  out_std: float
  dtype: Any
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask_Bx1xTxS, layer_cache, index):
    b, t, width = x_BxTxD.shape
    dense = lambda features, name, std=0.02: nn.Dense(
        features, use_bias=self.use_bias, kernel_init=_normal(std), dtype=self.dtype,
        param_dtype=jnp.float32, name=name)
    q = per_token(dense(self.num_heads * self.head_dim, 'query'), x_BxTxD)
    k = per_token(dense(self.num_kv_heads * self.head_dim, 'key'), x_BxTxD)
    v = per_token(dense(self.num_kv_heads * self.head_dim, 'value'), x_BxTxD)
    q_BxTxNxH = q.reshape(b, t, self.num_heads, self.head_dim)
    k_BxTxKxH = k.reshape(b, t, self.num_kv_heads, self.head_dim)
    v_BxTxKxH = v.reshape(b, t, self.num_kv_heads, self.head_dim)
    if self.rotary:
      q_BxTxNxH = rotary(q_BxTxNxH, positions_BxT)
      k_BxTxKxH = rotary(k_BxTxKxH, positions_BxT)

    new_cache = None
    if layer_cache is not None:
      start = (0, index, 0, 0)
      new_cache = {
          'k': jax.lax.dynamic_update_slice(
              layer_cache['k'], k_BxTxKxH.astype(layer_cache['k'].dtype), start),
          'v': jax.lax.dynamic_update_slice(
              layer_cache['v'], v_BxTxKxH.astype(layer_cache['v'].dtype), start)}
      k_BxTxKxH, v_BxTxKxH = new_cache['k'], new_cache['v']  # now S = context slots

    if mask_Bx1xTxS is None:  # training: plain causal attention, fusable
      out = jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, is_causal=True,
                                         implementation=self.implementation)
    else:
      dtype = q_BxTxNxH.dtype
      out = jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH.astype(dtype),
                                         v_BxTxKxH.astype(dtype), mask=mask_Bx1xTxS)
    out_BxTxD = per_token(dense(width, 'out', self.out_std), out.reshape(b, t, -1))
    return out_BxTxD, new_cache


class Block(nn.Module):
  """A pre-LayerNorm Transformer block: attention, then an MLP, each residual."""
  num_layers: int
  num_heads: int
  num_kv_heads: int
  width: int
  mlp_ratio: int
  rotary: bool
  dropout: float
  use_bias: bool
  dtype: Any
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask_Bx1xTxS, layer_cache, index, train):
    out_std = 0.02 / math.sqrt(2 * self.num_layers)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, dtype=self.dtype,
                                     param_dtype=jnp.float32, name=name)
    dense = lambda features, name, std: nn.Dense(
        features, use_bias=self.use_bias, kernel_init=_normal(std), dtype=self.dtype,
        param_dtype=jnp.float32, name=name)
    dropout = nn.Dropout(self.dropout, deterministic=not train)

    attention = Attention(self.num_heads, self.num_kv_heads, self.width // self.num_heads,
                          self.rotary, self.use_bias, out_std, self.dtype, self.attention_impl,
                          name='attention')
    h, new_cache = attention(norm('ln_attention')(x_BxTxD), positions_BxT, mask_Bx1xTxS,
                             layer_cache, index)
    x_BxTxD = x_BxTxD + dropout(h)

    fc = dense(self.mlp_ratio * self.width, 'fc', 0.02)
    proj = dense(self.width, 'proj', out_std)
    h = per_token(lambda x: proj(jax.nn.gelu(fc(x), approximate=False)),
                  norm('ln_mlp')(x_BxTxD))
    return x_BxTxD + dropout(h), new_cache


def attention_mask(first_B: jax.Array, query_slots_T: jax.Array,
                   key_slots_S: jax.Array) -> jax.Array:
  """Boolean [B, 1, T, S]: query slot q sees key slot k iff first <= k <= q.

  A padding query (q < first) sees only itself.
  """
  q = query_slots_T[None, :, None]
  k = key_slots_S[None, None, :]
  real = k >= first_B[:, None, None]
  mask_BxTxS = (k <= q) & (real | (k == q))
  return mask_BxTxS[:, None]


class Transformer(nn.Module):
  """A decoder-only Transformer language model; see the module docstring."""
  vocab_size: int
  context: int
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 0
  width: int = 128
  mlp_ratio: int = 4
  positions: str = 'learned'
  dropout: float = 0.0
  use_bias: bool = False
  dtype: Any = jnp.float32
  attention_impl: Optional[str] = None  # for the training path: None, 'xla' or 'cudnn'

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, *, first: Optional[jax.Array] = None,
               cache: Optional[Cache] = None, index: Optional[jax.Array] = None,
               train: bool = False):
    """Next-token logits for every token of `tokens_BxT` (int32 [B, T]).

    Args:
      tokens_BxT: token ids, int32 [B, T].
      first: int32 [B], the slot of each row's first real token (left padding);
        None: no padding.
      cache: from `init_cache` or a previous call; None: no cache.
      index: the slot of this call's first token (only with a cache; default 0);
        may be traced. The call must fit: index + T <= context.
      train: enables dropout (needs a 'dropout' rng when dropout > 0).

    Returns:
      float32 logits [B, T, vocab_size]; with a cache, (logits, new_cache).
    """
    check(self)
    b, t = tokens_BxT.shape
    if t > self.context:
      raise ValueError(f'{t} tokens exceed the context of {self.context}')
    if cache is None and index is not None:
      raise ValueError('index is only meaningful with a cache')
    index = jnp.asarray(0 if index is None else index, jnp.int32)

    query_slots_T = index + jnp.arange(t, dtype=jnp.int32)
    if cache is None and first is None:  # training: causal, no padding
      mask = None
      positions_BxT = jnp.broadcast_to(query_slots_T, (b, t))
    else:
      first_B = jnp.zeros((b,), jnp.int32) if first is None else jnp.asarray(first, jnp.int32)
      key_slots_S = jnp.arange(self.context if cache is not None else t, dtype=jnp.int32)
      mask = attention_mask(first_B, query_slots_T, key_slots_S)
      positions_BxT = jnp.maximum(query_slots_T[None, :] - first_B[:, None], 0)

    embed = nn.Embed(self.vocab_size, self.width, embedding_init=_normal(0.02),
                     dtype=self.dtype, param_dtype=jnp.float32, name='token_embedding')
    x_BxTxD = embed(tokens_BxT)
    if self.positions == 'learned':
      table_CxD = self.param('position_embedding', _normal(0.02), (self.context, self.width),
                             jnp.float32)
      x_BxTxD = x_BxTxD + table_CxD[positions_BxT].astype(self.dtype)
    x_BxTxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxTxD)

    block = lambda name: Block(self.num_layers, self.num_heads, kv_heads(self), self.width,
                               self.mlp_ratio, self.positions == 'rotary', self.dropout,
                               self.use_bias, self.dtype, self.attention_impl, name=name)
    new_cache = []
    for i in range(self.num_layers):
      layer_cache = None if cache is None else cache[i]
      x_BxTxD, layer_cache = block(name=f'block_{i}')(
          x_BxTxD, positions_BxT, mask, layer_cache, index, train)
      new_cache.append(layer_cache)

    h_BxTxD = nn.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, dtype=self.dtype,
                           param_dtype=jnp.float32, name='ln_final')(x_BxTxD)
    logits_BxTxV = per_token(embed.attend, h_BxTxD).astype(jnp.float32)
    if cache is None:
      return logits_BxTxV
    return logits_BxTxV, tuple(new_cache)


def init_cache(model: Transformer, batch_size: int) -> Cache:
  """An empty KV cache: per layer, zero keys and values [B, context, K, H] in model.dtype."""
  shape = (batch_size, model.context, kv_heads(model), head_dim(model))
  return tuple({'k': jnp.zeros(shape, model.dtype), 'v': jnp.zeros(shape, model.dtype)}
               for _ in range(model.num_layers))


def count_params(params) -> int:
  """The number of parameters, without the position embedding (the usual convention)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return sum(int(leaf.size) for path, leaf in leaves
             if 'position_embedding' not in jax.tree_util.keystr(path))


def num_params(model: Transformer) -> int:
  """`count_params` of the model's parameters, in closed form (no initialisation)."""
  check(model)
  d, bias = model.width, int(model.use_bias)
  kv = kv_heads(model) * head_dim(model)
  hidden = model.mlp_ratio * d
  norm = d * (1 + bias)
  attention = d * d + 2 * d * kv + d * d + bias * (d + 2 * kv + d)
  mlp = d * hidden + hidden * d + bias * (hidden + d)
  per_layer = 2 * norm + attention + mlp
  return model.vocab_size * d + model.num_layers * per_layer + norm


def flops_per_token(model: Transformer) -> float:
  """Training FLOPs per token: 6 N + 12 L D C (PaLM, appendix B; nanoGPT).

  6 N counts the matmuls with the N parameters (2 forward, 4 backward); the
  second term the attention scores and weighted sums over a full context C.
  """
  return float(6 * num_params(model)
               + 12 * model.num_layers * model.width * model.context)
