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
unpadded sequences, no KV cache). It is float32 only: a JAX model with
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


def rotary(x_BxNxTxH: torch.Tensor, base: float = 10000.) -> torch.Tensor:
  """Rotary position embedding of positions 0 .. T-1, "rotate-half" convention.

  Channel i of the first half pairs with channel i of the second half; the pair
  is rotated by the angle p * base^(-2i / H) at position p (as the JAX model).
  """
  t, size = x_BxNxTxH.shape[-2:]
  half = size // 2
  freqs_F = base ** (-torch.arange(half, dtype=torch.float32, device=x_BxNxTxH.device) / half)
  positions_T = torch.arange(t, dtype=torch.float32, device=x_BxNxTxH.device)
  angles_TxF = positions_T[:, None] * freqs_F
  cos, sin = torch.cos(angles_TxF), torch.sin(angles_TxF)
  x1, x2 = x_BxNxTxH[..., :half], x_BxNxTxH[..., half:]
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
  """Causal multi-head (or grouped-query) self-attention, no cache."""

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

  def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
    b, t, _ = x_BxTxD.shape
    q = self.heads(self.query(x_BxTxD), self.num_heads)
    k = self.heads(self.key(x_BxTxD), self.num_kv_heads)
    v = self.heads(self.value(x_BxTxD), self.num_kv_heads)
    if self.use_rotary:
      q, k = rotary(q), rotary(k)
    out_BxNxTxH = F.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)
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

  def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
    x_BxTxD = x_BxTxD + self.dropout(self.attention(self.ln_attention(x_BxTxD)))
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

  def forward(self, tokens_BxT: torch.Tensor) -> torch.Tensor:
    """Next-token logits, float32 [B, T, vocab_size], for token ids [B, T]."""
    t = tokens_BxT.shape[1]
    if t > self.context:
      raise ValueError(f'{t} tokens exceed the context of {self.context}')
    x_BxTxD = self.token_embedding(tokens_BxT)
    if self.positions == 'learned':
      x_BxTxD = x_BxTxD + self.position_embedding[:t]
    x_BxTxD = self.dropout(x_BxTxD)
    for block in self.blocks:
      x_BxTxD = block(x_BxTxD)
    return self.ln_final(x_BxTxD) @ self.token_embedding.weight.T


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
