"""Classifiers shared by the workloads: an MLP, a small CNN and a ResNet (NHWC).

Images come in as float32 in [0, 1], shape [B, H, W, C]. Parameters are
float32; `dtype` sets the compute precision (mixed precision: with bfloat16,
each layer casts its float32 parameters and its input to bfloat16, and
normalization statistics stay float32); logits are float32, so that losses
are computed in float32.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

MODELS = ('mlp', 'cnn', 'resnet')


class MLP(nn.Module):
  """Flatten, then Dense-ReLU per hidden width, then a linear readout."""
  hidden: Sequence[int] = (512, 512)
  num_outputs: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.num_outputs, dtype=self.dtype)(x).astype(jnp.float32)


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
  _check_conv3x3(window_strides, padding, rhs, lhs_dilation, rhs_dilation,
                 dimension_numbers, feature_group_count, 'conv3x3_as_matmul')
  b, h, w, c = lhs.shape
  padded = jnp.pad(lhs, ((0, 0), (1, 1), (1, 1), (0, 0)))
  columns = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                            axis=-1)
  out = jnp.dot(columns.reshape(b * h * w, 9 * c), rhs.reshape(9 * c, -1), precision=precision,
                preferred_element_type=preferred_element_type)
  return out.reshape(b, h, w, -1)


def _conv_same(x_BxHxWxC, kernel_HxWxCxF):
  return jax.lax.conv_general_dilated(x_BxHxWxC, kernel_HxWxCxF, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@jax.custom_vjp
def _conv_same_hwio_backward(x_BxHxWxC, kernel_HxWxCxF):
  return _conv_same(x_BxHxWxC, kernel_HxWxCxF)


def _conv_forward(x_BxHxWxC, kernel_HxWxCxF):
  return _conv_same(x_BxHxWxC, kernel_HxWxCxF), (x_BxHxWxC, kernel_HxWxCxF)


def _conv_backward(residuals, dy_BxHxWxF):
  x_BxHxWxC, kernel_HxWxCxF = residuals
  # The input gradient is the convolution of dy with the kernel flipped in
  # space and with its channel axes swapped, materialized here as an HWIO
  # array: left to autodiff, the swap stays a layout (kernel as HWOI) for
  # which XLA:CPU chose a generic convolution, 4x slower inside PGD's loop.
  flipped_HxWxFxC = jnp.flip(kernel_HxWxCxF, (0, 1)).swapaxes(2, 3)
  dx = _conv_same(dy_BxHxWxF, flipped_HxWxFxC)
  dkernel = jax.vjp(lambda k: _conv_same(x_BxHxWxC, k), kernel_HxWxCxF)[1](dy_BxHxWxF)[0]
  return dx, dkernel


_conv_same_hwio_backward.defvjp(_conv_forward, _conv_backward)


def conv3x3_hwio_backward(lhs, rhs, window_strides, padding, lhs_dilation=None,
                          rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                          precision=None, preferred_element_type=None):
  """A 3x3, stride-1, 'SAME' convolution (NHWC, HWIO) whose input gradient is
  an HWIO convolution with an explicitly flipped, transposed kernel.

  Same values and gradients as `lax.conv_general_dilated`; has the signature
  `nn.Conv` expects. Measured on XLA:CPU: PGD-10 on the small CNN (batch 128)
  375 -> 219 ms, the same adversarial images.
  """
  _check_conv3x3(window_strides, padding, rhs, lhs_dilation, rhs_dilation,
                 dimension_numbers, feature_group_count, 'conv3x3_hwio_backward')
  return _conv_same_hwio_backward(lhs, rhs)


def _check_conv3x3(window_strides, padding, rhs, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count, name: str) -> None:
  ones = lambda dilation: dilation is None or tuple(dilation) == (1, 1)
  simple = (tuple(window_strides) == (1, 1) and padding == 'SAME' and rhs.shape[:2] == (3, 3)
            and ones(lhs_dilation) and ones(rhs_dilation) and feature_group_count == 1
            and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
            and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1))
  if not simple:
    raise ValueError(f'{name} computes 3x3, stride-1, SAME, NHWC convolutions only')


class SmallCNN(nn.Module):
  """[conv3x3-maxpool2-ReLU] per feature size, then Dense-ReLU and a readout.

  Pooling comes before the ReLU: both take maxima, so the order does not
  change a value (relu(max(a, b)) == max(relu(a), relu(b))), and the ReLU and
  its gradient then touch a quarter of the values. A convolution from fewer
  than 4 channels (the first, on grey or RGB images) runs as one matmul
  (`conv3x3_as_matmul`); the others take their input gradient through an
  explicitly transposed kernel (`conv3x3_hwio_backward`). Measured on XLA:CPU
  (2 cores), batch 128 of MNIST, median of 40 interleaved rounds: the Adam
  step 41.8 ms as conv-ReLU-pool with a reshape-and-max pool, 39.6 ms pooling
  first with the four-view maximum, 35.6 ms with the first conv as a matmul.
  """
  features: Sequence[int] = (32, 64)
  dense: int = 256
  num_outputs: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = x_BxHxWxC
    for f in self.features:
      conv = conv3x3_as_matmul if x.shape[-1] < 4 else conv3x3_hwio_backward
      x = nn.relu(max_pool_2x2(nn.Conv(f, (3, 3), padding='SAME', dtype=self.dtype,
                                       conv_general_dilated=conv)(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
    return nn.Dense(self.num_outputs, dtype=self.dtype)(x).astype(jnp.float32)


class ResidualBlock(nn.Module):
  """Pre-activation basic block (He et al. 2016b) with GroupNorm.

  GroupNorm instead of BatchNorm keeps the model a pure function of its
  parameters: no batch statistics to carry, and per-example outputs do not
  depend on the rest of the batch (which matters inside attacks).
  """
  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    groups = min(8, self.features)
    norm = lambda g: nn.GroupNorm(num_groups=g, dtype=self.dtype)
    conv = lambda size, stride=1: nn.Conv(self.features, (size, size), strides=stride,
                                          padding='SAME', use_bias=False, dtype=self.dtype)
    h = nn.relu(norm(min(8, x_BxHxWxC.shape[-1]))(x_BxHxWxC))
    shortcut = x_BxHxWxC
    if self.stride != 1 or x_BxHxWxC.shape[-1] != self.features:
      shortcut = conv(1, self.stride)(h)
    h = conv(3, self.stride)(h)
    h = nn.relu(norm(groups)(h))
    h = conv(3)(h)
    return shortcut + h


class ResNet(nn.Module):
  """A small ResNet for 32x32 images: a stem, three stages, global average pool."""
  stage_sizes: Sequence[int] = (2, 2, 2)
  width: int = 32
  num_outputs: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = nn.Conv(self.width, (3, 3), padding='SAME', use_bias=False,
                dtype=self.dtype)(x_BxHxWxC)
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(self.width * 2 ** stage, stride, self.dtype)(x)
    x = nn.relu(nn.GroupNorm(num_groups=min(8, x.shape[-1]), dtype=self.dtype)(x))
    logits = nn.Dense(self.num_outputs, dtype=self.dtype)(x.mean(axis=(1, 2)))
    return logits.astype(jnp.float32)


# The names allowed in `model.dtype` (frontiers_jax.config.DTYPES).
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(model_config) -> Any:
  """The dtype named by `model_config.dtype` (float32 in configs saved before
  the key existed)."""
  return COMPUTE_DTYPES[model_config.get('dtype', 'float32')]


def create_classifier(model_config, num_classes: int) -> nn.Module:
  """`model_config.name` in MODELS; the other keys size the network."""
  dtype = compute_dtype(model_config)
  if model_config.name == 'mlp':
    return MLP(hidden=tuple(model_config.hidden), num_outputs=num_classes, dtype=dtype)
  if model_config.name == 'resnet':
    return ResNet(stage_sizes=tuple(model_config.stage_sizes), width=model_config.width,
                  num_outputs=num_classes, dtype=dtype)
  return SmallCNN(features=tuple(model_config.features), dense=model_config.dense,
                  num_outputs=num_classes, dtype=dtype)


def count_params(params) -> int:
  return sum(int(jnp.size(p)) for p in jax.tree.leaves(params))
