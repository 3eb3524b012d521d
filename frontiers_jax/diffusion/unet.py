"""The denoising network of DDPM: a UNet from (x_t, t[, label]) to an image-shaped output (NHWC).

The shape follows Ho et al. 2020 (appendix B), itself a PixelCNN++-style UNet:

  input conv 3x3 -> `channels`
  down path  per level: `num_res_blocks` residual blocks (+ self-attention at
             the levels in `attention_levels`), then a stride-2 conv, except
             after the last level. Every output is kept as a skip tensor.
  middle     residual block, self-attention, residual block.
  up path    per level, in reverse: `num_res_blocks + 1` residual blocks, each
             fed the running tensor concatenated with one skip tensor, then a
             nearest-neighbour resize to the next skip's H, W and a 3x3 conv.
  output     GroupNorm-SiLU-conv 3x3 back to the input's channels.

The step t enters every residual block through a sinusoidal embedding
(Vaswani et al. 2017, section 3.5) and a small MLP; a class label, if any, is
embedded and added to it. Label `num_classes` is the "null" label, so that one
network learns both p(x | y) and p(x) for classifier-free guidance (Ho &
Salimans 2022).

Ho et al. initialise the last layer of every residual branch and the output
conv to zero, so each block starts as the identity and the untrained network
outputs exactly 0. We do the same; the tests perturb the parameters to look
past it.

Upsampling is resize-then-conv, never a transposed conv (slow on XLA:CPU, and
prone to checkerboard artefacts, Odena et al. 2016). Resizing to the skip's own
shape lets odd sizes round-trip: 28 -> 14 -> 7 -> 14 -> 28, 7 -> 4 -> 7.
GroupNorm (not BatchNorm) keeps each example's output independent of the batch.

Parameters are float32; `dtype` sets the compute precision (with bfloat16,
convolutions, dense layers and attention run in bfloat16, GroupNorm keeps its
statistics in float32, the step embedding's sines are computed in float32);
the output is float32, so the squared error is computed in float32.
"""

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from frontiers_jax.models import compute_dtype

zeros = nn.initializers.zeros


def timestep_embedding(t_B: jax.Array, dim: int, max_period: float = 10000.) -> jax.Array:
  """Sinusoidal embedding of (integer or real) steps: [B] -> [B, dim].

  Half the dimensions are sin(t f_i), half cos(t f_i), with frequencies
  f_i = max_period^(-i / half) for i = 0..half-1, from 1 down to almost
  1 / max_period (Vaswani et al. 2017, section 3.5; Ho et al. 2020, appendix B).
  An odd `dim` gets a trailing zero.
  """
  half = dim // 2
  freqs_H = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxH = jnp.asarray(t_B, jnp.float32)[:, None] * freqs_H[None, :]
  emb_BxD = jnp.concatenate([jnp.sin(angles_BxH), jnp.cos(angles_BxH)], axis=-1)
  if dim % 2:
    emb_BxD = jnp.pad(emb_BxD, ((0, 0), (0, 1)))
  return emb_BxD


def group_norm(channels: int, num_groups: int, dtype: Any = jnp.float32) -> nn.GroupNorm:
  """GroupNorm with the largest group count <= num_groups that divides channels."""
  groups = max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)
  return nn.GroupNorm(num_groups=groups, dtype=dtype)


class ResBlock(nn.Module):
  """GN-SiLU-conv, + Dense(SiLU(emb)) per channel, GN-SiLU-dropout-conv (Ho et al. 2020)."""
  features: int
  num_groups: int = 8
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, emb_BxE, train: bool):
    dt = self.dtype
    h = nn.silu(group_norm(x_BxHxWxC.shape[-1], self.num_groups, dt)(x_BxHxWxC))
    h = nn.Conv(self.features, (3, 3), padding='SAME', dtype=dt)(h)
    h = h + nn.Dense(self.features, dtype=dt)(nn.silu(emb_BxE))[:, None, None, :]
    h = nn.silu(group_norm(self.features, self.num_groups, dt)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.features, (3, 3), padding='SAME', kernel_init=zeros, dtype=dt)(h)
    shortcut = x_BxHxWxC
    if x_BxHxWxC.shape[-1] != self.features:
      shortcut = nn.Conv(self.features, (1, 1), dtype=dt)(x_BxHxWxC)
    return shortcut + h


class AttentionBlock(nn.Module):
  """GroupNorm, then multi-head self-attention over the N = H*W positions, residual.

  K heads of D = C / K channels each (Vaswani et al. 2017, section 3.2.2).
  """
  num_heads: int = 4
  num_groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC):
    b, height, width, c = x_BxHxWxC.shape
    if c % self.num_heads:
      raise ValueError(f'{c} channels do not split into {self.num_heads} heads')
    h_BxNxC = group_norm(c, self.num_groups, self.dtype)(x_BxHxWxC).reshape(
        b, height * width, c)
    qkv_BxNx3xKxD = nn.Dense(3 * c, dtype=self.dtype)(h_BxNxC).reshape(
        b, height * width, 3, self.num_heads, -1)
    q, k, v = (qkv_BxNx3xKxD[:, :, i] for i in range(3))
    out_BxNxKxD = jax.nn.dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(D)) v
    out_BxNxC = nn.Dense(c, kernel_init=zeros, dtype=self.dtype)(
        out_BxNxKxD.reshape(b, height * width, c))
    return x_BxHxWxC + out_BxNxC.reshape(x_BxHxWxC.shape)


class UNet(nn.Module):
  """Predicts an image-shaped tensor (eps, x0 or v) from x_t, the step t, and a label."""
  channels: int = 32
  channel_mults: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attention_levels: Sequence[int] = (2,)
  num_heads: int = 4
  dropout: float = 0.0
  num_classes: int = 0
  num_groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, t_B: jax.Array,
               labels_B: Optional[jax.Array] = None, *, train: bool = False) -> jax.Array:
    num_levels = len(self.channel_mults)
    if any(not 0 <= level < num_levels for level in self.attention_levels):
      raise ValueError(f'attention_levels {tuple(self.attention_levels)} must index '
                       f'channel_mults {tuple(self.channel_mults)}')
    dt = self.dtype
    block = lambda mult: ResBlock(self.channels * mult, self.num_groups, self.dropout, dt)
    attention = lambda: AttentionBlock(self.num_heads, self.num_groups, dt)
    conv = lambda features, **kw: nn.Conv(features, (3, 3), padding='SAME', dtype=dt, **kw)

    # Step (and label) embedding, 4 * channels wide.
    emb_BxE = timestep_embedding(t_B, self.channels)
    emb_BxE = nn.Dense(4 * self.channels, dtype=dt)(emb_BxE)
    emb_BxE = nn.Dense(4 * self.channels, dtype=dt)(nn.silu(emb_BxE))
    if self.num_classes > 0:
      if labels_B is None:  # the null label: unconditional
        labels_B = jnp.full(x_BxHxWxC.shape[:1], self.num_classes, jnp.int32)
      emb_BxE = emb_BxE + nn.Embed(self.num_classes + 1, 4 * self.channels,
                                   dtype=dt)(labels_B)
    elif labels_B is not None:
      raise ValueError('labels given to a UNet with num_classes=0')

    # Down path: keep every output as a skip tensor.
    h = conv(self.channels)(x_BxHxWxC)
    skips = [h]
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.num_res_blocks):
        h = block(mult)(h, emb_BxE, train)
        if level in self.attention_levels:
          h = attention()(h)
        skips.append(h)
      if level < num_levels - 1:
        h = conv(h.shape[-1], strides=2)(h)
        skips.append(h)

    # Middle, at the lowest resolution.
    h = block(self.channel_mults[-1])(h, emb_BxE, train)
    h = attention()(h)
    h = block(self.channel_mults[-1])(h, emb_BxE, train)

    # Up path: the extra block per level eats the skip of the downsampling conv
    # (at level 0, of the input conv).
    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for _ in range(self.num_res_blocks + 1):
        h = block(mult)(jnp.concatenate([h, skips.pop()], axis=-1), emb_BxE, train)
        if level in self.attention_levels:
          h = attention()(h)
      if level > 0:
        b, _, _, c = h.shape
        _, height, width, _ = skips[-1].shape
        h = jax.image.resize(h, (b, height, width, c), method='nearest')
        h = conv(c)(h)

    h = nn.silu(group_norm(h.shape[-1], self.num_groups, dt)(h))
    return conv(x_BxHxWxC.shape[-1], kernel_init=zeros)(h).astype(jnp.float32)


def create_unet(model_config, num_classes: int) -> UNet:
  """A UNet sized by `model_config` (channels, channel_mults, num_res_blocks,
  attention_levels, num_heads, dropout, num_groups, dtype)."""
  return UNet(channels=model_config.channels,
              channel_mults=tuple(model_config.channel_mults),
              num_res_blocks=model_config.num_res_blocks,
              attention_levels=tuple(model_config.attention_levels),
              num_heads=model_config.num_heads,
              dropout=model_config.dropout,
              num_classes=num_classes,
              num_groups=model_config.num_groups,
              dtype=compute_dtype(model_config))
