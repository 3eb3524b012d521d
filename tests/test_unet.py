"""The DDPM UNet: shapes on odd sizes, the step embedding, conditioning, dropout,
per-example independence, a hand-counted parameter total, and the zero init.

On XLA:CPU the slow part of `model.init` is compiling the (threefry) random
initialisers, so most tests take parameter shapes from `jax.eval_shape` and
draw the values with numpy (`_random_params`). That also gives every layer
non-zero weights, where the real init zeroes the last layer of each residual
branch. Where a key is needed, an 'rbg' key compiles several times faster.
"""

import functools
import math

import chex
import flax.errors
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from frontiers_jax.diffusion import unet

TINY = dict(channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
            num_heads=2, num_groups=4)


def _param_shapes(model, x_BxHxWxC, labels_B=None):
  t_B = jnp.zeros(x_BxHxWxC.shape[:1], jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), x_BxHxWxC, t_B, labels_B)['params']


def _random_params(model, x_BxHxWxC, labels_B=None, seed=0):
  """Kernels ~ N(0, 1/fan_in); GroupNorm scales 1 + N(0, 0.1^2); biases N(0, 0.1^2)."""
  rng = np.random.default_rng(seed)

  def draw(path, shape_dtype):
    shape = shape_dtype.shape
    if len(shape) > 1:  # conv and dense kernels, the class table
      value = rng.normal(size=shape) / math.sqrt(math.prod(shape[:-1]))
    else:
      value = (path[-1].key == 'scale') + 0.1 * rng.normal(size=shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, _param_shapes(model, x_BxHxWxC, labels_B))


# Less LLVM optimisation: compiles much faster, and these graphs run in milliseconds.
QUICK_COMPILE = {'xla_backend_optimization_level': 0}


@functools.partial(jax.jit, static_argnames=('model', 'train'), compiler_options=QUICK_COMPILE)
def _apply(model, params, x_BxHxWxC, t_B, labels_B=None, dropout_key=None, train=False):
  rngs = None if dropout_key is None else {'dropout': dropout_key}
  return model.apply({'params': params}, x_BxHxWxC, t_B, labels_B, train=train, rngs=rngs)


@pytest.mark.parametrize('shape, channel_mults', [
    ((2, 28, 28, 1), (1, 2)),       # 28 -> 14
    ((2, 8, 8, 1), (1, 2)),         # 8 -> 4
    ((2, 32, 32, 3), (1, 2)),       # colour
    ((2, 7, 7, 1), (1, 2, 2)),      # 7 -> 4 -> 2, resized back to 4 and 7
    ((2, 14, 14, 1), (1, 2, 2)),    # 14 -> 7 -> 4 -> 7 -> 14
])
def test_output_has_the_input_shape(shape, channel_mults):
  model = unet.UNet(**{**TINY, 'channel_mults': channel_mults})
  x = jax.random.normal(jax.random.key(1), shape)
  out = _apply(model, _random_params(model, x), x, jnp.array([3, 997]))
  chex.assert_shape(out, shape)
  chex.assert_tree_all_finite(out)
  assert float(jnp.abs(out).max()) > 0


def test_timestep_embedding_matches_a_float64_reference():
  t = np.array([0, 1, 37, 999])
  got = unet.timestep_embedding(jnp.asarray(t), 16)
  chex.assert_shape(got, (4, 16))
  # Written out independently: frequency i is 10000^(-i/8), i = 0..7.
  want = np.zeros((4, 16))
  for row, step in enumerate(t.astype(np.float64)):
    for i in range(8):
      angle = step * 10000.0 ** (-i / 8)
      want[row, i] = math.sin(angle)
      want[row, 8 + i] = math.cos(angle)
  # float32 angles near 999 carry ~1e-4 absolute error.
  np.testing.assert_allclose(got, want, atol=2e-4)
  np.testing.assert_array_equal(got[0], [0.0] * 8 + [1.0] * 8)
  # Odd width: a trailing zero.
  odd = unet.timestep_embedding(jnp.asarray(t), 7)
  chex.assert_shape(odd, (4, 7))
  np.testing.assert_array_equal(odd[:, -1], 0.0)


def test_distinct_steps_get_distinct_embeddings():
  emb = np.asarray(unet.timestep_embedding(jnp.arange(1000), 32), np.float64)
  sq_norms = (emb ** 2).sum(1)
  distances = sq_norms[:, None] + sq_norms[None, :] - 2 * emb @ emb.T
  np.fill_diagonal(distances, np.inf)
  assert distances.min() > 1e-3


# One conditional model with dropout and one batch for the next three tests, so
# that they share compiled code: the slow part of these tests is XLA compiling.
CONDITIONAL = unet.UNet(**TINY, num_classes=10, dropout=0.5)
X_3x8x8x1 = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
T_3 = jnp.array([0, 400, 999])


def test_class_conditioning_and_the_null_label():
  params = _random_params(CONDITIONAL, X_3x8x8x1, jnp.zeros(3, jnp.int32))
  a = _apply(CONDITIONAL, params, X_3x8x8x1, T_3, jnp.array([0, 3, 9]))
  b = _apply(CONDITIONAL, params, X_3x8x8x1, T_3, jnp.array([5, 7, 1]))
  assert float(jnp.abs(a - b).min()) > 0  # every pixel of every example moves
  # No labels: the null label, num_classes, for all.
  np.testing.assert_allclose(_apply(CONDITIONAL, params, X_3x8x8x1, T_3),
                             _apply(CONDITIONAL, params, X_3x8x8x1, T_3, jnp.full(3, 10)),
                             rtol=1e-6, atol=1e-6)


def test_labels_without_classes_and_bad_attention_levels_are_rejected():
  x = jnp.zeros((2, 8, 8, 1))
  with pytest.raises(ValueError, match='num_classes=0'):
    _param_shapes(unet.UNet(**TINY), x, jnp.array([0, 1]))
  with pytest.raises(ValueError, match='attention_levels'):
    _param_shapes(unet.UNet(**{**TINY, 'attention_levels': (2,)}), x)


def test_dropout_needs_a_key_and_is_off_at_eval():
  params = _random_params(CONDITIONAL, X_3x8x8x1, jnp.zeros(3, jnp.int32))
  with pytest.raises(flax.errors.InvalidRngError):
    _apply(CONDITIONAL, params, X_3x8x8x1, T_3, train=True)

  def train(seed):
    key = jax.random.key(seed, impl='rbg')
    return _apply(CONDITIONAL, params, X_3x8x8x1, T_3, dropout_key=key, train=True)

  a, a_again, b = train(1), train(1), train(2)
  np.testing.assert_array_equal(a, a_again)
  assert not np.allclose(a, b)
  # train=False: no key needed, nothing dropped.
  evaluate = _apply(CONDITIONAL, params, X_3x8x8x1, T_3)
  np.testing.assert_array_equal(evaluate, _apply(CONDITIONAL, params, X_3x8x8x1, T_3))
  assert not np.allclose(evaluate, a)


def test_examples_do_not_see_each_other():
  labels = jnp.array([2, 10, 7])
  params = _random_params(CONDITIONAL, X_3x8x8x1, labels)
  batch = _apply(CONDITIONAL, params, X_3x8x8x1, T_3, labels)
  for i in range(3):
    single = _apply(CONDITIONAL, params, X_3x8x8x1[i:i + 1], T_3[i:i + 1], labels[i:i + 1])
    np.testing.assert_allclose(single[0], batch[i], rtol=1e-5, atol=1e-5)


def test_parameter_count_by_hand():
  conv3 = lambda i, o: 9 * i * o + o
  conv1 = lambda i, o: i * o + o
  dense = lambda i, o: i * o + o
  gn = lambda c: 2 * c
  emb = 4 * 8  # the step embedding is 4 * channels wide

  def res(i, o):  # GN, conv, step projection, GN, conv, 1x1 shortcut if widths differ
    shortcut = conv1(i, o) if i != o else 0
    return gn(i) + conv3(i, o) + dense(emb, o) + gn(o) + conv3(o, o) + shortcut

  def attn(c):  # GN, fused q/k/v projection, output projection
    return gn(c) + dense(c, 3 * c) + dense(c, c)

  # Skips kept on the way down, in channels: input conv 8, level-0 block 8,
  # downsample 8, level-1 block 16. The up path eats them in reverse.
  want = (dense(8, emb) + dense(emb, emb)            # step MLP: 288 + 1056
          + conv3(1, 8)                              # input conv: 80
          + res(8, 8)                                # level 0: 1464
          + conv3(8, 8)                              # downsample: 584
          + res(8, 16) + attn(16)                    # level 1: 4208 + 1120
          + 2 * res(16, 16) + attn(16)               # middle: 10464 + 1120
          + res(16 + 16, 16) + attn(16)              # up level 1: 8096 + 1120
          + res(16 + 8, 16) + attn(16)               #             6800 + 1120
          + conv3(16, 16)                            # upsample conv: 2320
          + res(16 + 8, 8) + res(8 + 8, 8)           # up level 0: 2848 + 2192
          + gn(8) + conv3(8, 1))                     # output: 89
  assert want == 44969
  count = lambda shapes: sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
  x = jnp.zeros((1, 8, 8, 1))
  assert count(_param_shapes(unet.UNet(**TINY), x)) == want
  # The count does not depend on the image size.
  assert count(_param_shapes(unet.UNet(**TINY), jnp.zeros((1, 28, 28, 1)))) == want
  # The class table adds (num_classes + 1) rows of the embedding width.
  conditional = _param_shapes(unet.UNet(**TINY, num_classes=10), x, jnp.array([0]))
  assert count(conditional) == want + 11 * emb


def test_zero_init_outputs_zero_and_one_adam_step_wakes_it_up():
  # The smallest UNet: one level, no downsampling, attention only in the middle.
  model = unet.UNet(channels=4, channel_mults=(1,), num_res_blocks=1, attention_levels=(),
                    num_heads=1, num_groups=2)
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
  t = jnp.array([0, 999])
  init = jax.jit(model.init, compiler_options=QUICK_COMPILE)
  params = init(jax.random.key(0, impl='rbg'), x, t)['params']

  @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
  def loss_and_grads(params, x):  # eps-prediction loss against a fixed target
    predict = lambda params: model.apply({'params': params}, x, t)
    return predict(params), jax.value_and_grad(lambda p: jnp.mean((predict(p) - x) ** 2))(params)

  out, (loss, grads) = loss_and_grads(params, x)
  np.testing.assert_array_equal(out, 0.0)
  chex.assert_tree_all_finite(grads)
  last_conv = max((k for k in grads if k.startswith('Conv_')), key=lambda k: int(k[5:]))
  assert float(jnp.abs(grads[last_conv]['kernel']).max()) > 0
  optimizer = optax.adam(1e-3)

  @functools.partial(jax.jit, compiler_options=QUICK_COMPILE)
  def adam_step(params, grads):
    updates, _ = optimizer.update(grads, optimizer.init(params))
    return optax.apply_updates(params, updates)

  stepped = adam_step(params, grads)
  out, (new_loss, _) = loss_and_grads(stepped, x)
  assert float(new_loss) < float(loss)
  # The output now depends on the input.
  shifted, _ = loss_and_grads(stepped, x + 1.0)
  assert not np.allclose(out, shifted)


def test_create_unet_reads_a_config_with_lists():
  config = ml_collections.ConfigDict({
      'channels': 8, 'channel_mults': [1, 2], 'num_res_blocks': 1, 'attention_levels': [1],
      'num_heads': 2, 'dropout': 0.1, 'num_groups': 4})
  model = unet.create_unet(config, num_classes=10)
  assert model == unet.UNet(**TINY, dropout=0.1, num_classes=10)
  assert isinstance(model.channel_mults, tuple) and isinstance(model.attention_levels, tuple)
