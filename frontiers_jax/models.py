"""Classifiers shared by the workloads: an MLP and a small CNN (NHWC).

Images come in as float32 in [0, 1], shape [B, H, W, C].
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

MODELS = ('mlp', 'cnn', 'resnet')


class MLP(nn.Module):
  """Flatten, then Dense-ReLU per hidden width, then a linear readout."""
  hidden: Sequence[int] = (512, 512)
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_outputs)(x)


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """2x2 max pooling as the maximum of four strided views (odd edges are cropped).

  Same values as `nn.max_pool(x, (2, 2), (2, 2))`, but its gradient is made of
  elementwise selects instead of XLA's select-and-scatter, which is several
  times slower on CPU (a tie splits the gradient evenly between the tied
  inputs).
  """
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  return jnp.maximum(jnp.maximum(x[:, :, 0, :, 0], x[:, :, 0, :, 1]),
                     jnp.maximum(x[:, :, 1, :, 0], x[:, :, 1, :, 1]))


def conv3x3_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None,
                      rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                      precision=None, preferred_element_type=None):
  """A 3x3, stride-1, 'SAME' convolution (NHWC input, HWIO kernel) as one matmul.

  The nine shifted copies of the zero-padded input are concatenated on the
  channel axis ([B, H, W, 9 * C], "im2col") and multiplied by the kernel
  reshaped to [9 * C, F]. Same values as `lax.conv_general_dilated`; it has
  the signature `nn.Conv` expects of its `conv_general_dilated`. Worth it for
  few input channels only (the copies cost 9x the input's memory): on
  XLA:CPU a convolution from one channel and its kernel gradient were slower
  than this matmul and its transpose (see `SmallCNN`).
  """
  ones = lambda dilation: dilation is None or tuple(dilation) == (1, 1)
  simple = (tuple(window_strides) == (1, 1) and padding == 'SAME' and rhs.shape[:2] == (3, 3)
            and ones(lhs_dilation) and ones(rhs_dilation) and feature_group_count == 1
            and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
            and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1))
  if not simple:
    raise ValueError('conv3x3_as_matmul computes 3x3, stride-1, SAME, NHWC convolutions only')
  b, h, w, c = lhs.shape
  padded = jnp.pad(lhs, ((0, 0), (1, 1), (1, 1), (0, 0)))
  columns = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                            axis=-1)
  out = jnp.dot(columns.reshape(b * h * w, 9 * c), rhs.reshape(9 * c, -1), precision=precision,
                preferred_element_type=preferred_element_type)
  return out.reshape(b, h, w, -1)


class SmallCNN(nn.Module):
  """[conv3x3-maxpool2-ReLU] per feature size, then Dense-ReLU and a readout.

  Pooling comes before the ReLU: both take maxima, so the order does not
  change a value (relu(max(a, b)) == max(relu(a), relu(b))), and the ReLU and
  its gradient then touch a quarter of the values. A convolution from fewer
  than 4 channels (the first, on grey or RGB images) runs as one matmul
  (`conv3x3_as_matmul`). Measured on XLA:CPU (2 cores), batch 128 of MNIST,
  median of 40 interleaved rounds: the Adam step 41.8 ms as conv-ReLU-pool
  with a reshape-and-max pool, 39.6 ms pooling first with the four-view
  maximum, 35.6 ms with the first conv as a matmul too.
  """
  features: Sequence[int] = (32, 64)
  dense: int = 256
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = x_BxHxWxC
    for f in self.features:
      conv = conv3x3_as_matmul if x.shape[-1] < 4 else jax.lax.conv_general_dilated
      x = nn.relu(max_pool_2x2(nn.Conv(f, (3, 3), padding='SAME', conv_general_dilated=conv)(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.dense)(x))
    return nn.Dense(self.num_outputs)(x)


class ResidualBlock(nn.Module):
  """Pre-activation basic block (He et al. 2016b) with GroupNorm.

  GroupNorm instead of BatchNorm keeps the model a pure function of its
  parameters: no batch statistics to carry, and per-example outputs do not
  depend on the rest of the batch (which matters inside attacks).
  """
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    groups = min(8, self.features)
    h = nn.relu(nn.GroupNorm(num_groups=min(8, x_BxHxWxC.shape[-1]))(x_BxHxWxC))
    shortcut = x_BxHxWxC
    if self.stride != 1 or x_BxHxWxC.shape[-1] != self.features:
      shortcut = nn.Conv(self.features, (1, 1), strides=self.stride, use_bias=False)(h)
    h = nn.Conv(self.features, (3, 3), strides=self.stride, padding='SAME',
                use_bias=False)(h)
    h = nn.relu(nn.GroupNorm(num_groups=groups)(h))
    h = nn.Conv(self.features, (3, 3), padding='SAME', use_bias=False)(h)
    return shortcut + h


class ResNet(nn.Module):
  """A small ResNet for 32x32 images: a stem, three stages, global average pool."""
  stage_sizes: Sequence[int] = (2, 2, 2)
  width: int = 32
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = nn.Conv(self.width, (3, 3), padding='SAME', use_bias=False)(x_BxHxWxC)
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(self.width * 2 ** stage, stride)(x)
    x = nn.relu(nn.GroupNorm(num_groups=min(8, x.shape[-1]))(x))
    return nn.Dense(self.num_outputs)(x.mean(axis=(1, 2)))


def create_classifier(model_config, num_classes: int) -> nn.Module:
  """`model_config.name` in MODELS; the other keys size the network."""
  if model_config.name == 'mlp':
    return MLP(hidden=tuple(model_config.hidden), num_outputs=num_classes)
  if model_config.name == 'resnet':
    return ResNet(stage_sizes=tuple(model_config.stage_sizes), width=model_config.width,
                  num_outputs=num_classes)
  return SmallCNN(features=tuple(model_config.features), dense=model_config.dense,
                  num_outputs=num_classes)


def count_params(params) -> int:
  return sum(int(jnp.size(p)) for p in jax.tree.leaves(params))
