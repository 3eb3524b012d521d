"""The Gaussian diffusion process of Ho et al. 2020 ("DDPM") in closed form.

Indices: the T steps are stored at 0-based positions, so position t holds the
paper's step t + 1. x_0 is data scaled to [-1, 1]; x_T is almost pure noise.

  forward   q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)     (eq. 2)
  marginal  q(x_t | x_0)     = N(sqrt(abar_t) x_0, (1 - abar_t) I)      (eq. 4)
  posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)                (eq. 6, 7)

The network predicts one of three equivalent quantities (`OBJECTIVES`):
  eps  the noise added (Ho et al. 2020),
  x0   the clean image,
  v    sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, section 4),
and the conversions below turn any of them into the others given x_t.

The schedule is computed in float64 with numpy and stored in the dtype asked
for, so tests can build a float64 reference from the same definition.
"""

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ('linear', 'cosine')
OBJECTIVES = ('eps', 'x0', 'v')


def betas_for(name: str, num_steps: int) -> np.ndarray:
  """beta_1..beta_T in float64.

  linear: 1e-4 to 0.02 over T = 1000 (Ho et al. 2020, section 4), scaled by
    1000 / T so that other T keep the same overall amount of noise (Nichol &
    Dhariwal 2021, section 3.2), and clipped to 0.999 like the cosine betas.
  cosine: abar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2),
    s = 0.008, betas clipped to 0.999 (Nichol & Dhariwal 2021, eq. 17).
  """
  if name == 'linear':
    scale = 1000.0 / num_steps
    betas = np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
    return np.minimum(betas, 0.999)  # T <= 20 would reach beta >= 1 (abar <= 0).
  if name == 'cosine':
    s = 0.008
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
  raise ValueError(f'unknown schedule {name!r}; allowed: {", ".join(SCHEDULES)}')


@flax.struct.dataclass
class Schedule:
  """Per-step constants, each of shape [T]."""
  betas: jax.Array
  alpha_bars: jax.Array            # abar_t = prod_{s <= t} (1 - beta_s)
  alpha_bars_prev: jax.Array       # abar_{t-1}, with abar_0 = 1
  posterior_variance: jax.Array    # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t
  posterior_log_variance: jax.Array  # log beta~_t, with beta~_1 replaced by beta~_2
  posterior_coef_x0: jax.Array     # eq. 7: coefficient of x_0 in mu~_t
  posterior_coef_xt: jax.Array     # eq. 7: coefficient of x_t in mu~_t

  @property
  def num_steps(self) -> int:
    return self.betas.shape[0]


def make_schedule(name: str, num_steps: int, dtype=jnp.float32) -> Schedule:
  betas = betas_for(name, num_steps)
  alpha_bars = np.cumprod(1.0 - betas)
  alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
  posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
  # beta~_1 = 0: the log is clipped to the next value, as in Ho et al.'s code.
  posterior_log_variance = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
  coef_x0 = betas * np.sqrt(alpha_bars_prev) / (1.0 - alpha_bars)
  coef_xt = (1.0 - alpha_bars_prev) * np.sqrt(1.0 - betas) / (1.0 - alpha_bars)
  as_array = lambda a: jnp.asarray(a, dtype)
  return Schedule(as_array(betas), as_array(alpha_bars), as_array(alpha_bars_prev),
                  as_array(posterior_variance), as_array(posterior_log_variance),
                  as_array(coef_x0), as_array(coef_xt))


def _at(values_T: jax.Array, t_B: jax.Array, like: jax.Array) -> jax.Array:
  """values[t] per example, shaped to broadcast against `like` ([B, ...])."""
  return values_T[t_B].reshape(t_B.shape + (1,) * (like.ndim - t_B.ndim))


def q_sample(sched: Schedule, x0: jax.Array, t_B: jax.Array, eps: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4)."""
  abar = _at(sched.alpha_bars, t_B, x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps


def q_posterior(sched: Schedule, x0: jax.Array, xt: jax.Array, t_B: jax.Array):
  """Mean, variance and log variance of q(x_{t-1} | x_t, x_0) (eq. 6, 7)."""
  mean = (_at(sched.posterior_coef_x0, t_B, xt) * x0
          + _at(sched.posterior_coef_xt, t_B, xt) * xt)
  return (mean, _at(sched.posterior_variance, t_B, xt),
          _at(sched.posterior_log_variance, t_B, xt))


# -- eps, x0 and v: any one and x_t give the others. -----------------------

def x0_from_eps(sched, xt, t_B, eps):
  """Inverts eq. 4: x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
  abar = _at(sched.alpha_bars, t_B, xt)
  return (xt - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)


def eps_from_x0(sched, xt, t_B, x0):
  abar = _at(sched.alpha_bars, t_B, xt)
  return (xt - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)


def v_from(sched, x0, t_B, eps):
  """v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022, section 4)."""
  abar = _at(sched.alpha_bars, t_B, x0)
  return jnp.sqrt(abar) * eps - jnp.sqrt(1.0 - abar) * x0


def x0_from_v(sched, xt, t_B, v):
  """x_0 = sqrt(abar) x_t - sqrt(1 - abar) v (x_t and v are a rotation of x_0, eps)."""
  abar = _at(sched.alpha_bars, t_B, xt)
  return jnp.sqrt(abar) * xt - jnp.sqrt(1.0 - abar) * v


def eps_from_v(sched, xt, t_B, v):
  abar = _at(sched.alpha_bars, t_B, xt)
  return jnp.sqrt(1.0 - abar) * xt + jnp.sqrt(abar) * v


def target(sched, objective: str, x0, t_B, eps):
  """What the network is trained to output for this objective."""
  if objective == 'eps':
    return eps
  if objective == 'x0':
    return x0
  return v_from(sched, x0, t_B, eps)


def to_x0_eps(sched, objective: str, xt, t_B, prediction, clip_x0: bool = False):
  """(x0, eps) implied by the network's output; x0 optionally clipped to [-1, 1]
  (with eps recomputed from the clipped x0, so both describe one x_t)."""
  if objective == 'eps':
    eps = prediction
    x0 = x0_from_eps(sched, xt, t_B, eps)
  elif objective == 'x0':
    x0 = prediction
    eps = eps_from_x0(sched, xt, t_B, x0)
  else:
    x0 = x0_from_v(sched, xt, t_B, prediction)
    eps = eps_from_v(sched, xt, t_B, prediction)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = eps_from_x0(sched, xt, t_B, x0)
  return x0, eps


# -- The variational bound, in bits per dimension (Ho et al. 2020, eq. 5). --

def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)), elementwise, in nats."""
  # (logvar2 - logvar1) first: exactly 0 for equal variances, so -1 + 1 cancels.
  return 0.5 * (-1.0 + (logvar2 - logvar1) + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def discretized_gaussian_log_likelihood(x0, mean, log_var, num_bins: int = 256):
  """log p(x_0 | x_1) of Ho et al. 2020, eq. 13: the Gaussian's mass on each
  pixel's bin of width 2 / (num_bins - 1) in [-1, 1], the edge bins reaching
  to -inf and +inf. Elementwise, in nats.

  Masses are differences of the normal CDF Phi; above the mean they are taken
  as Phi(-lo) - Phi(-hi), so that tail masses far below 1e-7 survive float32.
  """
  half_bin = 1.0 / (num_bins - 1)
  inv_std = jnp.exp(-0.5 * log_var)
  lo = (x0 - mean - half_bin) * inv_std
  hi = (x0 - mean + half_bin) * inv_std
  ndtr = jax.scipy.special.ndtr
  middle = jnp.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
  mass = jnp.where(x0 > 1.0 - half_bin, ndtr(-lo),
                   jnp.where(x0 < -1.0 + half_bin, ndtr(hi), middle))
  return jnp.log(jnp.maximum(mass, 1e-12))


def prior_bpd(sched: Schedule, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) per example, in bits per dimension."""
  t = jnp.full(x0.shape[:1], sched.num_steps - 1)
  abar = _at(sched.alpha_bars, t, x0)
  kl = normal_kl(jnp.sqrt(abar) * x0, jnp.log(1.0 - abar), 0.0, 0.0)
  return _mean_bits(kl)


def _mean_bits(nats):
  return jnp.mean(nats.reshape(nats.shape[0], -1), axis=1) / math.log(2.0)


def p_mean_log_variance(sched, objective, xt, t_B, prediction, variance: str = 'large'):
  """p(x_{t-1} | x_t): the posterior mean at the predicted x_0 (clipped to
  [-1, 1]) and a fixed variance: 'small' beta~_t or 'large' beta_t (eq. 6 and
  section 3.2; 'large' is the better choice for the bound)."""
  x0, _ = to_x0_eps(sched, objective, xt, t_B, prediction, clip_x0=True)
  mean, _, small_log_var = q_posterior(sched, x0, xt, t_B)
  if variance == 'small':
    return mean, small_log_var
  # beta_1 is replaced by beta~_2, as for the small variance (Ho et al.'s code).
  large = jnp.append(sched.posterior_variance[1], sched.betas[1:])
  return mean, jnp.log(_at(large, t_B, xt))


def term_bpd(sched, objective, x0, xt, t_B, prediction, variance='large'):
  """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 1 and
  L_0 = -log p(x_0 | x_1) at t = 1 (position 0), per example, bits/dim."""
  true_mean, _, true_log_var = q_posterior(sched, x0, xt, t_B)
  mean, log_var = p_mean_log_variance(sched, objective, xt, t_B, prediction, variance)
  kl = normal_kl(true_mean, true_log_var, mean, log_var)
  nll = -discretized_gaussian_log_likelihood(x0, mean, log_var)
  first = (t_B == 0).reshape(t_B.shape + (1,) * (x0.ndim - 1))
  return _mean_bits(jnp.where(first, nll, kl))


def to_model_space(images):
  """[0, 1] -> [-1, 1], the range the process assumes for x_0."""
  return images * 2.0 - 1.0


def to_image_space(x):
  return (jnp.clip(x, -1.0, 1.0) + 1.0) / 2.0
