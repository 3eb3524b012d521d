"""EOT: the transformations' closed forms, the attack's invariants, and the
experiment that motivates it (EOT examples survive random transformations
that break plain PGD examples, on a small CNN trained on sklearn digits).

Shapes are fixed across tests (8 images of 8x8) and eps, step sizes and steps
are traced, so each jitted program compiles once.
"""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from frontiers_jax import data, models
from frontiers_jax.adversarial import attacks, eot

B, HW, K, HIDDEN = 8, 8, 4, 16
NO_CHANGE = eot.TransformRange(max_rotation_deg=0., max_translation=0., scale_range=(1., 1.),
                               brightness=0., noise_std=0.)
# What `jax_disable_most_optimizations` sets: compiling dominates these tiny programs.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def images(seed, channels=1, lo=0., hi=1.):
  return jax.random.uniform(jax.random.key(seed), (B, HW, HW, channels), minval=lo, maxval=hi)


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def transform(x, params_B):
  return eot.apply_transform(x, params_B)


sample = jax.jit(eot.sample_transforms, static_argnames=('batch', 'count', 'ranges'),
                 compiler_options=FAST_COMPILE)


# -- The transformations in closed form ------------------------------------------


@pytest.mark.parametrize('channels', [1, 3])
def test_identity_parameters_return_x_exactly(channels):
  x = images(0, channels)
  np.testing.assert_array_equal(transform(x, eot.identity_transforms(B)), x)
  sampled = jax.tree.map(lambda a: a[0], sample(jax.random.key(1), B, 1,
                                                               NO_CHANGE))
  np.testing.assert_array_equal(transform(x, sampled), x)


@pytest.mark.parametrize('channels', [1, 3])
def test_rotations_by_quarter_turns_are_np_rot90(channels):
  """Positive angles turn the content counter-clockwise as displayed (row 0 on
  top), as np.rot90 does; the pixel grid maps onto itself, so bilinear
  sampling is exact up to cos(pi / 2) != 0 in floating point."""
  x = images(1, channels)
  for quarter_turns in (1, -1, 2):
    got = transform(x, eot.identity_transforms(B, angle=quarter_turns * np.pi / 2))
    np.testing.assert_allclose(got, np.rot90(x, quarter_turns, axes=(1, 2)), atol=1e-5)


def test_one_pixel_translations_shift_with_zero_fill():
  x = images(2, 3)
  down = transform(x, eot.identity_transforms(B, shift_y=1 / HW))  # 1/8 is exact
  np.testing.assert_array_equal(down[:, 1:], x[:, :-1])
  np.testing.assert_array_equal(down[:, :1], 0)
  left = transform(x, eot.identity_transforms(B, shift_x=-1 / HW))
  np.testing.assert_array_equal(left[:, :, :-1], x[:, :, 1:])
  np.testing.assert_array_equal(left[:, :, -1:], 0)


def test_scaling_by_two_about_the_centre_enlarges_a_centred_square():
  """Output row i samples row (i - 3.5) / 2 + 3.5: rows 2 and 5 fall a quarter
  pixel outside the ones of rows 3-4, rows 1 and 6 three quarters."""
  x = jnp.zeros((B, HW, HW, 1)).at[:, 3:5, 3:5].set(1.)
  profile = np.array([0, .25, .75, 1, 1, .75, .25, 0])
  want = np.broadcast_to(np.outer(profile, profile)[..., None], x.shape)
  np.testing.assert_allclose(transform(x, eot.identity_transforms(B, scale=2.)), want,
                             atol=1e-6)


def test_brightness_adds_then_the_box_clips():
  x = images(3, 3, 0.2, 0.8)
  np.testing.assert_allclose(transform(x, eot.identity_transforms(B, brightness=0.1)),
                             x + 0.1, atol=1e-6)
  np.testing.assert_array_equal(transform(x, eot.identity_transforms(B, brightness=1.)), 1.)
  np.testing.assert_array_equal(transform(x, eot.identity_transforms(B, brightness=-1.)), 0.)


def test_noise_has_the_asked_std_and_a_key_per_transformation():
  x = images(4, 3, 0.3, 0.7)
  params = eot.identity_transforms(B, noise_std=0.02)
  noise = np.asarray(transform(x, params) - x)
  assert abs(noise.std() - 0.02) < 0.002 and abs(noise.mean()) < 0.002
  assert not np.allclose(noise[0], noise[1])  # each example has its own key


def test_sample_transforms_shapes_and_ranges():
  ranges = eot.TransformRange()
  params = sample(jax.random.key(0), B, 5, ranges)
  assert sorted(params) == sorted(eot.PARAMS)
  chex.assert_shape(list(params.values()), (5, B))
  assert np.all(np.abs(params['angle']) <= np.radians(ranges.max_rotation_deg))
  assert np.all((params['scale'] >= 0.9) & (params['scale'] <= 1.1))
  for name in ('shift_y', 'shift_x'):
    assert np.all(np.abs(params[name]) <= ranges.max_translation)
  assert np.all(np.abs(params['brightness']) <= ranges.brightness)
  assert np.std(params['angle']) > 0.1  # they do vary
  with pytest.raises(ValueError, match='unknown transformation parameters'):
    eot.identity_transforms(B, rotation=1.)


# -- Random transformations: box, gradients, jit and vmap ---------------------------


def test_apply_transform_is_differentiable_jittable_and_vmappable():
  x = images(5, 3, 0.2, 0.8)
  params_NxB = sample(jax.random.key(6), B, 3, eot.TransformRange())
  looped = [transform(x, jax.tree.map(lambda a, n=n: a[n], params_NxB)) for n in range(3)]
  mapped = jax.jit(jax.vmap(eot.apply_transform, in_axes=(None, 0)),
                   compiler_options=FAST_COMPILE)(x, params_NxB)
  chex.assert_shape(mapped, (3,) + x.shape)
  np.testing.assert_allclose(mapped, np.stack(looped), atol=1e-6)
  assert np.all((mapped >= 0) & (mapped <= 1))

  params = jax.tree.map(lambda a: a[0], params_NxB)
  weights = images(7, 3)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(weights * eot.apply_transform(v, params))),
                 compiler_options=FAST_COMPILE)(x)
  chex.assert_tree_all_finite(grad)
  assert np.all(np.abs(grad).sum(axis=(1, 2, 3)) > 0)


def test_the_gradient_in_x_is_the_resampling_map():
  """Without noise and away from the clip, x -> t(x) is affine: a finite
  difference along any direction equals the directional derivative."""
  x = images(8, 1, 0.2, 0.8)
  params = eot.identity_transforms(B, angle=0.2, scale=1.05, shift_y=0.05, shift_x=-0.03,
                                   brightness=0.05)  # zero fill + 0.05 stays inside (0, 1)
  direction = images(9, 1, -1., 1.)
  jvp = jax.jit(lambda v, d: jax.jvp(lambda u: eot.apply_transform(u, params), (v,), (d,))[1],
                compiler_options=FAST_COMPILE)(x, direction)
  h = 1e-2
  finite_difference = (transform(x + h * direction, params) - transform(x, params)) / h
  np.testing.assert_allclose(jvp, finite_difference, atol=1e-4)
  assert float(jnp.abs(jvp).max()) > 0.1


def test_apply_transform_on_a_batch_sharded_over_devices_equals_one_device():
  x = images(10, 3)
  params = jax.tree.map(lambda a: a[0], sample(jax.random.key(11), B, 1))
  want = transform(x, params)
  batch = NamedSharding(Mesh(np.array(jax.devices()), ('data',)), P('data'))
  got = transform(jax.device_put(x, batch), jax.device_put(params, batch))
  np.testing.assert_allclose(got, want, atol=1e-6)


# -- The attack's invariants, on random MLPs -----------------------------------------


def init_mlp(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {'w1': jax.random.normal(k1, (HW * HW, HIDDEN)) / HW,
          'b1': 0.5 * jax.random.normal(k2, (HIDDEN,)),
          'w2': jax.random.normal(k3, (HIDDEN, K))}


def mlp_logits(params, x_BxHxWx1):
  x_BxD = x_BxHxWx1.reshape(x_BxHxWx1.shape[0], -1)
  return jax.nn.relu((x_BxD - 0.5) @ params['w1'] + params['b1']) @ params['w2']


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def problem(seed):
  """Params, images in [0, 1], and their clean predictions as labels."""
  k_params, k_x = jax.random.split(jax.random.key(seed))
  params = init_mlp(k_params)
  x = jax.random.uniform(k_x, (B, HW, HW, 1))
  return params, x, jnp.argmax(mlp_logits(params, x), axis=-1)


@functools.partial(jax.jit, static_argnames=('norm', 'random_start'),
                   compiler_options=FAST_COMPILE)
def run_eot(params, x, labels, key, eps, step_size, steps, norm='linf', random_start=True):
  return eot.eot_pgd(functools.partial(mlp_logits, params), x, labels, key, eps, step_size,
                     steps, num_samples=4, norm=norm, random_start=random_start)


def norms_B(delta, norm):
  flat_BxD = np.asarray(delta).reshape(delta.shape[0], -1)
  return np.abs(flat_BxD).max(1) if norm == 'linf' else np.linalg.norm(flat_BxD, axis=1)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0, 0.5), step_scale=st.floats(0.05, 2.5),
       norm=st.sampled_from(attacks.NORMS))
def test_eot_pgd_stays_in_the_ball_and_the_box(seed, eps, step_scale, norm):
  params, x, labels = problem(seed)
  x_adv = run_eot(params, x, labels, jax.random.key(seed), eps, step_scale * eps, 3, norm)
  chex.assert_shape(x_adv, x.shape)
  assert np.all(norms_B(x_adv - x, norm) <= eps + 1e-6), (norms_B(x_adv - x, norm), eps)
  assert np.all((x_adv >= 0) & (x_adv <= 1))


@pytest.mark.parametrize('norm', attacks.NORMS)
def test_eps_zero_returns_x_and_the_same_key_gives_the_same_result(norm):
  params, x, labels = problem(0)
  key = jax.random.key(1)
  np.testing.assert_array_equal(run_eot(params, x, labels, key, 0., 0.1, 3, norm), x)
  first = run_eot(params, x, labels, key, 0.2, 0.05, 3, norm)
  np.testing.assert_array_equal(run_eot(params, x, labels, key, 0.2, 0.05, 3, norm), first)
  assert not np.array_equal(run_eot(params, x, labels, jax.random.key(2), 0.2, 0.05, 3, norm),
                            first)
  assert norms_B(first - x, norm).max() > 0.1  # it moved


def test_without_transformations_eot_pgd_is_pgd():
  """With every range at zero, each sample is the identity: the expected loss
  is the loss, and from x (no random start) the iterates are PGD's."""
  params, x, labels = problem(3)
  logits_fn = functools.partial(mlp_logits, params)
  got = jax.jit(lambda: eot.eot_pgd(logits_fn, x, labels, jax.random.key(0), 0.1, 0.02, 4,
                                    num_samples=2, ranges=NO_CHANGE, random_start=False),
                compiler_options=FAST_COMPILE)()

  def pgd_step(_, x_adv):
    grad = jax.grad(lambda v: jnp.sum(attacks.attack_loss(logits_fn(v), labels)))(x_adv)
    return jnp.clip(x + jnp.clip(x_adv + 0.02 * jnp.sign(grad) - x, -0.1, 0.1), 0., 1.)

  np.testing.assert_allclose(got, jax.lax.fori_loop(0, 4, pgd_step, x), atol=1e-6)


def test_without_transformations_survival_is_success():
  params, x, labels = problem(4)
  logits_fn = functools.partial(mlp_logits, params)
  wrong_labels = (labels + jnp.arange(B) % 2) % K  # half of them misclassified
  got = jax.jit(functools.partial(eot.success_under_transforms, logits_fn, num_samples=10,
                                  ranges=NO_CHANGE),
                compiler_options=FAST_COMPILE)(x, wrong_labels, jax.random.key(0))
  np.testing.assert_array_equal(got, attacks.success(logits_fn, x, wrong_labels))
  assert 0 < float(got.mean()) < 1


def _eot_jaxpr_text(steps):
  params, x, labels = problem(0)
  return str(jax.make_jaxpr(lambda v: eot.eot_pgd(
      functools.partial(mlp_logits, params), v, labels, jax.random.key(0), 0.1, 0.02,
      steps, num_samples=4))(x))


def test_eot_pgd_loops_on_device_and_its_program_does_not_grow_with_steps():
  text = _eot_jaxpr_text(50)
  assert re.search(r'\b(scan|while)\[', text), 'steps must run in a scan or while loop'
  assert _eot_jaxpr_text(5).count('\n') == text.count('\n')


# -- The experiment: EOT examples survive transformations that break PGD's --------------

# Wider than the defaults (the gap between the attacks grows with the range).
EXPERIMENT_RANGE = eot.TransformRange(max_rotation_deg=30., max_translation=0.15,
                                      scale_range=(0.8, 1.2), brightness=0.1, noise_std=0.02)
TRAIN_STEPS, TRAIN_BATCH, TEST_IMAGES = 200, 128, 100
# LLVM at -O1: about half the compile time of the default, and the same run time here.
EXPERIMENT_COMPILE = {'xla_backend_optimization_level': 1}


@pytest.fixture(scope='module')
def digits_cnn():
  """A small CNN trained on sklearn digits with random transformations as
  augmentation (so transformed clean digits are mostly still recognized)."""
  ds = data.load('digits')
  x_train = jnp.asarray(ds['train']['image'], jnp.float32) / 255
  y_train = jnp.asarray(ds['train']['label'])
  model = models.SmallCNN(features=(16, 32), dense=64)
  optimizer = optax.adam(3e-3)

  @functools.partial(jax.jit, compiler_options=EXPERIMENT_COMPILE)
  def train(key):
    params = model.init(key, x_train[:1])

    def step(carry, step_key):
      params, opt_state = carry
      k_batch, k_transform = jax.random.split(step_key)
      idx_B = jax.random.randint(k_batch, (TRAIN_BATCH,), 0, x_train.shape[0])
      transforms_B = jax.tree.map(lambda a: a[0], eot.sample_transforms(
          k_transform, TRAIN_BATCH, 1, EXPERIMENT_RANGE))
      x_B = eot.apply_transform(x_train[idx_B], transforms_B)

      def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, x_B), y_train[idx_B]).mean()

      grads = jax.grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    keys = jax.random.split(key, TRAIN_STEPS)
    return jax.lax.scan(step, (params, optimizer.init(params)), keys)[0][0]

  params = train(jax.random.key(0))
  x_test = jnp.asarray(ds['test']['image'][:TEST_IMAGES], jnp.float32) / 255
  y_test = jnp.asarray(ds['test']['label'][:TEST_IMAGES])
  return functools.partial(model.apply, params), x_test, y_test


def test_eot_examples_survive_random_transformations_better_than_pgd(digits_cnn):
  logits_fn, x, labels = digits_cnn
  accuracy = jnp.mean(jnp.argmax(jax.jit(logits_fn)(x), -1) == labels)
  assert accuracy > 0.75, accuracy
  result = jax.jit(functools.partial(
      eot.compare_eot_vs_pgd, logits_fn, num_samples=8, ranges=EXPERIMENT_RANGE),
                   compiler_options=EXPERIMENT_COMPILE)(x, labels, jax.random.key(1), 0.2, 20)
  result = {k: float(v) for k, v in result.items()}
  print(result)  # shown with `pytest -s`
  # Measured here (jax 0.10.2, CPU): clean 0.17, PGD 0.79, EOT 0.90. Over training
  # seeds 0-7 (attack keys 100-107): clean 0.11-0.19, PGD 0.69-0.80, EOT 0.86-0.94,
  # EOT - PGD +0.12 to +0.19 (mean +0.16), EOT's failure rate 0.24-0.46 of PGD's;
  # without transformations PGD fools 0.96-1.00, EOT 0.82-0.96, accuracy 0.83-0.95.
  # Move the margins only if these move.
  assert result['survival_clean'] < 0.3, result  # transformed clean digits: mostly right
  assert result['success_pgd'] > 0.9, result  # both attacks work without transformations,
  assert result['success_eot'] > 0.7, result  # EOT less so: the identity is one sample
  assert result['survival_eot'] > result['survival_pgd'] + 0.08, result
  assert 1 - result['survival_eot'] < 0.67 * (1 - result['survival_pgd']), result
