"""APGD, Square and the worst-case ensemble: invariants, schedules, closed forms.

One batch shape throughout, and eps, steps, queries and restarts are traced
arguments, so each runner compiles once per (norm, loss) and hypothesis only
varies values.
"""

import functools
import math
import re
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import attack_models
from frontiers_jax.adversarial import attacks, autoattack

B, HW, K, HIDDEN = 32, 6, 4, 16
PROPERTY = settings(max_examples=15, deadline=None)
FAST_COMPILE = attack_models.FAST_COMPILE
jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


# -- A tiny ReLU MLP over 6x6x1 images, and a linear model -----------------------


def mlp_logits(params, x_BxHxWx1):
  x_BxD = x_BxHxWx1.reshape(x_BxHxWx1.shape[0], -1)
  h_BxH = jax.nn.relu((x_BxD - 0.5) @ params['w1'] + params['b1'])
  return h_BxH @ params['w2'] * params['scale']


@jit
def problem(seed):
  """Params, images in [0, 1], and labels = clean predictions (so every
  success is the attack's doing)."""
  k1, k2, k3, k_x = jax.random.split(jax.random.key(seed), 4)
  params = {'w1': jax.random.normal(k1, (HW * HW, HIDDEN)),
            'b1': 0.5 * jax.random.normal(k2, (HIDDEN,)),
            'w2': jax.random.normal(k3, (HIDDEN, K)),
            'scale': jnp.float32(1.)}
  x = jax.random.uniform(k_x, (B, HW, HW, 1))
  return params, x, jnp.argmax(mlp_logits(params, x), axis=-1)


@functools.partial(jit, static_argnames=('norm', 'loss'))
def run_apgd(params, x, labels, key, eps, steps, restarts=1, norm='linf', loss='ce'):
  return autoattack.apgd(functools.partial(mlp_logits, params), x, labels, key, eps,
                         steps=steps, norm=norm, loss=loss, restarts=restarts)


@functools.partial(jit, static_argnames='loss')
def run_pgd(params, x, labels, key, eps, step_size, steps, loss):
  return attacks.pgd(functools.partial(mlp_logits, params), x, labels, key, eps,
                     step_size, steps, loss=loss)


@jit
def run_square(params, x, labels, key, eps, queries, horizon):
  return autoattack.square(functools.partial(mlp_logits, params), x, labels, key, eps,
                           queries=queries, horizon=horizon)


def assert_in_linf_or_l2_ball_and_box(x_adv, x, eps, norm='linf'):
  flat_BxD = np.asarray(x_adv - x).reshape(x.shape[0], -1)
  size_B = np.abs(flat_BxD).max(1) if norm == 'linf' else np.linalg.norm(flat_BxD, axis=1)
  assert np.all(size_B <= eps + 1e-6), (size_B.max(), eps)
  assert np.all((x_adv >= 0) & (x_adv <= 1))


# -- Invariants, for random models, inputs and radii ---------------------------


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0, 0.5),
       norm=st.sampled_from(attacks.NORMS), loss=st.sampled_from(['ce', 'dlr']))
def test_apgd_stays_in_the_ball_and_the_box_and_reports_success(seed, eps, norm, loss):
  params, x, labels = problem(seed)
  x_adv, success_B = run_apgd(params, x, labels, jax.random.key(seed), eps, 12, 2,
                              norm, loss)
  chex.assert_shape(x_adv, x.shape)
  chex.assert_tree_all_finite(x_adv)
  assert_in_linf_or_l2_ball_and_box(x_adv, x, eps, norm)
  np.testing.assert_array_equal(
      success_B, attacks.success(functools.partial(mlp_logits, params), x_adv, labels))


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0, 0.5))
def test_square_stays_in_the_ball_and_the_box_and_reports_success(seed, eps):
  params, x, labels = problem(seed)
  x_adv, success_B = run_square(params, x, labels, jax.random.key(seed), eps, 40, 40)
  chex.assert_shape(x_adv, x.shape)
  assert_in_linf_or_l2_ball_and_box(x_adv, x, eps)
  np.testing.assert_array_equal(
      success_B, attacks.success(functools.partial(mlp_logits, params), x_adv, labels))


def test_eps_zero_returns_the_input_and_counts_clean_mistakes():
  params, x, _ = problem(0)
  labels = jax.random.randint(jax.random.key(1), (B,), 0, K)  # some clean errors
  wrong_B = np.asarray(jnp.argmax(mlp_logits(params, x), -1) != labels)
  assert 0 < wrong_B.sum() < B
  runs = [run_apgd(params, x, labels, jax.random.key(2), 0., 12, 2, norm, loss)
          for norm in attacks.NORMS for loss in ('ce', 'dlr')]
  runs.append(run_square(params, x, labels, jax.random.key(2), 0., 40, 40))
  for x_adv, success_B in runs:
    np.testing.assert_array_equal(x_adv, x)
    np.testing.assert_array_equal(success_B, wrong_B)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.01, 0.3))
def test_same_key_same_result(seed, eps):
  params, x, labels = problem(seed)
  key = jax.random.key(seed)
  for run in (lambda k: run_apgd(params, x, labels, k, eps, 12, 2, 'linf', 'ce'),
              lambda k: run_square(params, x, labels, k, eps, 40, 40)):
    chex.assert_trees_all_equal(run(key), run(key))
  # The key matters to Square's random search: examples that neither run
  # fools end at different points. (Not so for APGD: on a locally linear
  # model its sign steps reach the same corner from any random start.)
  (x_1, fooled_1), (x_2, fooled_2) = (
      jax.device_get(run_square(params, x, labels, k, eps, 40, 40))
      for k in (key, jax.random.fold_in(key, 1)))
  unfooled = ~fooled_1 & ~fooled_2
  if unfooled.any():
    assert not np.array_equal(x_1[unfooled], x_2[unfooled])


def test_clean_mistakes_are_kept_by_square():
  """A clean mistake stays a success, whatever the striped start does."""
  params, x, labels = problem(3)
  labels = (labels + 1) % K  # every example is a clean mistake
  _, success_B = run_square(params, x, labels, jax.random.key(0), 0.3, 40, 40)
  assert np.all(success_B)


# -- APGD: the checkpoint schedule ----------------------------------------------


def paper_checkpoints(n_iter):
  """Croce & Hein 2020, Sec. 3.1, in exact rationals: w_j = ceil(p_j N_iter)
  for p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), p_j <= 1."""
  p = [Fraction(0), Fraction(22, 100)]
  while True:
    p_next = p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100))
    if p_next > 1:
      break
    p.append(p_next)
  return sorted({math.ceil(p_j * n_iter) for p_j in p})


def test_apgd_checkpoints_follow_the_paper():
  assert autoattack.apgd_checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
  for n_iter in range(1, 400):
    assert list(autoattack.apgd_checkpoints(n_iter)) == paper_checkpoints(n_iter), n_iter


def test_apgd_checkpoints_in_the_loop_match_the_schedule():
  is_checkpoint = jax.jit(jax.vmap(autoattack._is_checkpoint, in_axes=(0, None)))
  for n_iter in (1, 5, 17, 100, 1000):
    t_T = np.arange(1, n_iter + 1)
    got = set(t_T[np.asarray(is_checkpoint(t_T, n_iter))])
    assert got == set(autoattack.apgd_checkpoints(n_iter)) - {0}, n_iter


# -- APGD: against a line-by-line transcription of Algorithm 1 -------------------


def reference_apgd(params, x, labels, x_0, eps, steps, norm, loss, rho=0.75, alpha=0.75):
  """Croce & Hein 2020, Algorithm 1 and Sec. 3.1, in NumPy with loops over
  examples; gradients from jax. Returns the best point per example (success,
  then loss, as `attacks.pgd`), and how often each checkpoint rule fired:
  (condition 1, condition 2 alone, neither)."""
  x, x_0 = np.asarray(x), np.asarray(x_0)
  loss_grad_fooled = jax.jit(lambda v: (
      attacks.attack_loss(mlp_logits(params, v), labels, loss),
      jax.grad(lambda v: attacks.attack_loss(mlp_logits(params, v), labels, loss).sum())(v),
      jnp.argmax(mlp_logits(params, v), -1) != labels))

  def evaluate(v):
    return tuple(np.array(a) for a in loss_grad_fooled(v))

  def size(v):
    flat = v.reshape(len(v), -1)
    n = np.abs(flat).max(1) if norm == 'linf' else np.linalg.norm(flat, axis=1)
    return n.reshape(-1, 1, 1, 1)

  def project(v):
    d = v - x
    if norm == 'linf':
      return np.clip(x + np.clip(d, -eps, eps), 0, 1)
    return np.clip(x + d * np.minimum(1, eps / np.maximum(size(d), 1e-300)), 0, 1)

  def direction(g):
    return np.sign(g) if norm == 'linf' else g / np.maximum(size(g), 1e-300)

  best_x = x.copy()
  best_f, _, best_s = evaluate(x)

  def keep_best(v, f, s):
    for b in range(len(x)):
      if (s[b] and not best_s[b]) or (s[b] == best_s[b] and f[b] > best_f[b]):
        best_x[b], best_f[b], best_s[b] = v[b], f[b], s[b]

  f_cur, g_cur, s = evaluate(x_0)
  keep_best(x_0, f_cur, s)
  x_cur, x_prev = x_0.copy(), x_0.copy()
  eta = np.full(len(x), 2 * eps)
  x_max, f_max, g_max = x_cur.copy(), f_cur.copy(), g_cur.copy()
  checkpoints = set(paper_checkpoints(steps)) - {0}
  last, increases, f_max_last = 0, np.zeros(len(x)), f_max.copy()
  halved_last, fired = np.zeros(len(x), bool), [0, 0, 0]
  for k in range(steps):
    a = 1. if k == 0 else alpha
    z = project(x_cur + eta.reshape(-1, 1, 1, 1) * direction(g_cur))
    x_new = project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev))
    f_new, g_new, s = evaluate(x_new)
    keep_best(x_new, f_new, s)
    increases += f_new > f_cur
    for b in range(len(x)):
      if f_new[b] > f_max[b]:
        x_max[b], f_max[b], g_max[b] = x_new[b], f_new[b], g_new[b]
    x_prev, x_cur, f_cur, g_cur = x_cur, x_new, f_new, g_new
    if k + 1 in checkpoints:
      for b in range(len(x)):
        condition_1 = increases[b] < rho * (k + 1 - last)
        condition_2 = not halved_last[b] and f_max[b] == f_max_last[b]
        fired[0 if condition_1 else 1 if condition_2 else 2] += 1
        halved_last[b] = condition_1 or condition_2
        if halved_last[b]:
          eta[b] /= 2
          x_cur[b], g_cur[b], f_cur[b] = x_max[b], g_max[b], f_max[b]
      last, increases, f_max_last = k + 1, np.zeros(len(x)), f_max.copy()
  return best_x, best_s, fired


@pytest.mark.parametrize('norm, loss, eps, seed', [('l2', 'ce', 0.5, 1),
                                                   ('linf', 'dlr', 0.05, 0)])
def test_apgd_follows_algorithm_1(norm, loss, eps, seed):
  """In float64, so that no comparison of losses flips by rounding (in float32
  the L2 runs part ways now and then, both valid)."""
  with jax.enable_x64(True):
    params, x, _ = problem(seed)
    params, x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x))
    labels = jnp.argmax(mlp_logits(params, x), -1)
    key = jax.random.key(seed)
    x_0 = attacks.random_start(jax.random.fold_in(key, 0), x, eps, norm)
    want_x, want_success, fired = reference_apgd(params, x, labels, x_0, eps, 100, norm, loss)
    assert all(fired), fired  # every rule had its turn: the test can see them
    x_adv, success_B = run_apgd(params, x, labels, key, eps, 100, 1, norm, loss)
  np.testing.assert_allclose(x_adv, want_x, atol=1e-6)
  np.testing.assert_array_equal(success_B, want_success)


# -- APGD: strength -------------------------------------------------------------

# Binary logits [0, m(x)], m(x) = w.x + b, inputs in [0.3, 0.7], eps <= 0.25:
# clipping to [0, 1] never acts and the smallest margin in the L-inf ball is
# m(x) - eps ||w||_1 (Holder), at the corner x - eps sign(w).

linear_problem = functools.partial(attack_models.linear_problem, batch=B)
linear_logits = attack_models.linear_logits


@jit
def run_linear_apgd(w_D, b, x_BxD, key, eps, steps):
  return autoattack.apgd(functools.partial(linear_logits, w_D, b), x_BxD,
                         jnp.ones((B,), jnp.int32), key, eps, steps=steps)


def test_apgd_reaches_the_linear_optimum():
  for seed, eps in [(0, 0.05), (1, 0.25)]:
    w_D, b, x_BxD = linear_problem(seed)
    x_adv, success_B = run_linear_apgd(w_D, b, x_BxD, jax.random.key(seed), eps, 10)
    margin_B = x_adv @ w_D + b
    want_B = x_BxD @ w_D + b - eps * jnp.linalg.norm(w_D, ord=1)
    np.testing.assert_allclose(margin_B, want_B, atol=1e-4)
    np.testing.assert_array_equal(success_B, margin_B < 0)


@pytest.mark.parametrize('loss', ['ce', 'dlr'])
def test_apgd_is_at_least_as_strong_as_pgd_with_as_many_steps(loss):
  """Same loss; PGD with the usual step size 2.5 eps / steps (Madry et al. 2018).
  Not a theorem, but APGD never lost in 240 (seed, eps, steps, loss) cases tried."""
  steps = 20
  for seed in range(3):
    params, x, labels = problem(seed)
    for eps in (0.01, 0.02, 0.04):
      key = jax.random.key(seed)
      n_pgd = int(run_pgd(params, x, labels, key, eps, 2.5 * eps / steps, steps,
                          loss)[1].sum())
      n_apgd = int(run_apgd(params, x, labels, key, eps, steps, 1, 'linf', loss)[1].sum())
      assert n_apgd >= n_pgd, (seed, eps, n_apgd, n_pgd)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.005, 0.1))
def test_apgd_dlr_is_invariant_to_scaling_the_logits(seed, eps):
  """DLR is scale invariant and L-inf steps use only the gradient's sign, so
  the whole run is. Scaling by 8, a power of two, is exact in floating point;
  by 10 it rounds, and now and then flips the sign of a near-zero gradient
  coordinate (about 1 example in 1,000 then ends elsewhere)."""
  params, x, labels = problem(seed)
  key = jax.random.key(seed)
  want = run_apgd(params, x, labels, key, eps, 12, 1, 'linf', 'dlr')
  got = run_apgd(dict(params, scale=jnp.float32(8.)), x, labels, key, eps, 12, 1,
                 'linf', 'dlr')
  chex.assert_trees_all_equal(got, want)
  # CE is not scale invariant: the same check sees the difference.
  want = run_apgd(params, x, labels, key, eps, 12, 1, 'linf', 'ce')
  got = run_apgd(dict(params, scale=jnp.float32(8.)), x, labels, key, eps, 12, 1,
                 'linf', 'ce')
  assert not np.array_equal(got[0], want[0])


# -- Square ---------------------------------------------------------------------


def no_gradients(logits_fn):
  """logits_fn, but differentiating it raises."""
  @jax.custom_vjp
  def wrapped(x):
    return logits_fn(x)

  def backward(residuals, cotangent):
    raise AssertionError('the attack asked for a gradient')

  wrapped.defvjp(lambda x: (logits_fn(x), None), backward)
  return wrapped


def test_square_is_black_box_and_fools_a_weak_linear_model():
  k_w, k_x = jax.random.split(jax.random.key(0))
  w_DxK = 0.2 * jax.random.normal(k_w, (HW * HW, K))  # weak: small weights
  x = jax.random.uniform(k_x, (B, HW, HW, 1))

  def linear(x_BxHxWx1):
    return (x_BxHxWx1.reshape(B, -1) - 0.5) @ w_DxK

  labels = jnp.argmax(linear(x), -1)
  logits_fn = no_gradients(linear)
  with pytest.raises(AssertionError, match='asked for a gradient'):  # the check works
    jax.eval_shape(lambda: autoattack.apgd(logits_fn, x, labels, jax.random.key(1), 0.3))
  x_adv, success_B = jit(functools.partial(autoattack.square, logits_fn, queries=100))(
      x, labels, jax.random.key(1), 0.3)
  assert_in_linf_or_l2_ball_and_box(x_adv, x, 0.3)
  assert np.mean(success_B) >= 0.9, np.mean(success_B)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.01, 0.2))
def test_more_queries_never_fool_fewer_examples(seed, eps):
  """With the p schedule's horizon fixed, a shorter run is a prefix of a longer one."""
  params, x, labels = problem(seed)
  key = jax.random.key(seed)
  x_few, few = jax.device_get(run_square(params, x, labels, key, eps, 10, 40))
  x_more, more = jax.device_get(run_square(params, x, labels, key, eps, 40, 40))
  assert np.all(more >= few)
  np.testing.assert_array_equal(x_more[few], x_few[few])  # fooled examples stay put


def test_square_fraction_follows_the_papers_schedule():
  """p_init / 2^j after the j-th of iterations 10, 50, ..., 8000 of 10,000."""
  fraction = jax.jit(autoattack.square_fraction)
  for i, halvings in [(0, 0), (10, 0), (11, 1), (50, 1), (51, 2), (500, 3), (501, 4),
                      (4000, 6), (8001, 9), (9999, 9)]:
    assert fraction(i, 0.8, 10000) == np.float32(0.8) / 2 ** halvings, i
  # Rescaled to 1,000 queries: the first halving after iteration 1, not 10.
  assert fraction(1, 0.8, 1000) == np.float32(0.8)
  assert fraction(2, 0.8, 1000) == np.float32(0.4)


# -- The ensemble -----------------------------------------------------------------


def test_worst_case_reports_any_success_and_a_fooling_input():
  """The ensemble logic, with attacks that are already compiled."""
  params, x, labels = problem(5)
  logits_fn = functools.partial(mlp_logits, params)
  eps = 0.03

  def apgd(loss):
    return lambda f, x, y, key, eps: run_apgd(params, x, y, key, eps, 12, 2, 'linf', loss)

  table = {'apgd-ce': apgd('ce'), 'apgd-dlr': apgd('dlr'),
           'square': lambda f, x, y, key, eps: run_square(params, x, y, key, eps, 40, 40)}
  result = autoattack.worst_case(logits_fn, x, labels, jax.random.key(0), eps, table)
  assert tuple(result['per_attack']) == autoattack.AUTOATTACK
  per_attack_AxB = np.stack([np.asarray(s) for s in result['per_attack'].values()])
  np.testing.assert_array_equal(result['success'], per_attack_AxB.any(0))
  votes_B = per_attack_AxB.sum(0)
  assert np.any((0 < votes_B) & (votes_B < len(table)))  # the attacks disagree somewhere
  assert 0 < per_attack_AxB.any(0).sum() < B  # neither nothing nor everything
  np.testing.assert_array_equal(attacks.success(logits_fn, result['x_adv'], labels),
                                result['success'])
  assert_in_linf_or_l2_ball_and_box(result['x_adv'], x, eps)
  # Attack i ran with key fold_in(key, i), as if alone; x_adv is the first success's,
  # else the last attack's.
  key_0, key_2 = (jax.random.fold_in(jax.random.key(0), i) for i in (0, 2))
  x_ce, success_ce = jax.device_get(table['apgd-ce'](logits_fn, x, labels, key_0, eps))
  x_square, success_square = jax.device_get(
      table['square'](logits_fn, x, labels, key_2, eps))
  x_adv = np.asarray(result['x_adv'])
  np.testing.assert_array_equal(success_ce, result['per_attack']['apgd-ce'])
  np.testing.assert_array_equal(success_square, result['per_attack']['square'])
  np.testing.assert_array_equal(x_adv[success_ce], x_ce[success_ce])
  failed = np.asarray(~result['success'])
  np.testing.assert_array_equal(x_adv[failed], x_square[failed])


def test_standard_attacks_trace_through_worst_case():
  params, x, labels = problem(0)
  table = autoattack.standard_attacks(steps=8, queries=30)
  assert tuple(table) == autoattack.AUTOATTACK
  shapes = jax.eval_shape(lambda x: autoattack.worst_case(
      functools.partial(mlp_logits, params), x, labels, jax.random.key(0), 0.03, table), x)
  assert shapes['x_adv'].shape == x.shape and shapes['success'].shape == (B,)


def test_bad_arguments_raise_value_errors():
  x, y = jnp.zeros((2, 4, 4, 1)), jnp.zeros((2,), jnp.int32)
  with pytest.raises(ValueError, match='norm must be one of'):
    autoattack.apgd(lambda v: v, x, y, jax.random.key(0), 0.1, norm='l1')
  with pytest.raises(ValueError, match='loss must be one of'):
    autoattack.square(lambda v: v, x, y, jax.random.key(0), 0.1, loss='dlr')
  with pytest.raises(ValueError, match='NHWC'):
    autoattack.square(lambda v: v, x[..., 0], y, jax.random.key(0), 0.1)


# -- Compilation and sharding ------------------------------------------------------


def _jaxpr_lines(attack, **kwargs):
  params, x, labels = problem(0)
  jaxpr = jax.make_jaxpr(lambda v: attack(functools.partial(mlp_logits, params), v, labels,
                                          jax.random.key(0), 0.1, **kwargs))(x)
  return str(jaxpr)


def test_loops_run_on_device_and_programs_do_not_grow_with_steps_or_queries():
  for attack, small, large in [(autoattack.apgd, dict(steps=5), dict(steps=500, restarts=7)),
                               (autoattack.square, dict(queries=5), dict(queries=5000))]:
    text = _jaxpr_lines(attack, **large)
    assert re.search(r'\b(scan|while)\[', text), 'iterations must run in a loop'
    assert _jaxpr_lines(attack, **small).count('\n') == text.count('\n')


def test_apgd_on_a_batch_sharded_over_devices_equals_one_device():
  """L2 steps on CE are continuous in the gradient (see test_attacks for why
  L-inf sign steps may part ways across devices), but APGD keeps each
  example's best iterate: where two iterates tie in float32 loss, the order
  of summation picks one or the other. Seen on one CPU: example 28, two
  points 8.6e-5 apart with the same loss to 9 digits. So: the losses and the
  success flags agree everywhere, the points everywhere but at such a tie."""
  params, x, labels = problem(4)
  args = (jax.random.key(0), 0.3, 12, 1, 'l2', 'ce')
  want = run_apgd(params, x, labels, *args)
  batch = NamedSharding(Mesh(np.array(jax.devices()), ('data',)), P('data'))
  got = run_apgd(params, jax.device_put(x, batch), jax.device_put(labels, batch), *args)
  assert got[0].sharding.is_equivalent_to(batch, x.ndim)
  np.testing.assert_array_equal(got[1], want[1])
  losses = [attacks.attack_loss(mlp_logits(params, v[0]), labels, 'ce') for v in (got, want)]
  chex.assert_trees_all_close(*losses, rtol=1e-6, atol=1e-6)
  apart = np.abs(np.asarray(got[0]) - np.asarray(want[0])).reshape(B, -1).max(axis=1)
  assert np.sum(apart > 1e-6) <= 1, apart  # At most one tie in 32 examples.
