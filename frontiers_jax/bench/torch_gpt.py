"""A PyTorch twin of the JAX language model (`frontiers_jax.lm.model.Transformer`).

A benchmark of JAX against PyTorch is only fair if both sides do the same
arithmetic. `TorchGPT` is the JAX `Transformer` written again in PyTorch,
layer for layer, so that with the same weights both compute the same logits:

  token embedding (+ learned position table)  ->  dropout
  num_layers x pre-LayerNorm blocks:
    x <- x + Dropout(out(causal_attention(q, k, v)))   q, k, v from LN(x)
    x <- x + Dropout(proj(GELU(fc(LN(x)))))            exact (erf) GELU
  final LayerNorm  ->  logits = h @ token_embedding^T  (tied head)

The options of the JAX model carry over: learned or rotary positions (the
"rotate-half" convention, base 10000), grouped-query attention (query head n
reads key/value head n // (num_heads // num_kv_heads), as in
`jax.nn.dot_product_attention`), biases on or off in every Dense and
LayerNorm (eps 1e-5), and dropout on the embeddings and the two residual
branches (active in train mode only; the random masks of the two frameworks
differ, so only dropout-free runs can be compared number for number).

Weights travel between the two by name. The flax tree

  token_embedding/embedding [V, D]     ->  token_embedding.weight [V, D]
  position_embedding [C, D]            ->  position_embedding [C, D]
  block_i/attention/query/kernel [D, F]  ->  blocks.i.attention.query.weight [F, D]
  block_i/ln_mlp/scale, .../bias       ->  blocks.i.ln_mlp.weight, .bias
  ln_final/scale                       ->  ln_final.weight

maps one to one onto the torch module (`load_flax_params` and its inverse
`flax_params_from_torch`); a flax Dense kernel is [in, out] and a torch Linear
weight is [out, in], so kernels are transposed on the way.

Scope: the twin covers the training path of the JAX model (a whole batch of
unpadded sequences) and its KV-cache decoding (`init_cache`, `forward` with
a cache and a slot index, `greedy_decode`), for unpadded prompts that, with
the generated tokens, fit the context (no left padding, no re-prefill). The
cache is laid out as the JAX one: per layer, keys and values of all `context`
slots, written in place at slots index .. index + T - 1; queries attend over
the whole buffer with a mask (key slot <= query slot), so the shapes never
change from one token to the next and `torch.compile` compiles the decoding
step once. It is float32 only: a JAX model with
`dtype=bfloat16` is twinned in float32 (wrap the twin in `torch.autocast` for
a bfloat16 benchmark, knowing that autocast's choice of bfloat16 ops is not
exactly the JAX model's). `attention_impl` is ignored: every attention
implementation computes the same function.

How close the twins are (float32, CPU, 2 layers of width 32): logits and the
loss agree to about 2e-7 relative, parameters after a few Adam steps to about
1e-6. One parameter cannot be twinned step for step: with `use_bias` and
learned positions, the key bias adds q . b to every score of a query, a shift
the softmax ignores, so its gradient is exactly 0 in exact arithmetic. Each
framework computes a different rounding residue (~1e-10) instead, and Adam,
which divides by sqrt(v) + 1e-8, turns it into a step of up to lr in an
arbitrary direction (measured: 2e-5 apart after one step at lr 1e-3). The
model's function does not depend on that bias, so losses stay equal. With
rotary positions the bias is rotated differently per position, has a real
gradient and twins like every other parameter.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frontiers_jax.bench import weights

from frontiers_jax.lm.model import Transformer, check, kv_heads


def rotary(x_BxNxTxH: torch.Tensor, positions_T: torch.Tensor | None = None,
           base: float = 10000.) -> torch.Tensor:
  """Rotary position embedding, "rotate-half" convention.

  Channel i of the first half pairs with channel i of the second half; the pair
  is rotated by the angle p * base^(-2i / H) at position p (as the JAX model).
  The positions are 0 .. T-1 unless given (int [T]).
  """
  t, size = x_BxNxTxH.shape[-2:]
  half = size // 2
  freqs_F = base ** (-torch.arange(half, dtype=torch.float32, device=x_BxNxTxH.device) / half)
  if positions_T is None:
    positions_T = torch.arange(t, device=x_BxNxTxH.device)
  angles_TxF = positions_T.to(torch.float32)[:, None] * freqs_F
  cos, sin = torch.cos(angles_TxF), torch.sin(angles_TxF)
  x1, x2 = x_BxNxTxH[..., :half], x_BxNxTxH[..., half:]
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
  """Causal multi-head (or grouped-query) self-attention, with an optional KV cache."""

  def __init__(self, width: int, num_heads: int, num_kv_heads: int, use_rotary: bool,
               use_bias: bool):
    super().__init__()
    self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
    self.head_dim = width // num_heads
    self.use_rotary = use_rotary
    self.query = nn.Linear(width, num_heads * self.head_dim, bias=use_bias)
    self.key = nn.Linear(width, num_kv_heads * self.head_dim, bias=use_bias)
    self.value = nn.Linear(width, num_kv_heads * self.head_dim, bias=use_bias)
    self.out = nn.Linear(num_heads * self.head_dim, width, bias=use_bias)

  def heads(self, x_BxTxF: torch.Tensor, count: int) -> torch.Tensor:
    """[B, T, count * H] -> [B, count, T, H], the layout of torch attention."""
    b, t, _ = x_BxTxF.shape
    return x_BxTxF.view(b, t, count, self.head_dim).transpose(1, 2)

  def forward(self, x_BxTxD: torch.Tensor, layer_cache: tuple | None = None,
              slots_T: torch.Tensor | None = None) -> torch.Tensor:
    """Without a cache: causal attention within x. With one (keys, values
    [B, K, C, H], updated in place): x's tokens sit in `slots_T` and attend
    over the cached slots up to their own."""
    b, t, _ = x_BxTxD.shape
    q = self.heads(self.query(x_BxTxD), self.num_heads)
    k = self.heads(self.key(x_BxTxD), self.num_kv_heads)
    v = self.heads(self.value(x_BxTxD), self.num_kv_heads)
    if self.use_rotary:
      q, k = rotary(q, slots_T), rotary(k, slots_T)
    gqa = self.num_kv_heads != self.num_heads
    if layer_cache is None:
      out_BxNxTxH = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
      keys_BxKxCxH, values_BxKxCxH = layer_cache
      keys_BxKxCxH.index_copy_(2, slots_T, k)
      values_BxKxCxH.index_copy_(2, slots_T, v)
      slots_C = torch.arange(keys_BxKxCxH.shape[2], device=x_BxTxD.device)
      mask_TxC = slots_C[None, :] <= slots_T[:, None]
      out_BxNxTxH = F.scaled_dot_product_attention(q, keys_BxKxCxH, values_BxKxCxH,
                                                   attn_mask=mask_TxC, enable_gqa=gqa)
    return self.out(out_BxNxTxH.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
  """A pre-LayerNorm Transformer block: attention, then an MLP, each residual."""

  def __init__(self, width: int, num_heads: int, num_kv_heads: int, mlp_ratio: int,
               use_rotary: bool, dropout: float, use_bias: bool):
    super().__init__()
    self.ln_attention = nn.LayerNorm(width, eps=1e-5, bias=use_bias)
    self.attention = Attention(width, num_heads, num_kv_heads, use_rotary, use_bias)
    self.ln_mlp = nn.LayerNorm(width, eps=1e-5, bias=use_bias)
    self.fc = nn.Linear(width, mlp_ratio * width, bias=use_bias)
    self.proj = nn.Linear(mlp_ratio * width, width, bias=use_bias)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x_BxTxD: torch.Tensor, layer_cache: tuple | None = None,
              slots_T: torch.Tensor | None = None) -> torch.Tensor:
    attended = self.attention(self.ln_attention(x_BxTxD), layer_cache, slots_T)
    x_BxTxD = x_BxTxD + self.dropout(attended)
    h = F.gelu(self.fc(self.ln_mlp(x_BxTxD)), approximate='none')
    return x_BxTxD + self.dropout(self.proj(h))


class TorchGPT(nn.Module):
  """The PyTorch twin of `Transformer`; see the module docstring.

  The fields are those of `Transformer` (without `dtype` and
  `attention_impl`). The initial weights are torch's defaults, not GPT-2's:
  a twin is meant to receive the JAX model's weights (`load_flax_params`).
  """

  def __init__(self, vocab_size: int, context: int, num_layers: int = 4, num_heads: int = 4,
               num_kv_heads: int = 0, width: int = 128, mlp_ratio: int = 4,
               positions: str = 'learned', dropout: float = 0.0, use_bias: bool = False):
    super().__init__()
    fields = Transformer(vocab_size, context, num_layers, num_heads, num_kv_heads, width,
                         mlp_ratio, positions, dropout, use_bias)
    check(fields)  # the same ValueErrors as the JAX model
    self.vocab_size, self.context, self.positions = vocab_size, context, positions
    self.token_embedding = nn.Embedding(vocab_size, width)
    if positions == 'learned':
      self.position_embedding = nn.Parameter(torch.zeros(context, width))
    self.dropout = nn.Dropout(dropout)
    self.blocks = nn.ModuleList(
        Block(width, num_heads, kv_heads(fields), mlp_ratio, positions == 'rotary', dropout,
              use_bias) for _ in range(num_layers))
    self.ln_final = nn.LayerNorm(width, eps=1e-5, bias=use_bias)

  @classmethod
  def from_module(cls, model: Transformer) -> 'TorchGPT':
    """The twin of a JAX `Transformer` (its fields; weights: `load_flax_params`)."""
    return cls(model.vocab_size, model.context, model.num_layers, model.num_heads,
               model.num_kv_heads, model.width, model.mlp_ratio, model.positions,
               model.dropout, model.use_bias)

  def forward(self, tokens_BxT: torch.Tensor, cache: list | None = None,
              index: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits, float32 [B, T, vocab_size], for token ids [B, T].

    With a `cache` (from `init_cache`, updated in place), the tokens sit in
    slots index .. index + T - 1 (`index` a 0-d integer tensor, so that a
    compiled step does not specialize on it) and see every earlier slot.
    """
    t = tokens_BxT.shape[1]
    if t > self.context:
      raise ValueError(f'{t} tokens exceed the context of {self.context}')
    slots_T = None if cache is None else index + torch.arange(t, device=tokens_BxT.device)
    x_BxTxD = self.token_embedding(tokens_BxT)
    if self.positions == 'learned':
      x_BxTxD = x_BxTxD + (self.position_embedding[:t] if cache is None
                           else self.position_embedding[slots_T])
    x_BxTxD = self.dropout(x_BxTxD)
    for i, block in enumerate(self.blocks):
      x_BxTxD = block(x_BxTxD, None if cache is None else cache[i], slots_T)
    return self.ln_final(x_BxTxD) @ self.token_embedding.weight.T

  def init_cache(self, batch_size: int) -> list:
    """An empty KV cache: per layer, zero (keys, values), each [B, K, context, H]."""
    attention = self.blocks[0].attention
    shape = (batch_size, attention.num_kv_heads, self.context, attention.head_dim)
    return [(torch.zeros(shape), torch.zeros(shape)) for _ in self.blocks]


def greedy_decode(forward, torch_model: TorchGPT, prompts_BxP: torch.Tensor,
                  num_tokens: int) -> torch.Tensor:
  """Greedy decoding with a KV cache: one prefill call, then one call per token.

  `forward` is `torch_model` or its `torch.compile`d version. The prompt and
  the generated tokens must fit the context (no re-prefill). Returns the
  generated tokens, int64 [B, num_tokens].
  """
  batch, length = prompts_BxP.shape
  if length + num_tokens - 1 > torch_model.context:
    raise ValueError(f'{length} + {num_tokens} tokens exceed the context of '
                     f'{torch_model.context}')
  with torch.no_grad():
    cache = torch_model.init_cache(batch)
    token_B = forward(prompts_BxP, cache, torch.tensor(0))[:, -1].argmax(-1)
    tokens = [token_B]
    for slot in range(length, length + num_tokens - 1):
      token_B = forward(token_B[:, None], cache, torch.tensor(slot))[:, -1].argmax(-1)
      tokens.append(token_B)
  return torch.stack(tokens, dim=1)


def lm_loss(torch_model: TorchGPT, tokens_BxT: torch.Tensor) -> torch.Tensor:
  """The mean next-token cross-entropy, as the JAX workload computes it:
  logits of tokens[:, :-1] against the targets tokens[:, 1:]."""
  logits_BxTxV = torch_model(tokens_BxT[:, :-1])
  return F.cross_entropy(logits_BxTxV.reshape(-1, logits_BxTxV.shape[-1]),
                         tokens_BxT[:, 1:].reshape(-1))


# -- Weights between flax and torch -------------------------------------------------


def torch_name(path: tuple[str, ...]) -> tuple[str, bool]:
  """The torch parameter name of a flax parameter path, and whether the array
  is transposed between the two (Dense kernels)."""
  parts = [f'blocks.{p[len("block_"):]}' if p.startswith('block_') else p for p in path[:-1]]
  leaf = path[-1]
  renamed = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}.get(leaf, leaf)
  return '.'.join(parts + [renamed]), leaf == 'kernel'


def load_flax_params(torch_model: TorchGPT, params: Any) -> TorchGPT:
  """Copies flax parameters (the nested dict of `Transformer.init(...)['params']`)
  into `torch_model`. Every torch parameter must receive exactly one array."""
  return weights.load_named(torch_model, params, torch_name)


def flax_params_from_torch(torch_model: TorchGPT, like: Any) -> dict:
  """The torch parameters as a nested dict of numpy arrays shaped like the flax
  tree `like` (same paths, flax layouts): to compare the two after training."""
  return weights.named_to_flax(torch_model, like, torch_name)
