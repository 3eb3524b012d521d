"""Samplers: moments of an exactly known Gaussian, guidance on a two-class
mixture, determinism, one compiled loop, and errors.

The reference: data x0 ~ N(MU, S^2) per dimension, for which the exact
denoiser is linear, E[x0 | x_t] = MU + k_t (x_t - sqrt(abar_t) MU) with
k_t = sqrt(abar_t) S^2 / (abar_t S^2 + 1 - abar_t). With it every sampler is
affine in its Gaussian noise, so the mean and std of its output follow from a
float64 recursion over the schedule (written here from the papers, not from
the sampler code) and are compared with the samples to within their sampling
error. How far that recursion lands from (MU, S) is each sampler's own
discretization error at these few steps, checked against a stated band.

Each jitted runner takes the schedule, key and data parameters as traced
arguments, so it compiles once per (sampler, objective) and serves both
schedules and every data distribution of that shape.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attack_models
from frontiers_jax.diffusion import process, samplers

FAST_COMPILE = attack_models.FAST_COMPILE
T = 100
B = 4096
SHAPE = (B, 2, 2, 1)         # 16384 independent scalars
N = B * 2 * 2
MU, S = 0.3, 0.2
STEPS = {'ddpm': None, 'ddim': 50, 'dpm_solver': 20}
SCHEDULES = {name: process.make_schedule(name, T) for name in process.SCHEDULES}


def _abar(sched, t_B):
  return sched.alpha_bars[t_B].reshape(-1, 1, 1, 1)


def _as_prediction(objective, abar, x, x0):
  """The network output that implies x0 at x_t: eps from eq. 4 of Ho et al.
  2020, v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)."""
  eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)
  return {'eps': eps, 'x0': x0, 'v': jnp.sqrt(abar) * eps - jnp.sqrt(1.0 - abar) * x0}[objective]


def _gaussian_x0(abar, x, mu, s):
  """E[x0 | x_t] for x0 ~ N(mu, s^2): the Gaussian conditional mean."""
  return mu + jnp.sqrt(abar) * s ** 2 / (abar * s ** 2 + 1.0 - abar) * (x - jnp.sqrt(abar) * mu)


def gaussian_model(sched, objective, mu, s):
  def model_fn(x, t_B, labels):
    assert labels is None
    abar = _abar(sched, t_B)
    return _as_prediction(objective, abar, x, _gaussian_x0(abar, x, mu, s))
  return model_fn


@functools.partial(jax.jit, static_argnames=('name', 'objective', 'trajectory', 'spacing'),
                   compiler_options=FAST_COMPILE)
def run_gaussian(name, objective, sched, key, mu, s, trajectory=False, spacing=None):
  return samplers.sample(name, gaussian_model(sched, objective, mu, s), sched, objective,
                         SHAPE, key, num_steps=STEPS[name], trajectory=trajectory,
                         **({'spacing': spacing} if spacing else {}))


# -- float64 references: each sampler on the Gaussian, as affine maps ---------
# A value is [c, g]: c + g z, z the sampler's initial noise per scalar.


def reference_positions(T, num_steps, spacing):
  """DDIM's skips (Song et al. 2021, appendix D.2): even in t, or even in
  sqrt(t) ('quadratic'), from T - 1 to 0; rounded, made distinct."""
  if spacing == 'uniform':
    return list(np.linspace(T - 1, 0, num_steps).round().astype(int))
  ts = []
  for i in range(num_steps):
    t = round((np.sqrt(T - 1) * i / (num_steps - 1)) ** 2)
    ts.append(max(t, ts[-1] + 1) if ts else t)
  return ts[::-1]


def reference_moments(name, schedule, num_steps, T=T, spacing='uniform'):
  """(mean, std) of the sampler's output on N(MU, S^2) data, no clipping
  (x0 never leaves [-1, 1] here but for ~3.5-sigma tails, 2e-4 of samples)."""
  betas = process.betas_for(schedule, T)
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  k = np.sqrt(abar) * S ** 2 / (abar * S ** 2 + 1.0 - abar)
  one = np.array([1.0, 0.0])

  def x0hat(x, t):
    return (MU - k[t] * np.sqrt(abar[t]) * MU) * one + k[t] * x

  if name == 'ddpm':  # Ho et al. 2020, Alg. 2: mean and variance of x_{t-1}
    m, var = 0.0, 1.0
    for t in range(T - 1, -1, -1):
      c0 = betas[t] * np.sqrt(abar_prev[t]) / (1.0 - abar[t])           # eq. 7
      c1 = (1.0 - abar_prev[t]) * np.sqrt(1.0 - betas[t]) / (1.0 - abar[t])
      gain = c0 * k[t] + c1
      m = gain * m + c0 * (MU - k[t] * np.sqrt(abar[t]) * MU)
      var = gain ** 2 * var + (betas[t] if t > 0 else 0.0)              # 'large': beta_t
    return m, np.sqrt(var)

  ts = reference_positions(T, num_steps, spacing)
  alphas = [np.sqrt(abar[t]) for t in ts] + [1.0]
  sigmas = [np.sqrt(1.0 - abar[t]) for t in ts] + [0.0]
  x = np.array([0.0, 1.0])
  if name == 'ddim':  # Song et al. 2021, eq. 12 with sigma = 0
    for i, t in enumerate(ts):
      x0 = x0hat(x, t)
      eps = (x - alphas[i] * x0) / sigmas[i]
      x = alphas[i + 1] * x0 + sigmas[i + 1] * eps
    return x[0], abs(x[1])
  # DPM-Solver++(2M), Lu et al. 2022, Alg. 2, first and last steps first order.
  lam = [np.log(a / s) if s > 0 else np.inf for a, s in zip(alphas, sigmas)]
  x0_prev = None
  for i, t in enumerate(ts):
    x0 = x0hat(x, t)
    d = x0
    if 0 < i < len(ts) - 1:
      r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
      d = (1 + 1 / (2 * r)) * x0 - x0_prev / (2 * r)
    if i == len(ts) - 1:
      x = d
    else:
      x = sigmas[i + 1] / sigmas[i] * x - alphas[i + 1] * np.expm1(lam[i] - lam[i + 1]) * d
    x0_prev = x0
  return x[0], abs(x[1])


# How far each sampler's discretization lands from S at these steps (the
# float64 reference above, not the samples; measured std/S - 1 on linear,
# cosine): DDPM's 'large' variance beta_t overshoots the true reverse
# variance at T = 100 (+4.9%, +2.2%; 'small' undershoots by 10-15%, so 'large'
# is the closer choice for this data); first-order DDIM at 50 of 100 steps
# undershoots (-11%, -6%); DPM-Solver++(2M) at 20 steps evenly spaced in t
# overshoots (+6.5%, +7.8%: its second-order extrapolation across the
# denoiser's transition near sigma = S). test_reference_converges shows all
# three reach S as T and the steps grow.
STD_BAND = {'ddpm': 0.06, 'ddim': 0.12, 'dpm_solver': 0.09}


@pytest.mark.parametrize('objective', process.OBJECTIVES)
@pytest.mark.parametrize('name', samplers.SAMPLERS)
def test_gaussian_moments(name, objective):
  for i, (schedule, sched) in enumerate(SCHEDULES.items()):
    x = np.asarray(run_gaussian(name, objective, sched, jax.random.key(i), MU, S), np.float64)
    ref_mean, ref_std = reference_moments(name, schedule, STEPS[name] or T)
    print(f'{name} {objective} {schedule}: mean {x.mean():.4f} std {x.std():.4f} '
          f'(reference {ref_mean:.4f}, {ref_std:.4f})')
    # 5 standard errors of N = 16384 samples: 5 std / sqrt(N) for the mean
    # (0.008) and 5 std / sqrt(2 N) for the std (0.0055, 2.8%).
    assert abs(x.mean() - ref_mean) < 5 * ref_std / np.sqrt(N)
    assert abs(x.std() - ref_std) < 5 * ref_std / np.sqrt(2 * N)
    assert abs(ref_mean - MU) < 0.005
    assert abs(ref_std - S) < STD_BAND[name] * S
    assert x.min() >= -1.0 and x.max() <= 1.0


# Quadratic spacing (even in sqrt(t)) puts the steps where the denoiser
# changes fastest, near the data; measured std/S - 1 (linear, cosine): DDIM-50
# -6.3%, -3.7%; DPM-Solver++(2M)-20 -0.01%, -0.05%.
QUADRATIC_STD_BAND = {'ddim': 0.08, 'dpm_solver': 0.01}


@pytest.mark.parametrize('name', ['ddim', 'dpm_solver'])
def test_gaussian_moments_quadratic_spacing(name):
  for i, (schedule, sched) in enumerate(SCHEDULES.items()):
    x = np.asarray(run_gaussian(name, 'eps', sched, jax.random.key(10 + i), MU, S,
                                spacing='quadratic'), np.float64)
    ref_mean, ref_std = reference_moments(name, schedule, STEPS[name], spacing='quadratic')
    assert abs(x.mean() - ref_mean) < 5 * ref_std / np.sqrt(N)
    assert abs(x.std() - ref_std) < 5 * ref_std / np.sqrt(2 * N)
    assert abs(ref_mean - MU) < 0.005
    assert abs(ref_std - S) < QUADRATIC_STD_BAND[name] * S


def test_quadratic_spacing_helps_dpm_solver_at_t_1000():
  """At T = 1000, 20 steps even in t leave one wide step in log-SNR next to
  the data, where second-order extrapolation overshoots the Gaussian's std by
  25%; even in sqrt(t) it is within 5% (float64 references)."""
  for schedule in process.SCHEDULES:
    _, uniform = reference_moments('dpm_solver', schedule, 20, T=1000)
    _, quadratic = reference_moments('dpm_solver', schedule, 20, T=1000, spacing='quadratic')
    assert abs(uniform / S - 1) > 0.2 and abs(quadratic / S - 1) < 0.05, (uniform, quadratic)


@pytest.mark.parametrize('T, num_steps', [(20, 1), (20, 2), (20, 5), (20, 19), (20, 20),
                                          (100, 50), (1000, 10), (1000, 50), (1000, 1000)])
def test_timestep_positions(T, num_steps):
  for spacing in samplers.SPACINGS:
    t_S = samplers.timestep_positions(T, num_steps, spacing)
    assert len(t_S) == num_steps and t_S[0] == T - 1
    assert num_steps == 1 or (t_S[-1] == 0 and np.all(np.diff(t_S) < 0)), t_S
    if num_steps > 1:
      assert list(t_S) == reference_positions(T, num_steps, spacing)
  with pytest.raises(ValueError, match='spacing'):
    samplers.timestep_positions(T, num_steps, 'cubic')


def test_reference_converges():
  """The float64 references reach (MU, S) over all steps of T = 1000 (std
  within 1%, measured 0.04-0.75%), so the bands above are discretization
  error and not a wrong reference."""
  for schedule in process.SCHEDULES:
    for name in samplers.SAMPLERS:
      mean, std = reference_moments(name, schedule, 1000, T=1000)
      assert abs(mean - MU) < 1e-3 and abs(std - S) < 0.01 * S, (name, schedule, std)


def test_samples_stay_in_range():
  # N(0.8, 0.3^2): a quarter of the mass lies above 1.
  for name in samplers.SAMPLERS:
    x = np.asarray(run_gaussian(name, 'eps', SCHEDULES['cosine'], jax.random.key(0), 0.8, 0.3))
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert np.mean(x == 1.0) > 0.1, name  # clipping, not luck, kept them in


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def run_ddim_trajectory(sched, key, eta):
  return samplers.ddim(gaussian_model(sched, 'eps', MU, S), sched, 'eps', (256, 1, 1, 1),
                       key, num_steps=10, eta=eta, trajectory=True)


def test_ddim_deterministic_given_initial_noise():
  sched = SCHEDULES['linear']
  x, x_S = run_ddim_trajectory(sched, jax.random.key(0), 0.0)
  assert x_S.shape == (10, 256, 1, 1, 1)
  np.testing.assert_array_equal(x, x_S[-1])
  again, _ = run_ddim_trajectory(sched, jax.random.key(0), 0.0)
  np.testing.assert_array_equal(x, again)
  other, _ = run_ddim_trajectory(sched, jax.random.key(1), 0.0)
  assert np.mean(np.asarray(x) != np.asarray(other)) > 0.99

  def affine_residual(x, x_S):
    """Largest residual of the samples fitted as one affine function of the
    x after the first step (itself affine in the initial noise)."""
    a = np.asarray(x_S[0], np.float64).ravel()
    y = np.asarray(x, np.float64).ravel()
    coef = np.polyfit(a, y, 1)
    return np.max(np.abs(np.polyval(coef, a) - y))

  # eta = 0: no noise after the start, so one map sends the first step's x to
  # the samples; eta = 1 adds fresh noise at every later step.
  assert affine_residual(x, x_S) < 1e-5
  assert affine_residual(*run_ddim_trajectory(sched, jax.random.key(0), 1.0)) > 0.05


# -- Guidance on a two-class mixture ------------------------------------------
# Class c images ~ N(MEANS[c] 1, S^2 I); label 2 is the null label, the
# unconditional model of the equal mixture of the two.

MEANS = jnp.array([-0.5, 0.5])
NULL = 2
GB = 512


def mixture_model(sched, objective):
  def model_fn(x, t_B, labels_B):
    abar = _abar(sched, t_B)
    x0_c = [_gaussian_x0(abar, x, m, S) for m in (MEANS[0], MEANS[1])]
    # p(c | x_t) from N(x_t; sqrt(abar) m_c, abar S^2 + 1 - abar) over the image.
    var = abar * S ** 2 + 1.0 - abar
    log_lik = jnp.stack([-0.5 * jnp.sum((x - jnp.sqrt(abar) * m) ** 2 / var, axis=(1, 2, 3))
                         for m in (MEANS[0], MEANS[1])], axis=-1)
    w1 = jax.nn.softmax(log_lik, axis=-1)[:, 1].reshape(-1, 1, 1, 1)
    uncond = (1.0 - w1) * x0_c[0] + w1 * x0_c[1]
    lab = labels_B.reshape(-1, 1, 1, 1)
    x0 = jnp.where(lab == NULL, uncond, jnp.where(lab == 1, x0_c[1], x0_c[0]))
    return _as_prediction(objective, abar, x, x0)
  return model_fn


@functools.partial(jax.jit, static_argnames=('name', 'objective'), compiler_options=FAST_COMPILE)
def run_mixture(name, objective, sched, key, labels, scale):
  return samplers.sample(name, mixture_model(sched, objective), sched, objective,
                         (GB, 2, 2, 1), key, num_steps=STEPS[name], labels=labels,
                         null_label=NULL, guidance=scale)


@pytest.mark.parametrize('name,objective', [('ddim', 'v'), ('dpm_solver', 'eps'), ('ddpm', 'x0')])
def test_guidance(name, objective):
  sched = SCHEDULES['cosine']
  labels = jnp.arange(GB, dtype=jnp.int32) % 2
  key = jax.random.key(3)
  image_means = lambda x: np.asarray(x).reshape(GB, -1).mean(axis=1)

  # scale 1: the class-conditional model; class means within 2.5 standard
  # errors (S / sqrt(2 GB) = 0.006 each).
  m = image_means(run_mixture(name, objective, sched, key, labels, 1.0))
  cond_means = np.array([m[labels == c].mean() for c in (0, 1)])
  print(name, 'scale 1 class means', cond_means)
  np.testing.assert_allclose(cond_means, [-0.5, 0.5], atol=0.015)

  # scale 0: the unconditional mixture, whatever the labels: mean 0 and half
  # the images in each mode (the image means' sd is sqrt(0.5^2 + S^2 / 4) /
  # sqrt(GB) = 0.023, and the binomial sd of the fraction 0.022: 4.5 sd),
  # and no image between the modes (|mean| < 0.25 is 2.5 image sd S/2 from
  # either mode: 1.2% of a mode's mass; 4% allowed).
  x0 = run_mixture(name, objective, sched, key, labels, 0.0)
  np.testing.assert_array_equal(x0, run_mixture(name, objective, sched, key, 1 - labels, 0.0))
  m = image_means(x0)
  print(name, 'scale 0 mean', m.mean(), 'fraction > 0', np.mean(m > 0),
        'between', np.mean(np.abs(m) < 0.25))
  assert abs(m.mean()) < 0.1
  assert abs(np.mean(m > 0) - 0.5) < 0.1
  assert np.mean(np.abs(m) < 0.25) < 0.04

  # scale 3: pushed past the class means. Once x_t has settled in its mode,
  # p(c | x_t) ~ 1 and cond = uncond, so guidance acts only at high noise:
  # the ODE samplers carry that early push to the end (measured +0.08), while
  # DDPM's fresh noise at later steps lets it relax back towards the class
  # (+0.018), hence the paired comparison with scale 1 (same key: common noise).
  m = image_means(run_mixture(name, objective, sched, key, labels, 3.0))
  guided_means = np.array([m[labels == c].mean() for c in (0, 1)])
  print(name, 'scale 3 class means', guided_means)
  push = np.sign([-1.0, 1.0]) * (guided_means - cond_means)
  assert np.all(push > (0.01 if name == 'ddpm' else 0.05)), push


def test_guided_is_one_batched_call():
  calls = []

  def model_fn(x, t_B, labels):
    calls.append((x.shape, None if labels is None else np.asarray(labels)))
    return x * (1.0 if labels is None else labels.reshape(-1, 1, 1, 1).astype(x.dtype))

  x = jnp.ones((2, 1, 1, 1))
  t = jnp.zeros(2, jnp.int32)
  out = samplers.guided(model_fn, jnp.array([3, 5]), 1, 2.5)(x, t)
  assert len(calls) == 1 and calls[0][0] == (4, 1, 1, 1)
  np.testing.assert_array_equal(calls[0][1], [3, 5, 1, 1])
  np.testing.assert_allclose(np.ravel(out), [1 + 2.5 * 2, 1 + 2.5 * 4])
  calls.clear()
  samplers.guided(model_fn, None, None, 2.5)(x, t)
  assert len(calls) == 1 and calls[0] == ((2, 1, 1, 1), None)
  with pytest.raises(ValueError, match='null_label'):
    samplers.guided(model_fn, jnp.array([3, 5]), None, 2.5)


# -- One compiled loop ---------------------------------------------------------


def _eqns(jaxpr):
  """All equations, those in sub-jaxprs (scan bodies, pjit) included."""
  found = []
  for eqn in jaxpr.eqns:
    found.append(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, 'jaxpr', sub)
        if hasattr(sub, 'eqns'):
          found += _eqns(sub)
  return found


@pytest.mark.parametrize('name', samplers.SAMPLERS)
def test_one_loop_whatever_the_steps(name):
  def program(steps):
    sched = process.make_schedule('cosine', steps if name == 'ddpm' else T)
    fn = lambda sched, key: samplers.sample(
        name, gaussian_model(sched, 'v', MU, S), sched, 'v', (2, 2, 2, 1), key,
        num_steps=None if name == 'ddpm' else steps, trajectory=True)
    return jax.make_jaxpr(fn)(sched, jax.random.key(0)).jaxpr

  few, many = program(5), program(50)
  assert {'scan', 'while'} & {e.primitive.name for e in _eqns(few)}
  assert len(_eqns(few)) == len(_eqns(many))
  assert [v.aval.shape for v in many.outvars] == [(2, 2, 2, 1), (50, 2, 2, 2, 1)]


# -- Errors ----------------------------------------------------------------------


def test_errors():
  sched = SCHEDULES['linear']
  model = gaussian_model(sched, 'eps', MU, S)
  args = (model, sched, 'eps', (2, 1, 1, 1), jax.random.key(0))
  with pytest.raises(ValueError, match='num_steps=7'):
    samplers.sample('ddpm', *args, num_steps=7)
  with pytest.raises(ValueError, match="'euler'"):
    samplers.sample('euler', *args, num_steps=7)
  with pytest.raises(ValueError, match='num_steps'):
    samplers.sample('ddim', *args)
  with pytest.raises(ValueError, match='101'):
    samplers.sample('dpm_solver', *args, num_steps=T + 1)
  with pytest.raises(ValueError, match="'x1'"):
    samplers.ddim(model, sched, 'x1', (2, 1, 1, 1), jax.random.key(0), num_steps=5)
  with pytest.raises(ValueError, match="'huge'"):
    samplers.ddpm(*args, variance='huge')
