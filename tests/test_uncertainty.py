"""frontiers_jax.uncertainty against independent float64 references.

References come from elsewhere than the module's own formulas: the evidential
regression NLL from scipy's Student-t, its uncertainties from scipy's
inverse-gamma and Student-t moments; the Dirichlet KL from scipy's Dirichlet
entropy; the expected-MSE loss from scipy's Dirichlet mean and variance; the
digamma loss by Monte Carlo; AUROC from scikit-learn; ECE from a plain loop.
Float32 results are compared with float64 references at float32-sized
tolerances; property tests check that losses and gradients stay finite over
extreme raw outputs.
"""

import functools
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
import scipy.stats
import sklearn.metrics
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from frontiers_jax.uncertainty import ensembles, evidential as ev, metrics

pytestmark = pytest.mark.usefixtures('fast_compile')
PROPERTY = settings(max_examples=20, deadline=None)
EXTREME = st.floats(-1e4, 1e4, width=32)
# The modules' functions jitted: eager mode compiles every primitive on its own,
# about 10x slower here than compiling one program.
STATIC = {'dirichlet_alpha': 'evidence', 'reliability_bins': 'num_bins',
          'expected_calibration_error': 'num_bins'}
jitted = lambda module, names: types.SimpleNamespace(**{
    name: jax.jit(getattr(module, name), static_argnames=STATIC.get(name, ())) for name in names})
evj = jitted(ev, ['nig_head', 'nig_nll', 'nig_regularizer', 'nig_predictions',
                 'log_gamma_ratio', 'evidential_regression_loss', 'dirichlet_alpha',
                 'dirichlet_probs', 'dirichlet_uncertainty', 'mse_loss', 'digamma_loss',
                 'kl_to_uniform', 'kl_regularizer'])
mj = jitted(metrics, ['reliability_bins', 'expected_calibration_error', 'entropy',
                      'sample_uncertainty'])


def to64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def student_t_nll(nig, y):
  """-log St(y; loc=gamma, scale^2=beta (1 + nu) / (nu alpha), df=2 alpha), float64."""
  n = to64(nig)
  scale = np.sqrt(n.beta * (1 + n.nu) / (n.nu * n.alpha))
  return -scipy.stats.t.logpdf(np.float64(y), df=2 * n.alpha, loc=n.gamma, scale=scale)


# --- Evidential regression ------------------------------------------------------


def test_nig_head_constraints_and_shapes():
  raw_2x3x4 = jnp.array([-1e4, -1.0, 0.0, 1e4], jnp.float32) * jnp.ones((2, 3, 1))
  nig = evj.nig_head(raw_2x3x4)
  for value in nig:
    chex.assert_shape(value, (2, 3))
  np.testing.assert_array_equal(nig.gamma, raw_2x3x4[..., 0])
  assert (nig.nu > 0).all() and (nig.alpha > 1).all() and (nig.beta > 0).all()
  # Softplus(-1e4) is 0 in float32: what is left is the floor.
  np.testing.assert_allclose(evj.nig_head(jnp.full((4,), -1e4)).nu, ev.NIG_FLOOR, rtol=1e-6)


def test_nig_nll_is_student_t_float64():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    raw_Nx4 = jnp.asarray(rng.normal(0, 3, (64, 4)))
    y_N = jnp.asarray(rng.normal(0, 5, 64))
    nig = evj.nig_head(raw_Nx4)
    nll = evj.nig_nll(nig, y_N)
    assert nll.dtype == jnp.float64
    np.testing.assert_allclose(nll, student_t_nll(nig, y_N), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('column,shift', [(2, 0.0), (2, 1e2), (2, 1e4), (2, 1e6), (1, -30.0),
                                          (1, 1e4), (3, -30.0), (3, 1e4)])
def test_nig_nll_float32_matches_float64_for_extreme_parameters(column, shift):
  """Raw output `column` (1: nu, 2: alpha, 3: beta) shifted far out: in float32
  the NLL avoids the cancellations of eq. 8 as written (lgamma(alpha) -
  lgamma(alpha + 1/2), alpha log Omega against (alpha + 1/2) log(...))."""
  rng = np.random.default_rng(1)
  raw_Nx4 = rng.normal(0, 2, (32, 4)).astype(np.float32)
  raw_Nx4[:, column] += shift
  y_N = rng.normal(0, 2, 32).astype(np.float32)
  nig = evj.nig_head(jnp.asarray(raw_Nx4))
  nll = evj.nig_nll(nig, y_N)
  np.testing.assert_allclose(nll, student_t_nll(nig, y_N), rtol=2e-6, atol=4e-6)


def test_log_gamma_ratio_float32_against_float64():
  a = np.concatenate([np.linspace(1, 20, 77), np.logspace(1.3, 8, 40)]).astype(np.float32)
  want = scipy.special.gammaln(a.astype(np.float64) + 0.5) - scipy.special.gammaln(
      a.astype(np.float64))
  np.testing.assert_allclose(evj.log_gamma_ratio(jnp.asarray(a)), want, rtol=1e-6, atol=1e-6)
  grad = jax.jit(jax.vmap(jax.grad(ev.log_gamma_ratio)))(jnp.asarray(a))
  want_grad = scipy.special.digamma(a + 0.5) - scipy.special.digamma(a.astype(np.float64))
  np.testing.assert_allclose(grad, want_grad, rtol=1e-3, atol=1e-6)


def test_nig_predictions_are_inverse_gamma_and_student_t_moments():
  rng = np.random.default_rng(2)
  nig = evj.nig_head(jnp.asarray(rng.normal(0, 2, (16, 4)), jnp.float32))
  mean, aleatoric, epistemic = evj.nig_predictions(nig)
  n = to64(nig)
  np.testing.assert_array_equal(mean, nig.gamma)
  # E[sigma^2] for sigma^2 ~ Gamma^-1(alpha, beta).
  np.testing.assert_allclose(aleatoric, scipy.stats.invgamma.mean(n.alpha, scale=n.beta),
                             rtol=1e-5)
  # Var[mu] for the marginal mu ~ St(gamma, beta / (nu alpha), 2 alpha); the
  # predictive variance of y is the variance of the marginal of eq. 8.
  mu_var = scipy.stats.t.var(2 * n.alpha, scale=np.sqrt(n.beta / (n.nu * n.alpha)))
  y_var = scipy.stats.t.var(2 * n.alpha, scale=np.sqrt(n.beta * (1 + n.nu) / (n.nu * n.alpha)))
  ok = n.alpha > 1.01  # below, the variances are too large to compare in float32
  np.testing.assert_allclose(epistemic[ok], mu_var[ok], rtol=1e-4)
  np.testing.assert_allclose((aleatoric + epistemic)[ok], y_var[ok], rtol=1e-4)


def test_regularizer_and_combined_loss():
  nig = ev.NIG(gamma=jnp.array([0.0, 1.0]), nu=jnp.array([2.0, 0.5]),
               alpha=jnp.array([3.0, 1.5]), beta=jnp.array([1.0, 1.0]))
  y = jnp.array([-2.0, 1.0])
  np.testing.assert_allclose(evj.nig_regularizer(nig, y), [2.0 * (4 + 3), 0.0])
  coeff = 0.1
  want = np.mean(student_t_nll(nig, y)) + coeff * 7.0
  np.testing.assert_allclose(evj.evidential_regression_loss(nig, y, coeff), want, rtol=1e-6)
  # The regularizer pushes evidence down where the prediction is wrong.
  grad_nu = jax.jit(jax.grad(lambda nu: ev.nig_regularizer(nig._replace(nu=nu), y).sum()))(
      nig.nu)
  assert grad_nu[0] > 0 and grad_nu[1] == 0


@jax.jit
def _regression_values_and_grads(raw_Nx4, y_N):
  loss = lambda raw: evj.evidential_regression_loss(evj.nig_head(raw), y_N, 0.01)
  value, grad = jax.value_and_grad(loss)(raw_Nx4)
  return value, grad, evj.nig_nll(evj.nig_head(raw_Nx4), y_N), evj.nig_predictions(
      evj.nig_head(raw_Nx4))


@PROPERTY
@given(raw_Nx4=hnp.arrays(np.float32, (3, 4), elements=EXTREME),
       y_N=hnp.arrays(np.float32, (3,), elements=EXTREME))
def test_regression_loss_and_grads_finite_for_extreme_outputs(raw_Nx4, y_N):
  chex.assert_tree_all_finite(_regression_values_and_grads(raw_Nx4, y_N))


# --- Evidential classification ----------------------------------------------------


@pytest.mark.parametrize('evidence', sorted(ev.EVIDENCE))
def test_dirichlet_alpha_probs_and_uncertainty(evidence):
  logits_2xK = jnp.array([[-1e4, -1e4, -1e4], [0.0, 3.0, 1e4]])
  alpha = evj.dirichlet_alpha(logits_2xK, evidence)
  assert (alpha >= 1).all() and np.isfinite(alpha).all()
  np.testing.assert_allclose(alpha[0], 1.0)  # no evidence at all
  np.testing.assert_allclose(evj.dirichlet_probs(alpha).sum(-1), 1.0, rtol=1e-6)
  u = evj.dirichlet_uncertainty(alpha)
  np.testing.assert_allclose(u[0], 1.0)
  assert 0 < u[1] < 1


def test_mse_loss_is_dirichlet_bias_plus_variance():
  rng = np.random.default_rng(3)
  alpha_NxK = rng.gamma(1.0, 3.0, (20, 5)) + 1
  labels_N = rng.integers(0, 5, 20)
  y_NxK = np.eye(5)[labels_N]
  want = [np.sum((y - scipy.stats.dirichlet.mean(a))**2 + scipy.stats.dirichlet.var(a))
          for a, y in zip(alpha_NxK, y_NxK)]
  got = evj.mse_loss(jnp.asarray(alpha_NxK, jnp.float32), jnp.asarray(labels_N))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_digamma_loss_is_expected_cross_entropy_by_monte_carlo():
  rng = np.random.default_rng(4)
  alpha_NxK = rng.gamma(1.0, 2.0, (4, 3)) + 1
  labels_N = np.array([0, 1, 2, 0])
  want = [np.mean(-np.log(rng.dirichlet(a, 200_000)[:, label]))
          for a, label in zip(alpha_NxK, labels_N)]
  got = evj.digamma_loss(jnp.asarray(alpha_NxK, jnp.float32), jnp.asarray(labels_N))
  np.testing.assert_allclose(got, want, atol=0.02)  # MC standard error about 0.003


def test_kl_to_uniform_is_minus_dirichlet_entropy_minus_log_gamma_k():
  """Dir(1) has constant density Gamma(K) on the simplex, so KL(Dir(a) || Dir(1))
  = -H[Dir(a)] - log Gamma(K)."""
  rng = np.random.default_rng(5)
  alpha_NxK = rng.gamma(1.0, 3.0, (10, 4)) + 1
  want = [-scipy.stats.dirichlet.entropy(a) - scipy.special.gammaln(4) for a in alpha_NxK]
  with jax.enable_x64(True):
    np.testing.assert_allclose(evj.kl_to_uniform(jnp.asarray(alpha_NxK)), want, rtol=1e-10)
    np.testing.assert_allclose(evj.kl_to_uniform(jnp.ones((2, 4))), 0.0, atol=1e-12)
  np.testing.assert_allclose(evj.kl_to_uniform(jnp.asarray(alpha_NxK, jnp.float32)), want,
                             rtol=1e-4, atol=1e-5)
  # float32: lgamma(1) is 0 only to within a few 1e-7.
  np.testing.assert_allclose(evj.kl_to_uniform(jnp.ones((2, 4))), 0.0, atol=1e-5)


def test_kl_regularizer_ignores_evidence_for_the_true_class():
  alpha = jnp.array([[50.0, 1.0, 1.0], [50.0, 1.0, 3.0]])
  kl = evj.kl_regularizer(alpha, jnp.array([0, 0]))
  np.testing.assert_allclose(kl[0], 0.0, atol=1e-5)
  np.testing.assert_allclose(kl[1], evj.kl_to_uniform(jnp.array([1.0, 1.0, 3.0])), rtol=1e-6)
  assert kl[1] > 0


def test_annealing_and_combined_classification_loss():
  np.testing.assert_allclose([ev.annealing_coefficient(t, 10) for t in (0, 5, 10, 30)],
                             [0.0, 0.5, 1.0, 1.0])
  alpha = jnp.array([[5.0, 1.0, 2.0], [1.5, 1.0, 4.0]])
  labels = jnp.array([0, 1])
  for name, risk in ev.CLASSIFICATION_LOSSES.items():
    want = jax.jit(risk)(alpha, labels).mean() + 0.3 * evj.kl_regularizer(alpha, labels).mean()
    got = jax.jit(ev.evidential_classification_loss, static_argnames='loss')(
        alpha, labels, 3, 10, loss=name)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@jax.jit
def _classification_values_and_grads(logits_NxK, labels_N):
  out = {}
  for evidence in ev.EVIDENCE:
    for name in ev.CLASSIFICATION_LOSSES:
      loss = lambda logits: ev.evidential_classification_loss(
          evj.dirichlet_alpha(logits, evidence), labels_N, 7, 10, loss=name)
      out[evidence, name] = jax.value_and_grad(loss)(logits_NxK)
  return out


@PROPERTY
@given(logits_NxK=hnp.arrays(np.float32, (3, 4), elements=EXTREME),
       labels_N=hnp.arrays(np.int32, (3,), elements=st.integers(0, 3)))
def test_classification_losses_and_grads_finite_for_extreme_logits(logits_NxK, labels_N):
  chex.assert_tree_all_finite(_classification_values_and_grads(logits_NxK, labels_N))


# --- Metrics --------------------------------------------------------------------------


def ece_by_loop(probs_NxK, labels_N, num_bins):
  probs_NxK = np.asarray(probs_NxK, np.float64)
  confidence = probs_NxK.max(-1)
  correct = probs_NxK.argmax(-1) == labels_N
  ece = 0.0
  for b in range(num_bins):
    lo, hi = b / num_bins, (b + 1) / num_bins
    members = [i for i, c in enumerate(confidence) if lo < c <= hi or (b == 0 and c == 0)]
    if members:
      gap = abs(np.mean(correct[members]) - np.mean(confidence[members]))
      ece += len(members) / len(labels_N) * gap
  return ece


@pytest.mark.parametrize('num_bins', [15, 4])
def test_ece_matches_a_plain_loop(num_bins):
  rng = np.random.default_rng(6)
  probs_NxK = rng.dirichlet(np.full(3, 0.7), 500).astype(np.float32)
  labels_N = rng.integers(0, 3, 500)
  got = mj.expected_calibration_error(jnp.asarray(probs_NxK), jnp.asarray(labels_N),
                                           num_bins)
  assert got > 0.01
  np.testing.assert_allclose(got, ece_by_loop(probs_NxK, labels_N, num_bins), atol=1e-6)


def test_ece_of_calibrated_and_overconfident_toys():
  # Confidence 0.7, right 7 times in 10; confidence 0.8, right 8 times in 10.
  probs = jnp.array([[0.7, 0.3]] * 10 + [[0.2, 0.8]] * 10)
  labels = jnp.array([0] * 7 + [1] * 3 + [1] * 8 + [0] * 2)
  assert mj.expected_calibration_error(probs, labels) < 1e-6
  # Confidence 0.9, right half the time.
  probs = jnp.array([[0.9, 0.1]] * 10)
  np.testing.assert_allclose(
      mj.expected_calibration_error(probs, jnp.array([0, 1] * 5)), 0.4, rtol=1e-6)


def test_reliability_bins_are_right_closed():
  probs = jnp.array([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25], [0.6, 0.4]])
  bins = mj.reliability_bins(probs, jnp.array([0, 0, 1, 0]), num_bins=2)
  np.testing.assert_array_equal(bins.count_B, [1, 3])
  np.testing.assert_allclose(bins.confidence_B, [0.5, (1.0 + 0.75 + 0.6) / 3], rtol=1e-6)
  np.testing.assert_allclose(bins.accuracy_B, [1.0, 2 / 3], rtol=1e-6)
  empty = mj.reliability_bins(probs, jnp.zeros(4, jnp.int32), num_bins=15)
  assert empty.count_B.sum() == 4 and np.isfinite(empty.confidence_B).all()


def test_auroc_matches_sklearn_with_ties():
  rng = np.random.default_rng(7)
  for _ in range(5):
    negative = rng.integers(0, 8, rng.integers(1, 40)).astype(np.float32)
    positive = rng.integers(2, 10, rng.integers(1, 40)).astype(np.float32)
    labels = np.r_[np.zeros(negative.size), np.ones(positive.size)]
    want = sklearn.metrics.roc_auc_score(labels, np.r_[negative, positive])
    np.testing.assert_allclose(metrics.auroc(negative, positive), want, rtol=1e-12)
  assert metrics.auroc([0.1, 0.2], [0.3, 0.4, 0.5]) == 1.0
  assert metrics.auroc([0.3, 0.4, 0.5], [0.1, 0.2]) == 0.0
  assert metrics.auroc(np.ones(5), np.ones(3)) == 0.5


def test_entropy():
  np.testing.assert_allclose(mj.entropy(jnp.full((2, 4), 0.25)), np.log(4), rtol=1e-6)
  np.testing.assert_array_equal(mj.entropy(jnp.eye(3)), 0.0)


def test_sample_uncertainty_decomposition():
  # All members agree: no epistemic part, all the entropy is aleatoric.
  probs_1xNxK = jnp.array([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]])
  agree = mj.sample_uncertainty(jnp.repeat(probs_1xNxK, 5, axis=0))
  np.testing.assert_allclose(agree.epistemic_N, 0.0, atol=1e-6)
  np.testing.assert_allclose(agree.total_N, agree.aleatoric_N, rtol=1e-6)
  # Two confident members that disagree: all the entropy is epistemic.
  disagree = mj.sample_uncertainty(jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]]))
  np.testing.assert_allclose(disagree.epistemic_N, np.log(2), rtol=1e-6)
  np.testing.assert_allclose(disagree.aleatoric_N, 0.0, atol=1e-7)
  # Random members against a float64 numpy reference.
  rng = np.random.default_rng(8)
  probs_MxNxK = rng.dirichlet(np.ones(4), (6, 10))
  h = lambda p: -np.sum(p * np.log(p), axis=-1)
  got = mj.sample_uncertainty(jnp.asarray(probs_MxNxK, jnp.float32))
  np.testing.assert_allclose(got.mean_NxK, probs_MxNxK.mean(0), rtol=1e-5)
  np.testing.assert_allclose(got.total_N, h(probs_MxNxK.mean(0)), rtol=1e-5)
  np.testing.assert_allclose(got.aleatoric_N, h(probs_MxNxK).mean(0), rtol=1e-5)
  want_mi = h(probs_MxNxK.mean(0)) - h(probs_MxNxK).mean(0)
  assert (want_mi > 0.01).all()
  np.testing.assert_allclose(got.epistemic_N, want_mi, rtol=1e-4)


# --- Ensembles and MC dropout ---------------------------------------------------------


class DropoutMLP(nn.Module):
  @nn.compact
  def __call__(self, x_BxD, train: bool = False):
    h = nn.relu(nn.Dense(16)(x_BxD))
    h = nn.Dropout(0.5, deterministic=not train)(h)
    return nn.Dense(3)(h)


MODEL = DropoutMLP()
X_BxD = jnp.linspace(-1, 1, 8 * 2).reshape(8, 2)


def test_ensemble_members_differ_and_match_a_loop():
  key = jax.random.key(0)
  stacked = jax.jit(lambda k: ensembles.init_ensemble(MODEL.init, k, 4, X_BxD))(key)
  kernels = stacked['params']['Dense_0']['kernel']
  chex.assert_shape(kernels, (4, 2, 16))
  assert all(not np.allclose(kernels[i], kernels[j]) for i in range(4) for j in range(i))
  outputs_MxBxK = jax.jit(functools.partial(ensembles.ensemble_apply, MODEL.apply))(
      stacked, X_BxD)
  chex.assert_shape(outputs_MxBxK, (4, 8, 3))
  init, apply = jax.jit(MODEL.init), jax.jit(MODEL.apply)
  for m in range(4):
    params_m = init(jax.random.fold_in(key, m), X_BxD)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[m], stacked), params_m, rtol=1e-6)
    np.testing.assert_allclose(outputs_MxBxK[m], apply(params_m, X_BxD), rtol=1e-5,
                               atol=1e-6)


def test_vmapped_train_step_equals_one_step_per_member():
  optimizer = optax.adam(1e-2)
  y_B = jnp.arange(8) % 3

  @jax.jit
  def step(params, opt_state, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        MODEL.apply(p, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  stacked = jax.jit(lambda k: ensembles.init_ensemble(MODEL.init, k, 3, X_BxD))(
      jax.random.key(1))
  new_stacked, _ = jax.jit(jax.vmap(step, in_axes=(0, 0, None, None)))(
      stacked, jax.jit(jax.vmap(optimizer.init))(stacked), X_BxD, y_B)
  for m in range(3):
    params_m = jax.tree.map(lambda a: a[m], stacked)
    want, _ = step(params_m, optimizer.init(params_m), X_BxD, y_B)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[m], new_stacked), want, rtol=1e-5,
                                atol=1e-6)


def test_mc_dropout_samples():
  params = jax.jit(MODEL.init)(jax.random.key(2), X_BxD)
  key = jax.random.key(3)
  apply_train = jax.jit(functools.partial(MODEL.apply, train=True))
  samples = jax.jit(ensembles.mc_dropout_samples, static_argnums=(0, 4, 5))
  samples_TxBxK = samples(apply_train, params, X_BxD, key, 5)
  chex.assert_shape(samples_TxBxK, (5, 8, 3))
  assert all(not np.allclose(samples_TxBxK[i], samples_TxBxK[j])
             for i in range(5) for j in range(i))
  for i in range(5):
    want = apply_train(params, X_BxD, rngs={'dropout': jax.random.fold_in(key, i)})
    np.testing.assert_allclose(samples_TxBxK[i], want, rtol=1e-5, atol=1e-6)
  chunked = samples(apply_train, params, X_BxD, key, 5, 2)
  np.testing.assert_allclose(chunked, samples_TxBxK, rtol=1e-5, atol=1e-6)
  # Without dropout every pass is the same deterministic prediction.
  deterministic = samples(functools.partial(MODEL.apply, train=False), params, X_BxD, key, 3,
                          None)
  np.testing.assert_allclose(deterministic, np.broadcast_to(jax.jit(MODEL.apply)(params, X_BxD),
                                                            (3, 8, 3)), rtol=1e-6)
