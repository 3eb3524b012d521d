"""The networks of the uncertainty workload: an MLP and a small CNN, each with
optional dropout that MC dropout keeps on at test time."""

from typing import Sequence

import flax.linen as nn
import jax

from frontiers_jax import models


def dropout(rate: float, train: bool, shared: bool) -> nn.Dropout:
  """Dropout on while `train`; with `shared`, one mask for the whole batch
  (broadcast over axis 0), so that an MC-dropout pass is one sampled
  sub-network applied to every input: its curve over a grid is a smooth
  function, and an input's prediction does not depend on its batch position."""
  return nn.Dropout(rate, deterministic=not train, broadcast_dims=(0,) if shared else ())


class MLP(nn.Module):
  """Flatten, Dense-ReLU (then dropout, if any) per hidden width, linear readout."""
  hidden: Sequence[int]
  num_outputs: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BxD: jax.Array, train: bool = False,
               shared_masks: bool = False) -> jax.Array:
    x = x_BxD.reshape(x_BxD.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
      if self.dropout:
        x = dropout(self.dropout, train, shared_masks)(x)
    return nn.Dense(self.num_outputs)(x)


class CNN(nn.Module):
  """`models.SmallCNN`'s layers ([conv3x3-maxpool2-ReLU] per feature size,
  Dense-ReLU, readout) with dropout after the dense layer.

  Every convolution runs as one im2col matmul (`models.conv3x3_as_matmul`):
  vmapped over ensemble members it becomes a batched matmul, where a vmapped
  `lax.conv` becomes a grouped convolution that XLA:CPU runs very slowly
  (measured: 5 members, batch 128 of MNIST, 3.9 s a step).
  """
  features: Sequence[int]
  dense: int
  num_outputs: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False,
               shared_masks: bool = False) -> jax.Array:
    x = x_BxHxWxC
    for f in self.features:
      x = nn.relu(models.max_pool_2x2(nn.Conv(
          f, (3, 3), padding='SAME', conv_general_dilated=models.conv3x3_as_matmul)(x)))
    x = nn.relu(nn.Dense(self.dense)(x.reshape(x.shape[0], -1)))
    if self.dropout:
      x = dropout(self.dropout, train, shared_masks)(x)
    return nn.Dense(self.num_outputs)(x)
