"""Diffusion evaluation: the Frechet distance against closed forms and scipy,
classifier features against the readout, the bound against the entropy of
discretized Gaussian data (which it must not undercut: it bounds the NLL)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from hypothesis import given, settings, strategies as st

import attack_models
from frontiers_jax import models
from frontiers_jax.diffusion import evaluation, process

PROPERTY = settings(max_examples=20, deadline=None)
FAST_COMPILE = attack_models.FAST_COMPILE


# -- Frechet distance --------------------------------------------------------


def random_cov(rng, d, floor=0.1):
  a_DxD = rng.normal(size=(d, d))
  return a_DxD @ a_DxD.T / d + floor * np.eye(d)


def frechet_sqrtm(mu1, cov1, mu2, cov2):
  """The formula as usually written, with scipy's general sqrtm."""
  covmean = scipy.linalg.sqrtm(cov1 @ cov2).real
  return np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * covmean)


def test_frechet_zero_for_identical_stats():
  rng = np.random.default_rng(0)
  mu, cov = rng.normal(size=5), random_cov(rng, 5)
  assert evaluation.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)


def test_frechet_diagonal_closed_form():
  """Diagonal C_1, C_2: (C_1 C_2)^{1/2} = diag(sqrt(a_i b_i)), so the trace
  term is sum (sqrt(a_i) - sqrt(b_i))^2."""
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  a, b = rng.uniform(0.0, 3.0, size=6), rng.uniform(0.0, 3.0, size=6)
  a[0] = 0.0  # a singular covariance is fine
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = evaluation.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 8))
def test_frechet_full_cov_matches_sqrtm_symmetric_nonnegative(seed, d):
  rng = np.random.default_rng(seed)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  cov1, cov2 = random_cov(rng, d), random_cov(rng, d)
  got = evaluation.frechet_distance(mu1, cov1, mu2, cov2)
  assert isinstance(got, float) and got >= 0.0
  assert got == pytest.approx(frechet_sqrtm(mu1, cov1, mu2, cov2), rel=1e-8, abs=1e-8)
  assert got == pytest.approx(evaluation.frechet_distance(mu2, cov2, mu1, cov1),
                              rel=1e-10, abs=1e-10)


def test_fid_of_samples_near_zero_and_grows_with_mean_shift():
  rng = np.random.default_rng(2)
  d, n = 3, 20_000
  chol = np.linalg.cholesky(random_cov(rng, d))
  draw = lambda: rng.normal(size=(n, d)) @ chol.T
  a_NxD, b_NxD = draw(), draw()
  same = evaluation.fid_from_features(a_NxD, b_NxD)
  assert same < 0.01
  shifts = [0.5, 1.0, 2.0]
  fids = [evaluation.fid_from_features(a_NxD, b_NxD + np.array([s, 0., 0.])) for s in shifts]
  assert same < fids[0] < fids[1] < fids[2]
  # The mean term dominates: |shift|^2, up to sampling error.
  np.testing.assert_allclose(fids, np.square(shifts), atol=0.05)


def test_gaussian_stats_matches_numpy():
  feats_NxD = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
  mu_D, cov_DxD = evaluation.gaussian_stats(feats_NxD)
  assert mu_D.dtype == cov_DxD.dtype == np.float64
  assert mu_D.shape == (4,) and cov_DxD.shape == (4, 4)
  np.testing.assert_allclose(mu_D, feats_NxD.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(cov_DxD, np.cov(feats_NxD.astype(np.float64), rowvar=False),
                             rtol=1e-12)


# -- Classifier features -----------------------------------------------------


def init(model, key=0):
  init_fn = jax.jit(model.init, compiler_options=FAST_COMPILE)
  return init_fn(jax.random.key(key), jnp.zeros((1, 8, 8, 1)))['params']


@pytest.mark.parametrize('model, readout', [
    (models.SmallCNN(features=(4, 8), dense=16), 'Dense_1'),
    (models.MLP(hidden=(32, 16)), 'Dense_2'),
])
def test_classifier_features_feed_the_readout(model, readout):
  """feats @ W_out + b_out reproduces the logits; a batch size that does not
  divide N (10 = 4 + 4 + 2) gives the same features as one batch."""
  params = init(model)
  x_NxHxWxC = np.asarray(jax.random.uniform(jax.random.key(1), (10, 8, 8, 1)))
  feats_NxD = evaluation.classifier_features(model, params, x_NxHxWxC, batch_size=4)
  assert feats_NxD.shape == (10, 16) and feats_NxD.dtype == np.float64
  assert np.all(feats_NxD >= 0) and np.any(feats_NxD > 0)
  apply_fn = jax.jit(model.apply, compiler_options=FAST_COMPILE)
  logits_NxK = np.asarray(apply_fn({'params': params}, x_NxHxWxC), np.float64)
  w_out, b_out = params[readout]['kernel'], params[readout]['bias']
  np.testing.assert_allclose(feats_NxD @ np.asarray(w_out, np.float64) + np.asarray(b_out),
                             logits_NxK, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(evaluation.classifier_features(model, params, x_NxHxWxC),
                             feats_NxD, rtol=1e-6, atol=1e-6)


def test_mlp_features_by_hand():
  model = models.MLP(hidden=(32, 16))
  params = init(model, key=2)
  x_NxHxWxC = np.asarray(jax.random.uniform(jax.random.key(3), (5, 8, 8, 1)))
  w = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  dense = lambda name, h: h @ w[name]['kernel'] + w[name]['bias']
  h = np.maximum(dense('Dense_0', x_NxHxWxC.reshape(5, -1)), 0.0)
  expected_NxD = np.maximum(dense('Dense_1', h), 0.0)
  np.testing.assert_allclose(evaluation.classifier_features(model, params, x_NxHxWxC),
                             expected_NxD, rtol=1e-5, atol=1e-6)


# -- The bound in bits/dim -----------------------------------------------------

MU, SIGMA = 0.1, 0.3  # x_0 ~ N(MU, SIGMA^2), discretized to 256 levels in [-1, 1]


def discretized_gaussian(key, shape):
  """Rounded to the nearest level k / 127.5 - 1: the bins of eq. 13."""
  x = MU + SIGMA * jax.random.normal(key, shape)
  return jnp.clip(jnp.round((x + 1.0) * 127.5) / 127.5 - 1.0, -1.0, 1.0)


def discretized_entropy_bits():
  """H of one discretized pixel in bits (float64): the true NLL per dim."""
  levels = np.arange(256) / 127.5 - 1.0
  upper = scipy.stats.norm.cdf((levels + 1 / 255 - MU) / SIGMA)
  lower = scipy.stats.norm.cdf((levels - 1 / 255 - MU) / SIGMA)
  upper[-1], lower[0] = 1.0, 0.0  # the edge bins reach to +-inf
  p = upper - lower
  p = p[p > 0]
  return float(-np.sum(p * np.log2(p)))


def exact_denoiser(sched):
  """E[x_0 | x_t] for x_0 ~ N(MU, SIGMA^2) (Gaussian conditioning on eq. 4):
  MU + sqrt(abar) SIGMA^2 / (abar SIGMA^2 + 1 - abar) (x_t - sqrt(abar) MU)."""
  def pred_fn(xt, t_B):
    abar = sched.alpha_bars[t_B].reshape(-1, 1, 1, 1)
    gain = jnp.sqrt(abar) * SIGMA**2 / (abar * SIGMA**2 + 1.0 - abar)
    return MU + gain * (xt - jnp.sqrt(abar) * MU)
  return pred_fn


def zeros_predictor(xt, t_B):
  return jnp.zeros_like(xt)


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def bounds(sched, x0, key):
  """Bound per example with the exact denoiser as an x0 prediction, the same
  denoiser as an eps prediction, and zeros as x0 prediction."""
  exact = exact_denoiser(sched)
  as_eps = lambda xt, t_B: process.eps_from_x0(sched, xt, t_B, exact(xt, t_B))
  return (evaluation.nelbo_bpd(exact, sched, 'x0', x0, key),
          evaluation.nelbo_bpd(as_eps, sched, 'eps', x0, key),
          evaluation.nelbo_bpd(zeros_predictor, sched, 'x0', x0, key))


def test_bound_with_exact_denoiser_upper_bounds_the_entropy():
  """T = 50 linear steps, 256 examples of 4x4 pixels. Measured: bound
  7.416 +- 0.027 bits/dim (mean +- standard error), true NLL 7.297, so a gap
  of 0.12; predicting zeros gives 33.5."""
  sched = process.make_schedule('linear', 50)
  x0 = discretized_gaussian(jax.random.key(1), (256, 4, 4, 1))
  exact_B, exact_eps_B, zeros_B = bounds(sched, x0, jax.random.key(2))
  assert exact_B.shape == (256,)
  assert np.all(np.isfinite(exact_B)) and np.all(np.isfinite(zeros_B))
  bound, stderr = float(exact_B.mean()), float(exact_B.std() / math.sqrt(256))
  nll = discretized_entropy_bits()
  print(f'bound {bound:.4f} +- {stderr:.4f}, true NLL {nll:.4f}, gap {bound - nll:.4f}, '
        f'zeros {float(zeros_B.mean()):.2f}')
  assert bound >= nll - 4 * stderr
  assert bound - nll < 0.3  # the exact denoiser makes the bound nearly tight
  assert float(zeros_B.mean()) > bound + 1.0
  # The same denoiser stated as an eps prediction gives the same bound.
  np.testing.assert_allclose(exact_eps_B, exact_B, rtol=1e-3)
  # Deterministic for a key (fold_in noise), different for another.
  np.testing.assert_array_equal(bounds(sched, x0, jax.random.key(2))[0], exact_B)
  assert not np.allclose(bounds(sched, x0, jax.random.key(3))[0], exact_B)


def test_bound_is_the_exact_sum_of_terms():
  """A Python loop over every position with the same fold_in noise."""
  sched = process.make_schedule('cosine', 5)
  x0 = discretized_gaussian(jax.random.key(3), (4, 2, 2, 1))
  key = jax.random.key(4)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def got_and_expected(sched, x0, key):
    pred_fn = exact_denoiser(sched)
    expected = process.prior_bpd(sched, x0)
    for t in range(5):
      t_B = jnp.full((4,), t)
      eps = jax.random.normal(jax.random.fold_in(key, t), x0.shape)
      xt = process.q_sample(sched, x0, t_B, eps)
      expected += process.term_bpd(sched, 'x0', x0, xt, t_B, pred_fn(xt, t_B), 'small')
    return evaluation.nelbo_bpd(pred_fn, sched, 'x0', x0, key, variance='small'), expected

  np.testing.assert_allclose(*got_and_expected(sched, x0, key), rtol=1e-5)


def test_bound_program_does_not_grow_with_steps():
  x0 = discretized_gaussian(jax.random.key(5), (4, 2, 2, 1))

  def program(sched):
    return jax.make_jaxpr(lambda s, x, k: evaluation.nelbo_bpd(
        exact_denoiser(s), s, 'x0', x, k))(sched, x0, jax.random.key(6))

  # Cosine: the linear schedule scaled by 1000 / T has beta_T = 20 / T > 1 at T = 10.
  short, long = (program(process.make_schedule('cosine', t)) for t in (10, 40))
  assert len(short.eqns) == len(long.eqns)
  # Lines of the printed program, the scan's body included.
  assert str(short).count('\n') == str(long).count('\n')
