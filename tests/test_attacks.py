"""Attacks: invariants on random MLPs, closed forms on linear models.

Shapes are fixed per test and eps, step sizes, steps and restarts are traced
arguments, so each jitted attack compiles once per (norm, loss, targeted) and
hypothesis only varies values.
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

import attack_models
from frontiers_jax.adversarial import attacks

B, HW, K, HIDDEN = 8, 4, 4, 8
# (loss, targeted) pairs that exist; targeted DLR is not implemented.
OBJECTIVES = [('ce', False), ('ce', True), ('cw', False), ('cw', True), ('dlr', False)]
PROPERTY = settings(max_examples=25, deadline=None)
# What `jax_disable_most_optimizations` sets, for these test programs only:
# compiling, not running, dominates their time on CPU.
FAST_COMPILE = attack_models.FAST_COMPILE


# -- A tiny 1-hidden-layer MLP over 4x4x1 images, params from a key ------------


def init_mlp(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {'w1': jax.random.normal(k1, (HW * HW, HIDDEN)),
          'b1': 0.5 * jax.random.normal(k2, (HIDDEN,)),
          'w2': jax.random.normal(k3, (HIDDEN, K))}


def mlp_logits(params, x_BxHxWx1):
  x_BxD = x_BxHxWx1.reshape(x_BxHxWx1.shape[0], -1)
  h_BxH = jax.nn.relu((x_BxD - 0.5) @ params['w1'] + params['b1'])
  return h_BxH @ params['w2']


@functools.partial(jax.jit, static_argnames='targeted', compiler_options=FAST_COMPILE)
def problem(seed, targeted=False):
  """Params, images in [0, 1], and labels: the clean predictions (untargeted)
  or another class (targeted), so every success is the attack's doing."""
  k_params, k_x, k_t = jax.random.split(jax.random.key(seed), 3)
  params = init_mlp(k_params)
  x = jax.random.uniform(k_x, (B, HW, HW, 1))
  pred_B = jnp.argmax(mlp_logits(params, x), axis=-1)
  if targeted:
    return params, x, (pred_B + jax.random.randint(k_t, (B,), 1, K)) % K
  return params, x, pred_B


@functools.partial(jax.jit, static_argnames=('loss', 'targeted'),
                   compiler_options=FAST_COMPILE)
def run_fgsm(params, x, labels, eps, loss, targeted):
  return attacks.fgsm(functools.partial(mlp_logits, params), x, labels, eps, loss, targeted)


@functools.partial(jax.jit, static_argnames=('norm', 'loss', 'targeted'),
                   compiler_options=FAST_COMPILE)
def run_pgd(params, x, labels, key, eps, step_size, steps, restarts, norm, loss, targeted):
  return attacks.pgd(functools.partial(mlp_logits, params), x, labels, key, eps, step_size,
                     steps, norm=norm, restarts=restarts, loss=loss, targeted=targeted)


run_random_start = jax.jit(attacks.random_start, static_argnames='norm',
                           compiler_options=FAST_COMPILE)


def norms_B(delta, norm):
  flat_BxD = np.asarray(delta).reshape(delta.shape[0], -1)
  return np.abs(flat_BxD).max(1) if norm == 'linf' else np.linalg.norm(flat_BxD, axis=1)


def assert_in_ball_and_box(x_adv, x, eps, norm):
  assert np.all(norms_B(x_adv - x, norm) <= eps + 1e-6), (norms_B(x_adv - x, norm), eps)
  assert np.all((x_adv >= 0) & (x_adv <= 1))


# -- Invariants, for random models, inputs and radii ---------------------------


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0, 0.5),
       objective=st.sampled_from(OBJECTIVES))
def test_fgsm_stays_in_the_linf_ball_and_the_box(seed, eps, objective):
  params, x, labels = problem(seed, objective[1])
  x_adv = run_fgsm(params, x, labels, eps, *objective)
  chex.assert_shape(x_adv, x.shape)
  assert_in_ball_and_box(x_adv, x, eps, 'linf')


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0, 0.5),
       step_scale=st.floats(0.05, 2.5), norm=st.sampled_from(attacks.NORMS),
       objective=st.sampled_from(OBJECTIVES))
def test_pgd_stays_in_the_ball_and_the_box_and_reports_success(
    seed, eps, step_scale, norm, objective):
  params, x, labels = problem(seed, objective[1])
  x_adv, success_B = run_pgd(params, x, labels, jax.random.key(seed), eps,
                             step_scale * eps, 5, 2, norm, *objective)
  chex.assert_shape(x_adv, x.shape)
  assert_in_ball_and_box(x_adv, x, eps, norm)
  want = attacks.success(functools.partial(mlp_logits, params), x_adv, labels, objective[1])
  np.testing.assert_array_equal(success_B, want)


@pytest.mark.parametrize('norm', attacks.NORMS)
@pytest.mark.parametrize('loss, targeted', OBJECTIVES)
def test_eps_zero_returns_the_input_exactly(norm, loss, targeted):
  params, x, labels = problem(0, targeted)
  labels = jax.random.randint(jax.random.key(1), (B,), 0, K)  # some clean errors
  np.testing.assert_array_equal(run_fgsm(params, x, labels, 0., loss, targeted), x)
  x_adv, success_B = run_pgd(params, x, labels, jax.random.key(2), 0., 0.1, 5, 2, norm,
                             loss, targeted)
  np.testing.assert_array_equal(x_adv, x)
  hit_B = jnp.argmax(mlp_logits(params, x), axis=-1) == labels
  np.testing.assert_array_equal(success_B, hit_B if targeted else ~hit_B)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.01, 0.5),
       norm=st.sampled_from(attacks.NORMS))
def test_same_key_same_result(seed, eps, norm):
  params, x, labels = problem(seed)
  key = jax.random.key(seed)
  first = run_pgd(params, x, labels, key, eps, eps / 4, 5, 2, norm, 'ce', False)
  again = run_pgd(params, x, labels, key, eps, eps / 4, 5, 2, norm, 'ce', False)
  chex.assert_trees_all_equal(first, again)
  starts = [run_random_start(jax.random.key(s), x, eps, norm) for s in (seed, seed + 1)]
  assert not np.array_equal(*starts)
  assert_in_ball_and_box(starts[0], x, eps, norm)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.01, 0.5),
       step_scale=st.floats(0.05, 2.5), norm=st.sampled_from(attacks.NORMS),
       objective=st.sampled_from(OBJECTIVES))
def test_more_steps_or_restarts_never_find_fewer_adversarial_examples(
    seed, eps, step_scale, norm, objective):
  """Per example, not just in count: the longer run's prefix is the shorter run."""
  params, x, labels = problem(seed, objective[1])
  key = jax.random.key(seed)

  def successes(steps, restarts):
    return np.asarray(run_pgd(params, x, labels, key, eps, step_scale * eps, steps, restarts,
                              norm, *objective)[1])

  few = successes(5, 1)
  assert np.all(successes(20, 1) >= few)
  assert np.all(successes(5, 3) >= few)


# -- Closed forms on linear models ---------------------------------------------
#
# Binary logits [0, m(x)] with margin m(x) = w.x + b, inputs in [0.3, 0.7] and
# eps <= 0.25 so that clipping to [0, 1] never acts. Every objective then
# ascends along -w (untargeted with label 1, or targeted to class 0), and the
# smallest margin in the ball is m(x) - eps ||w||_dual (Holder's inequality):
# ||w||_1 for L-inf, ||w||_2 for L2.

linear_problem = functools.partial(attack_models.linear_problem, batch=B)
linear_logits = attack_models.linear_logits


@functools.partial(jax.jit, static_argnames=('norm', 'loss', 'targeted'),
                   compiler_options=FAST_COMPILE)
def run_linear_pgd(w_D, b, x_BxD, key, eps, step_size, steps, norm, loss, targeted):
  labels = jnp.full((B,), 0 if targeted else 1)
  return attacks.pgd(functools.partial(linear_logits, w_D, b), x_BxD, labels, key, eps,
                     step_size, steps, norm=norm, loss=loss, targeted=targeted)


@functools.partial(jax.jit, static_argnames='targeted', compiler_options=FAST_COMPILE)
def run_linear_fgsm(w_D, b, x_BxD, labels, eps, targeted):
  return attacks.fgsm(functools.partial(linear_logits, w_D, b), x_BxD, labels, eps,
                      targeted=targeted)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.01, 0.25), label=st.integers(0, 1),
       targeted=st.booleans())
def test_fgsm_matches_its_closed_form_on_a_linear_model(seed, eps, label, targeted):
  """d CE / dx = (p_1 - [y = 1]) w, and p_1 in (0, 1): the sign is -/+ sign(w)."""
  w_D, b, x_BxD = linear_problem(seed)
  labels = jnp.full((B,), label)
  x_adv = run_linear_fgsm(w_D, b, x_BxD, labels, eps, targeted)
  toward_class_1 = (label == 1) == targeted
  want = x_BxD + eps * (1 if toward_class_1 else -1) * jnp.sign(w_D)
  np.testing.assert_allclose(x_adv, want, atol=1e-7)


@pytest.mark.parametrize('loss', ['ce', 'cw'])
@pytest.mark.parametrize('targeted', [False, True])
@pytest.mark.parametrize('norm, dual_norm, step_scale, steps', [
    ('linf', 1, 0.5, 5),   # sign steps saturate at the corner -eps sign(w)
    ('l2', 2, 1.0, 30),    # the random start's part orthogonal to w halves each step
])
def test_pgd_reaches_the_linear_optimum(loss, targeted, norm, dual_norm, step_scale, steps):
  for seed, eps in [(0, 0.05), (1, 0.25)]:
    w_D, b, x_BxD = linear_problem(seed)
    x_adv, success_B = run_linear_pgd(w_D, b, x_BxD, jax.random.key(seed), eps,
                                      step_scale * eps, steps, norm, loss, targeted)
    margin_B = x_adv @ w_D + b
    want_B = x_BxD @ w_D + b - eps * jnp.linalg.norm(w_D, ord=dual_norm)
    np.testing.assert_allclose(margin_B, want_B, atol=1e-4)
    np.testing.assert_array_equal(success_B, margin_B < 0)  # class 0 wins


# -- Objectives ------------------------------------------------------------------


def sorted_distinct_logits(seed):
  """[B, 5] logits with gaps >= 0.5 in a random order, and random labels."""
  k_gap, k_perm, k_y = jax.random.split(jax.random.key(seed), 3)
  z_BxK = jnp.cumsum(0.5 + jax.random.uniform(k_gap, (B, 5)), axis=-1)
  return (jax.random.permutation(k_perm, z_BxK, axis=1, independent=True),
          jax.random.randint(k_y, (B,), 0, 5))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shift=st.floats(-5, 5), scale=st.floats(0.25, 4))
def test_dlr_is_invariant_to_shifting_and_scaling_the_logits(seed, shift, scale):
  z_BxK, y_B = sorted_distinct_logits(seed)
  np.testing.assert_allclose(attacks.attack_loss(scale * z_BxK + shift, y_B, 'dlr'),
                             attacks.attack_loss(z_BxK, y_B, 'dlr'), rtol=5e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_cw_is_negative_exactly_when_the_label_wins(seed):
  z_BxK = 3 * jax.random.normal(jax.random.key(seed), (64, 5))
  y_B = jax.random.randint(jax.random.key(seed + 1), (64,), 0, 5)
  wins_B = np.asarray(jnp.argmax(z_BxK, -1) == y_B)
  np.testing.assert_array_equal(attacks.attack_loss(z_BxK, y_B, 'cw') < 0, wins_B)
  np.testing.assert_array_equal(attacks.attack_loss(z_BxK, y_B, 'cw', targeted=True) > 0,
                                wins_B)


class ObjectiveTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_attack_loss_values(self):
    z_BxK = jnp.array([[3., 1., 2., 0.], [3., 1., 2., 0.]])
    y_B = jnp.array([0, 1])

    def loss_fn(loss, targeted=False):
      return self.variant(functools.partial(attacks.attack_loss, loss=loss,
                                            targeted=targeted))(z_BxK, y_B)

    ce_B = optax.softmax_cross_entropy_with_integer_labels(z_BxK, y_B)
    np.testing.assert_allclose(loss_fn('ce'), ce_B, rtol=1e-6)
    np.testing.assert_allclose(loss_fn('ce', True), -ce_B, rtol=1e-6)
    np.testing.assert_allclose(loss_fn('cw'), [2 - 3, 3 - 1])
    np.testing.assert_allclose(loss_fn('cw', True), [3 - 2, 1 - 3])
    # Croce & Hein 2020, eq. 6: -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3).
    np.testing.assert_allclose(loss_fn('dlr'), [-(3 - 2) / (3 - 1), -(1 - 3) / (3 - 1)])

  @chex.variants(with_jit=True, without_jit=True)
  def test_fgsm_shape_range_and_direction(self):
    params, x, labels = problem(3)
    logits_fn = functools.partial(mlp_logits, params)
    for loss in attacks.LOSSES:
      x_adv = self.variant(functools.partial(attacks.fgsm, logits_fn, loss=loss))(
          x, labels, 0.1)
      chex.assert_shape(x_adv, x.shape)
      chex.assert_tree_all_finite(x_adv)
      assert_in_ball_and_box(x_adv, x, 0.1, 'linf')
      # A step against the gradient sign: every coordinate moved by eps or clipped.
      moved = np.abs(np.asarray(x_adv - x))
      assert np.all(np.isclose(moved, 0.1, atol=1e-6) | (x_adv == 0) | (x_adv == 1)
                    | (moved == 0))


def test_bad_arguments_raise_value_errors():
  z_BxK, y_B = jnp.zeros((2, 4)), jnp.zeros((2,), jnp.int32)
  with pytest.raises(ValueError, match='loss must be one of'):
    attacks.attack_loss(z_BxK, y_B, 'hinge')
  with pytest.raises(ValueError, match='targeted .dlr.'):
    attacks.attack_loss(z_BxK, y_B, 'dlr', targeted=True)
  with pytest.raises(ValueError, match='at least 3 classes'):
    attacks.attack_loss(z_BxK[:, :2], y_B, 'dlr')
  with pytest.raises(ValueError, match='norm must be one of'):
    attacks.pgd(lambda v: v, z_BxK, y_B, jax.random.key(0), 0.1, 0.1, 1, norm='l1')


# -- Compilation and sharding ------------------------------------------------------


def _pgd_jaxpr_text(steps, restarts):
  params, x, labels = problem(0)
  jaxpr = jax.make_jaxpr(lambda v: attacks.pgd(
      functools.partial(mlp_logits, params), v, labels, jax.random.key(0), 0.1, 0.02,
      steps, restarts=restarts))(x)
  return str(jaxpr)


def test_pgd_loops_on_device_and_its_program_does_not_grow_with_steps():
  text = _pgd_jaxpr_text(50, 1)
  assert re.search(r'\b(scan|while)\[', text), 'steps must run in a scan or while loop'
  lines = text.count('\n')
  assert _pgd_jaxpr_text(5, 1).count('\n') == lines
  assert _pgd_jaxpr_text(50, 10).count('\n') == lines


def test_pgd_output_carries_no_gradient_through_the_attack():
  params, x, labels = problem(0)

  def adversarial_loss(p):
    logits_fn = functools.partial(mlp_logits, p)
    x_adv, _ = attacks.pgd(logits_fn, x, labels, jax.random.key(0), 0.1, 0.02, 3)
    return attacks.attack_loss(logits_fn(x_adv), labels).mean(), x_adv

  grads, x_adv = jax.jit(jax.grad(adversarial_loss, has_aux=True),
                          compiler_options=FAST_COMPILE)(params)
  # Danskin: the gradient at the fixed adversarial point.
  want = jax.grad(lambda p: attacks.attack_loss(mlp_logits(p, x_adv), labels).mean())(params)
  chex.assert_trees_all_close(grads, want, rtol=1e-5, atol=1e-6)


def test_pgd_on_a_batch_sharded_over_devices_equals_one_device():
  """L2 steps on CE are continuous in the gradient. (Sign steps are not: the
  per-device kernels round differently, near-zero gradient coordinates can
  flip sign, and L-inf trajectories may then part ways, both valid.)"""
  params, x, labels = problem(4)
  args = (jax.random.key(0), 0.2, 0.05, 5, 2, 'l2', 'ce', False)
  want = run_pgd(params, x, labels, *args)
  batch = NamedSharding(Mesh(np.array(jax.devices()), ('data',)), P('data'))
  got = run_pgd(params, jax.device_put(x, batch), jax.device_put(labels, batch), *args)
  assert got[0].sharding.is_equivalent_to(batch, x.ndim)
  chex.assert_trees_all_close(got, want, atol=1e-6)
