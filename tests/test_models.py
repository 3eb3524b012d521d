"""The shared classifiers: shapes, parameter counts, finite outputs, pooling."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from frontiers_jax import models


def _config(name):
  return ml_collections.ConfigDict({'name': name, 'hidden': (64, 32),
                                    'features': (8, 16), 'dense': 32})


@pytest.mark.parametrize('name, hw, expected_params', [
    # mlp: 784*64+64 + 64*32+32 + 32*10+10
    ('mlp', 28, 784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10),
    # cnn: conv 3*3*1*8+8, conv 3*3*8*16+16, dense (7*7*16)*32+32, out 32*10+10
    ('cnn', 28, 80 + 1168 + 784 * 32 + 32 + 330),
    ('cnn', 8, 80 + 1168 + 64 * 32 + 32 + 330),
])
def test_classifier_shapes_and_parameter_counts(name, hw, expected_params):
  model = models.create_classifier(_config(name), num_classes=10)
  x = jax.random.uniform(jax.random.key(0), (5, hw, hw, 1))
  params = model.init(jax.random.key(1), x)['params']
  assert models.count_params(params) == expected_params
  logits = model.apply({'params': params}, x)
  chex.assert_shape(logits, (5, 10))
  chex.assert_tree_all_finite(logits)


def test_resnet_on_cifar_shaped_images():
  config = ml_collections.ConfigDict({'name': 'resnet', 'stage_sizes': (1, 1), 'width': 8})
  model = models.create_classifier(config, num_classes=10)
  x = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3))
  params = model.init(jax.random.key(1), x)['params']
  logits = model.apply({'params': params}, x)
  chex.assert_shape(logits, (3, 10))
  chex.assert_tree_all_finite(logits)
  # Per-example outputs: GroupNorm, not BatchNorm, so the batch does not matter.
  np.testing.assert_allclose(model.apply({'params': params}, x[:1]), logits[:1],
                             rtol=1e-5, atol=1e-5)
  # stem 3*3*3*8; stage 1: 2 GN(8) + 2 convs 8->8; stage 2: GN(8), 1x1 8->16,
  # conv 8->16, GN(16), conv 16->16; final GN(16); dense 16*10+10.
  want = (216 + (16 + 16 + 576 + 576) + (16 + 128 + 1152 + 32 + 2304) + 32 + 170)
  assert models.count_params(params) == want


class PoolTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_max_pool_2x2_equals_flax_max_pool(self):
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))  # odd height cropped
    got = self.variant(models.max_pool_2x2)(x)
    want = nn.max_pool(x, (2, 2), strides=(2, 2))
    chex.assert_shape(got, (2, 3, 3, 3))
    np.testing.assert_array_equal(got, want)

  @chex.variants(with_jit=True, without_jit=True)
  def test_max_pool_gradient_goes_to_the_maximum(self):
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    grad = self.variant(jax.grad(lambda v: models.max_pool_2x2(v).sum()))(x)
    want = np.zeros((4, 4))
    want[1, 1] = want[1, 3] = want[3, 1] = want[3, 3] = 1
    np.testing.assert_array_equal(grad[0, ..., 0], want)


@pytest.mark.parametrize('fn', [models.conv3x3_as_matmul, models.conv3x3_hwio_backward])
@pytest.mark.parametrize('channels', [1, 3, 5])
def test_conv3x3_variants_equal_the_convolution(fn, channels):
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, channels))
  conv = lambda fn: nn.Conv(4, (3, 3), padding='SAME', conv_general_dilated=fn)
  params = conv(jax.lax.conv_general_dilated).init(jax.random.key(1), x)
  want = conv(jax.lax.conv_general_dilated).apply(params, x)
  np.testing.assert_allclose(conv(fn).apply(params, x), want, rtol=1e-5, atol=1e-5)
  # Gradients with respect to the parameters and to the input.
  loss = lambda fn: lambda p, x: jnp.sum(conv(fn).apply(p, x) ** 2)
  got, expected = (jax.grad(loss(f), argnums=(0, 1))(params, x)
                   for f in (fn, jax.lax.conv_general_dilated))
  chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('fn', [models.conv3x3_as_matmul, models.conv3x3_hwio_backward])
def test_conv3x3_variants_refuse_other_convolutions(fn):
  x = jnp.ones((1, 8, 8, 1))
  with pytest.raises(ValueError, match='3x3, stride-1, SAME'):
    nn.Conv(4, (3, 3), strides=2, conv_general_dilated=fn).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='3x3, stride-1, SAME'):
    nn.Conv(4, (5, 5), conv_general_dilated=fn).init(jax.random.key(0), x)
