"""A PyTorch twin of the diffusion UNet (`frontiers_jax.diffusion.unet.UNet`).

`TorchUNet` is the flax UNet written again in PyTorch, layer for layer, so that
with the same weights both map (x_t, t, label) to the same prediction:

  step embedding  sinusoidal(t) -> Dense -> SiLU -> Dense (+ class embedding;
                  no label means the null label `num_classes`)
  down path       conv 3x3, then per level residual blocks (+ attention) and a
                  stride-2 conv except after the last level; every output is a skip
  middle          residual block, attention, residual block
  up path         per level num_res_blocks + 1 blocks on [h, skip], then a
                  nearest-neighbour resize to the next skip's size and a conv 3x3
  output          GroupNorm -> SiLU -> conv 3x3

Where the two frameworks differ by default, the twin follows flax:

  layout     the twin takes and returns NHWC like the flax model and permutes
             to NCHW inside (GroupNorm then normalises over dim 1, the channels,
             in the same contiguous groups of C / G channels as flax);
  epsilon    flax GroupNorm adds 1e-6 to the variance, torch's default is 1e-5;
  padding    flax 'SAME' pads a total of max((out - 1) s + k - in, 0) pixels,
             the smaller half before: symmetric for a stride-1 3x3 conv, but
             (0, 1) for the stride-2 conv of an even size (8 -> 4, 28 -> 14),
             where torch's padding=1 would shift the sampling grid by a pixel;
  resizing   `jax.image.resize(method='nearest')` reads source pixel
             floor((i + 0.5) in / out), computed in float32 (torch's 'nearest'
             reads floor(i in / out), which differs for 4 -> 7); the twin indexes
             with the same float32 formula;
  attention  the Dense(3C) output of position n is reshaped to (3, K, D): q, k,
             v, then head, then channel; the positions are the H * W pixels in
             row-major order, and the scale is 1 / sqrt(D).

Weights travel by name. The torch submodules carry the flax names
(`ResBlock_3.GroupNorm_1`, `Conv_2`, `AttentionBlock_0.Dense_1`, ...), created
in the order in which flax's compact `__call__` numbers them, so a flax path
maps to a torch name by joining with dots and renaming the leaf (kernel ->
weight, transposed: Dense [in, out] -> Linear [out, in], Conv [kh, kw, in, out]
-> Conv2d [out, in, kh, kw]; scale -> weight; embedding -> weight). Both
convolutions are cross-correlations, so the conversion is exact both ways.

Dropout (in the residual blocks) is active in train mode only; the random
masks of the two frameworks differ, so only dropout-free runs (or eval mode)
can be compared number for number.

How close the twins are (float32, CPU, configs/diffusion.py:tiny sizes):
outputs agree to about 1e-6, the loss to 1e-7 relative, parameters after an
Adam step to about 1e-6 (6e-5 at worst, on an entry whose gradient is near
0, where Adam's first step is lr sign(g)), with one exception. The attention key bias adds
q . b_k to every score of a query, a shift the softmax ignores, so its
gradient is exactly 0; each framework computes a different rounding residue
instead, which Adam (dividing by |g| + 1e-8) turns into a step of up to lr in
an arbitrary direction (measured: 8e-5 apart after one step at lr 1e-3). The
model's function does not depend on that bias. The twin also runs in float64
(`.double()`), for references.
"""

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frontiers_jax.bench import weights

from frontiers_jax.diffusion.unet import UNet

GROUP_NORM_EPS = 1e-6  # flax.linen.GroupNorm's default epsilon


def timestep_embedding(t_B: torch.Tensor, dim: int, max_period: float = 10000.) -> torch.Tensor:
  """[B] steps -> [B, dim]: sin(t f_i) then cos(t f_i), f_i = max_period^(-i / half)
  (as `unet.timestep_embedding`, in float32); an odd dim gets a trailing zero."""
  half = dim // 2
  arange = torch.arange(half, dtype=torch.float32, device=t_B.device)
  freqs_H = torch.exp(-math.log(max_period) * arange / half)
  angles_BxH = t_B.to(torch.float32)[:, None] * freqs_H[None, :]
  emb_BxD = torch.cat([torch.sin(angles_BxH), torch.cos(angles_BxH)], dim=-1)
  return F.pad(emb_BxD, (0, 1)) if dim % 2 else emb_BxD


def groups_for(channels: int, num_groups: int) -> int:
  """The largest group count <= num_groups that divides channels (`unet.group_norm`)."""
  return max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
  return nn.GroupNorm(groups_for(channels, num_groups), channels, eps=GROUP_NORM_EPS)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) padding of flax/XLA 'SAME' along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class Conv(nn.Conv2d):
  """A Conv2d (NCHW) with flax's 'SAME' padding, possibly asymmetric."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
    super().__init__(in_channels, out_channels, kernel, stride=stride, padding=0)

  def forward(self, x_BxCxHxW: torch.Tensor) -> torch.Tensor:
    (k_h, k_w), (s_h, s_w) = self.kernel_size, self.stride
    top, bottom = same_padding(x_BxCxHxW.shape[2], k_h, s_h)
    left, right = same_padding(x_BxCxHxW.shape[3], k_w, s_w)
    return super().forward(F.pad(x_BxCxHxW, (left, right, top, bottom)))


def resize_nearest(x_BxCxHxW: torch.Tensor, height: int, width: int) -> torch.Tensor:
  """`jax.image.resize(..., method='nearest')` on NCHW: output pixel i reads
  input pixel floor((i + 0.5) in / out), the offsets computed in float32."""
  def indices(size_in: int, size_out: int) -> torch.Tensor:
    offsets = (torch.arange(size_out, dtype=torch.float32) + 0.5) * size_in / size_out
    return torch.floor(offsets).long().to(x_BxCxHxW.device)
  rows = indices(x_BxCxHxW.shape[2], height)
  cols = indices(x_BxCxHxW.shape[3], width)
  return x_BxCxHxW[:, :, rows][:, :, :, cols]


class Namer:
  """Numbers submodules per kind as flax's compact modules do: Conv_0, Conv_1, ...

  Used once to build (`add`) and on every call to find (`get`) the modules, in
  the same order, so the two stay in step with the flax code they mirror.
  """

  def __init__(self, owner: nn.Module):
    self.owner, self.counts = owner, {}

  def _next(self, kind: str) -> str:
    n = self.counts.get(kind, 0)
    self.counts[kind] = n + 1
    return f'{kind}_{n}'

  def add(self, kind: str, module: nn.Module) -> nn.Module:
    self.owner.add_module(self._next(kind), module)
    return module

  def get(self, kind: str) -> nn.Module:
    return getattr(self.owner, self._next(kind))


class ResBlock(nn.Module):
  """GN-SiLU-conv, + Linear(SiLU(emb)) per channel, GN-SiLU-dropout-conv, residual."""

  def __init__(self, in_channels: int, features: int, emb_dim: int, num_groups: int,
               dropout: float):
    super().__init__()
    self.GroupNorm_0 = group_norm(in_channels, num_groups)
    self.Conv_0 = Conv(in_channels, features, 3)
    self.Dense_0 = nn.Linear(emb_dim, features)
    self.GroupNorm_1 = group_norm(features, num_groups)
    self.dropout = nn.Dropout(dropout)
    self.Conv_1 = Conv(features, features, 3)
    if in_channels != features:
      self.Conv_2 = Conv(in_channels, features, 1)  # the shortcut

  def forward(self, x_BxCxHxW: torch.Tensor, emb_BxE: torch.Tensor) -> torch.Tensor:
    h = self.Conv_0(F.silu(self.GroupNorm_0(x_BxCxHxW)))
    h = h + self.Dense_0(F.silu(emb_BxE))[:, :, None, None]
    h = self.Conv_1(self.dropout(F.silu(self.GroupNorm_1(h))))
    shortcut = self.Conv_2(x_BxCxHxW) if hasattr(self, 'Conv_2') else x_BxCxHxW
    return shortcut + h


class AttentionBlock(nn.Module):
  """GroupNorm, then K-head self-attention over the H * W positions, residual."""

  def __init__(self, channels: int, num_heads: int, num_groups: int):
    super().__init__()
    if channels % num_heads:
      raise ValueError(f'{channels} channels do not split into {num_heads} heads')
    self.num_heads = num_heads
    self.GroupNorm_0 = group_norm(channels, num_groups)
    self.Dense_0 = nn.Linear(channels, 3 * channels)
    self.Dense_1 = nn.Linear(channels, channels)

  def forward(self, x_BxCxHxW: torch.Tensor) -> torch.Tensor:
    b, c, height, width = x_BxCxHxW.shape
    n = height * width
    h_BxNxC = self.GroupNorm_0(x_BxCxHxW).flatten(2).transpose(1, 2)  # row-major pixels
    qkv_3xBxKxNxD = self.Dense_0(h_BxNxC).view(b, n, 3, self.num_heads, -1).permute(
        2, 0, 3, 1, 4)
    out_BxKxNxD = F.scaled_dot_product_attention(*qkv_3xBxKxNxD)  # scale 1 / sqrt(D)
    out_BxNxC = self.Dense_1(out_BxKxNxD.transpose(1, 2).reshape(b, n, c))
    return x_BxCxHxW + out_BxNxC.transpose(1, 2).reshape(b, c, height, width)


class TorchUNet(nn.Module):
  """The PyTorch twin of `UNet`; see the module docstring.

  The fields are those of `UNet`, plus the image channels, which torch needs
  at construction (flax infers them from the input). The initial weights are
  torch's defaults: a twin is meant to receive the flax weights.
  """

  def __init__(self, channels: int = 32, channel_mults: Sequence[int] = (1, 2, 2),
               num_res_blocks: int = 2, attention_levels: Sequence[int] = (2,),
               num_heads: int = 4, dropout: float = 0.0, num_classes: int = 0,
               num_groups: int = 8, image_channels: int = 1):
    super().__init__()
    levels = len(channel_mults)
    if any(not 0 <= level < levels for level in attention_levels):
      raise ValueError(f'attention_levels {tuple(attention_levels)} must index '
                       f'channel_mults {tuple(channel_mults)}')
    self.channels, self.channel_mults = channels, tuple(channel_mults)
    self.num_res_blocks, self.attention_levels = num_res_blocks, tuple(attention_levels)
    self.num_classes = num_classes
    self._build(num_heads, dropout, num_groups, image_channels)

  @classmethod
  def from_module(cls, model: UNet, image_channels: int = 1) -> 'TorchUNet':
    """The twin of a flax `UNet` (its fields; weights: `load_flax_params`)."""
    return cls(model.channels, tuple(model.channel_mults), model.num_res_blocks,
               tuple(model.attention_levels), model.num_heads, model.dropout,
               model.num_classes, model.num_groups, image_channels)

  def _build(self, num_heads: int, dropout: float, num_groups: int, image_channels: int):
    """Creates the submodules in the order (and so with the names) of flax."""
    names, emb = Namer(self), 4 * self.channels
    block = lambda c_in, mult: names.add('ResBlock', ResBlock(
        c_in, self.channels * mult, emb, num_groups, dropout))
    attention = lambda c: names.add('AttentionBlock', AttentionBlock(c, num_heads, num_groups))
    names.add('Dense', nn.Linear(self.channels, emb))
    names.add('Dense', nn.Linear(emb, emb))
    if self.num_classes > 0:
      names.add('Embed', nn.Embedding(self.num_classes + 1, emb))
    c = self.channels
    names.add('Conv', Conv(image_channels, c, 3))
    skips = [c]
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.num_res_blocks):
        block(c, mult)
        c = self.channels * mult
        if level in self.attention_levels:
          attention(c)
        skips.append(c)
      if level < len(self.channel_mults) - 1:
        names.add('Conv', Conv(c, c, 3, stride=2))
        skips.append(c)
    block(c, self.channel_mults[-1])
    attention(c)
    block(c, self.channel_mults[-1])
    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for _ in range(self.num_res_blocks + 1):
        block(c + skips.pop(), mult)
        c = self.channels * mult
        if level in self.attention_levels:
          attention(c)
      if level > 0:
        names.add('Conv', Conv(c, c, 3))
    names.add('GroupNorm', group_norm(c, num_groups))
    names.add('Conv', Conv(c, image_channels, 3))

  def embed(self, t_B: torch.Tensor, labels_B: Optional[torch.Tensor],
            names: Namer, batch: int) -> torch.Tensor:
    """The step (and label) embedding [B, 4 * channels]."""
    # float32 like the flax model's, then the model's dtype (float64 for references).
    emb_BxE = timestep_embedding(t_B, self.channels).to(self.Dense_0.weight.dtype)
    emb_BxE = names.get('Dense')(emb_BxE)
    emb_BxE = names.get('Dense')(F.silu(emb_BxE))
    if self.num_classes > 0:
      if labels_B is None:  # the null label: unconditional
        labels_B = torch.full((batch,), self.num_classes, dtype=torch.long,
                              device=emb_BxE.device)
      emb_BxE = emb_BxE + names.get('Embed')(labels_B.long())
    elif labels_B is not None:
      raise ValueError('labels given to a UNet with num_classes=0')
    return emb_BxE

  def forward(self, x_BxHxWxC: torch.Tensor, t_B: Any,
              labels_B: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The prediction [B, H, W, C] (NHWC, float32) for x_t, the steps t_B (int
    or float, [B]) and the labels ([B] ints, or None for the null label)."""
    names = Namer(self)
    t_B = torch.as_tensor(t_B, device=x_BxHxWxC.device)
    emb_BxE = self.embed(t_B, labels_B, names, x_BxHxWxC.shape[0])
    block = lambda h: names.get('ResBlock')(h, emb_BxE)
    attention = lambda h: names.get('AttentionBlock')(h)

    h = names.get('Conv')(x_BxHxWxC.permute(0, 3, 1, 2))
    skips = [h]
    for level in range(len(self.channel_mults)):
      for _ in range(self.num_res_blocks):
        h = block(h)
        if level in self.attention_levels:
          h = attention(h)
        skips.append(h)
      if level < len(self.channel_mults) - 1:
        h = names.get('Conv')(h)
        skips.append(h)

    h = block(h)
    h = attention(h)
    h = block(h)

    for level in reversed(range(len(self.channel_mults))):
      for _ in range(self.num_res_blocks + 1):
        h = block(torch.cat([h, skips.pop()], dim=1))
        if level in self.attention_levels:
          h = attention(h)
      if level > 0:
        h = names.get('Conv')(resize_nearest(h, *skips[-1].shape[2:]))

    h = F.silu(names.get('GroupNorm')(h))
    return names.get('Conv')(h).permute(0, 2, 3, 1)


# -- Weights between flax and torch -------------------------------------------------

Params = Mapping[str, Any]


def torch_name(path: tuple[str, ...]) -> tuple[str, bool]:
  """The torch parameter name of a flax parameter path, and whether the array
  is a kernel (whose axes are reordered between the two)."""
  leaf = path[-1]
  renamed = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}.get(leaf, leaf)
  return '.'.join(path[:-1] + (renamed,)), leaf == 'kernel'


def load_flax_params(torch_model: TorchUNet, params: Params) -> TorchUNet:
  """Copies flax `UNet` params (or the whole variables dict) into `torch_model`
  (in place; returned too). KeyError/ValueError when names or shapes differ."""
  return weights.load_named(torch_model, params, torch_name)


def flax_params_from_torch(torch_model: TorchUNet, like: Params) -> dict:
  """The twin's weights in the paths and layouts of the flax tree `like`."""
  return weights.named_to_flax(torch_model, like, torch_name)


# -- The training loss ----------------------------------------------------------------

def alpha_bars_of(schedule: Any) -> torch.Tensor:
  """abar_t [T] as a float32 tensor, from a `process.Schedule`, a mapping with
  'alpha_bars', or the array itself."""
  if hasattr(schedule, 'alpha_bars'):
    schedule = schedule.alpha_bars
  elif isinstance(schedule, Mapping):
    schedule = schedule['alpha_bars']
  if isinstance(schedule, torch.Tensor):
    return schedule.to(torch.float32)
  return torch.from_numpy(np.array(schedule, np.float32))


def _at(values_T: torch.Tensor, t_B: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
  """values[t] per example, shaped to broadcast against `like` ([B, ...])."""
  return values_T.to(like.device)[t_B.long()].reshape((-1,) + (1,) * (like.ndim - 1))


def diffusion_loss(torch_model: Callable, schedule_arrays: Any, x0: torch.Tensor,
                   t_B: torch.Tensor, noise: torch.Tensor, labels_B: Optional[torch.Tensor],
                   objective: str = 'eps') -> torch.Tensor:
  """The mean squared error of the objective's target (Ho et al. 2020, eq. 14),
  as `Diffusion.loss_terms` computes it, for given steps, noise and labels.

  Args:
    torch_model: the twin (or any fn(x_t, t, labels) -> prediction, NHWC).
    schedule_arrays: the diffusion schedule (see `alpha_bars_of`).
    x0: clean images in model space [-1, 1], [B, H, W, C].
    t_B: 0-based positions [B] (ints).
    noise: eps [B, H, W, C].
    labels_B: labels [B] (already with any label dropout applied), or None.
    objective: 'eps', 'x0' or 'v'.

  Returns:
    The mean over examples of each example's mean squared error (a scalar).
  """
  abar = _at(alpha_bars_of(schedule_arrays), t_B, x0)
  xt = torch.sqrt(abar) * x0 + torch.sqrt(1.0 - abar) * noise
  if objective == 'eps':
    target = noise
  elif objective == 'x0':
    target = x0
  elif objective == 'v':
    target = torch.sqrt(abar) * noise - torch.sqrt(1.0 - abar) * x0
  else:
    raise ValueError(f"objective must be one of ('eps', 'x0', 'v'), got {objective!r}")
  error = (torch_model(xt, t_B, labels_B) - target) ** 2
  return error.reshape(error.shape[0], -1).mean(dim=1).mean()
