"""Samplers for a trained diffusion model: DDPM, DDIM and DPM-Solver++(2M).

A model function is `model_fn(x_BxHxWxC, t_B, labels_B or None) -> prediction`:
the network's output for its objective (eps, x0 or v; see `process.py`) at the
0-based positions t_B (int32; position t is the paper's step t + 1).

Every sampler starts from x ~ N(0, I) at position T - 1, returns samples in
[-1, 1] of `shape` = (B, H, W, C) and, with trajectory=True, the pair
(samples, x_SxBxHxWxC): the x after each of the S steps, the last being the
samples. Each runs its steps as one `lax.scan`, whose per-step constants
(positions, abar, coefficients) are computed before the loop and fed in as
its xs, so the traced program does not grow with the number of steps. Step s
draws its noise from `fold_in(key_steps, s)`; the initial noise comes from a
separate subkey. Callers jit a whole sampler, with the model function, shape,
objective and num_steps static, e.g.

  run = jax.jit(functools.partial(samplers.ddim, model_fn, objective='eps',
                                  shape=(16, 32, 32, 3), num_steps=50))
  images = run(sched=sched, key=key)

Classifier-free guidance (Ho & Salimans 2022) is applied to the prediction;
it is linear, so it means the same in eps, x0 or v space.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from frontiers_jax.diffusion import process
from frontiers_jax.errors import check

SAMPLERS = ('ddpm', 'ddim', 'dpm_solver')
VARIANCES = ('large', 'small')

ModelFn = Callable[[jax.Array, jax.Array, Optional[jax.Array]], jax.Array]


def guided(model_fn: ModelFn, labels_B, null_label: Optional[int], scale: float):
  """Classifier-free guidance (Ho & Salimans 2022, eq. 6, written as
  pred = uncond + scale (cond - uncond), so scale 1 is the plain conditional
  model and 0 the unconditional one).

  Returns fn(x, t_B) -> prediction. Both predictions come from one batched
  call on [cond; uncond] (the unconditional half labelled `null_label`);
  when `scale` is the Python number 1 only the conditional half is run. With
  labels_B None, fn is the unconditional model(x, t, None).
  """
  if labels_B is None:
    return lambda x, t_B: model_fn(x, t_B, None)
  if isinstance(scale, (int, float)) and scale == 1:
    return lambda x, t_B: model_fn(x, t_B, labels_B)
  if null_label is None:
    raise ValueError(f'guidance scale {scale} needs a null_label for the unconditional model')
  labels_B = jnp.asarray(labels_B, jnp.int32)
  null_B = jnp.full_like(labels_B, null_label)

  def fn(x_BxHxWxC, t_B):
    b = x_BxHxWxC.shape[0]
    pred = model_fn(jnp.concatenate([x_BxHxWxC, x_BxHxWxC]), jnp.concatenate([t_B, t_B]),
                    jnp.concatenate([labels_B, null_B]))
    cond, uncond = pred[:b], pred[b:]
    return uncond + scale * (cond - uncond)

  return fn


def _check(objective: str, shape) -> None:
  if objective not in process.OBJECTIVES:
    raise ValueError(f'objective must be one of {process.OBJECTIVES}, got {objective!r}')
  if len(shape) < 2:
    raise ValueError(f'shape must be (B, ...), got {shape}')


SPACINGS = ('uniform', 'quadratic')


def timestep_positions(num_timesteps: int, num_steps: int,
                       spacing: str = 'uniform') -> np.ndarray:
  """num_steps positions from T - 1 down to 0, both ends included.

  'uniform': np.linspace(T - 1, 0, num_steps).round() (the 'linear' skip of
  Song et al. 2021, DDIM, appendix D.2). 'quadratic': evenly spaced in
  sqrt(t), so t = (sqrt(T - 1) i / (S - 1))^2 rounded (DDIM's 'quadratic'
  skip; DPM-Solver's 'time_quadratic'): steps bunch up near the data, where
  log(alpha / sigma) changes fastest. A rounded position equal to or below its
  neighbour nearer the data moves up by one, so positions stay distinct. The
  last step goes from position 0 to the data (abar = 1).
  """
  T = num_timesteps
  if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= T:
    raise ValueError(f'num_steps must be an int in [1, T={T}], got {num_steps!r}')
  if spacing not in SPACINGS:
    raise ValueError(f'spacing must be one of {", ".join(SPACINGS)}, got {spacing!r}')
  if spacing == 'uniform':
    t_S = np.linspace(T - 1, 0, num_steps).round().astype(np.int32)
    if num_steps > 1 and not np.all(np.diff(t_S) < 0):  # round-half-even ties
      raise ValueError(f'num_steps={num_steps} gives repeated positions for T={T}')
    return t_S
  if num_steps == 1:
    return np.array([T - 1], np.int32)
  rising = (np.linspace(0.0, np.sqrt(T - 1), num_steps) ** 2).round().astype(np.int64)
  i = np.arange(num_steps)
  rising = np.maximum.accumulate(rising - i) + i  # each at least one above the last
  # The bumps happen only near 0, where the squares are less than 1 apart;
  # they never reach the top (checked for every T < 400 and every num_steps).
  assert rising[-1] == T - 1, rising
  return rising[::-1].astype(np.int32)


def _positions(sched, num_steps: int, spacing: str = 'uniform') -> np.ndarray:
  return timestep_positions(sched.num_steps, num_steps, spacing)


def _start(key, shape):
  """x at position T - 1 and the key from which step s folds in s."""
  key_init, key_steps = jax.random.split(key)
  return jax.random.normal(key_init, shape), key_steps


def _finish(x_last, x_S, trajectory: bool):
  samples = jnp.clip(x_last, -1.0, 1.0)
  return (samples, x_S) if trajectory else samples


def _t_B(t, shape):
  return jnp.full(shape[:1], t, jnp.int32)


def ddpm(model_fn: ModelFn, sched, objective: str, shape, key, *, labels=None,
         null_label=None, guidance=1.0, variance: str = 'large', trajectory: bool = False):
  """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2):
  x_{t-1} = mu_theta(x_t, t) + sigma_t z, with mu_theta the posterior mean at
  the predicted x_0 clipped to [-1, 1] and sigma_t^2 = beta_t ('large') or
  beta~_t ('small'), both from `process.p_mean_log_variance`. No noise is
  added at the last step (position 0), whose mean is the clipped x_0.
  """
  _check(objective, shape)
  if variance not in VARIANCES:
    raise ValueError(f'variance must be one of {VARIANCES}, got {variance!r}')
  fn = guided(model_fn, labels, null_label, guidance)
  T = sched.num_steps
  t_S = np.arange(T - 1, -1, -1, dtype=np.int32)
  x, key_steps = _start(key, shape)

  def step(x, xs):
    s, t = xs
    t_B = _t_B(t, shape)
    mean, log_var = process.p_mean_log_variance(sched, objective, x, t_B, fn(x, t_B), variance)
    z = jax.random.normal(jax.random.fold_in(key_steps, s), shape)
    x = mean + jnp.where(t > 0, jnp.exp(0.5 * log_var), 0.0) * z
    x = x.astype(jnp.float32)
    return x, (x if trajectory else None)

  x, x_S = lax.scan(step, x, (np.arange(T, dtype=np.int32), t_S))
  return _finish(x, x_S, trajectory)


def ddim(model_fn: ModelFn, sched, objective: str, shape, key, *, num_steps: int,
         eta: float = 0.0, labels=None, null_label=None, guidance=1.0,
         trajectory: bool = False, spacing: str = 'uniform'):
  """DDIM (Song et al. 2021, eq. 12) over `_positions(sched, num_steps, spacing)`:

    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
    sigma  = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)  (eq. 16),

  with x0 the prediction clipped to [-1, 1] and eps recomputed from it. eta = 0
  is deterministic given the initial noise; eta = 1 over all T steps is DDPM
  with the 'small' variance. The last step (abar_prev = 1) returns x0.
  """
  _check(objective, shape)
  fn = guided(model_fn, labels, null_label, guidance)
  t_S = _positions(sched, num_steps, spacing)
  abar_S = sched.alpha_bars[t_S]
  abar_prev_S = jnp.append(sched.alpha_bars[t_S[1:]], 1.0)
  sigma_S = (eta * jnp.sqrt((1.0 - abar_prev_S) / (1.0 - abar_S))
             * jnp.sqrt(1.0 - abar_S / abar_prev_S))
  x, key_steps = _start(key, shape)
  noiseless = isinstance(eta, (int, float)) and eta == 0  # then skip drawing z

  def step(x, xs):
    s, t, abar_prev, sigma = xs
    t_B = _t_B(t, shape)
    x0, eps = process.to_x0_eps(sched, objective, x, t_B, fn(x, t_B), clip_x0=True)
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma ** 2, 0.0))
    x = jnp.sqrt(abar_prev) * x0 + direction * eps
    if not noiseless:
      x = x + sigma * jax.random.normal(jax.random.fold_in(key_steps, s), shape)
    x = x.astype(jnp.float32)
    return x, (x if trajectory else None)

  x, x_S = lax.scan(step, x, (np.arange(num_steps, dtype=np.int32), t_S, abar_prev_S, sigma_S))
  return _finish(x, x_S, trajectory)


def dpm_solver(model_fn: ModelFn, sched, objective: str, shape, key, *, num_steps: int,
               labels=None, null_label=None, guidance=1.0, trajectory: bool = False,
               spacing: str = 'uniform'):
  """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): the
  multistep second-order solver of the diffusion ODE in data prediction, over
  `_positions(sched, num_steps, spacing)` (num_steps model evaluations).

  With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma),
  h_i = lambda_i - lambda_{i-1} and x0_i the prediction at step i clipped to
  [-1, 1], step i goes from position t_{i-1} to t_i:

    D_i = x0_{i-1} + (x0_{i-1} - x0_{i-2}) / (2 r_i),   r_i = h_{i-1} / h_i,
    x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (exp(-h_i) - 1) D_i.

  The first step has no previous prediction and uses D = x0 (first order,
  which is DDIM with eta = 0). So does the last step, from position 0 to the
  data (alpha = 1, sigma = 0, lambda = inf), where r = 0 would make the
  second-order term infinite; it returns D = x0 (the 'lower order final' of
  the authors' code). Deterministic given the initial noise; `key` only
  draws that noise.
  """
  _check(objective, shape)
  fn = guided(model_fn, labels, null_label, guidance)
  t_S = _positions(sched, num_steps, spacing)
  abar_S = sched.alpha_bars[t_S].astype(jnp.float32)
  alpha_S, sigma_S = jnp.sqrt(abar_S), jnp.sqrt(1.0 - abar_S)
  lambda_S = jnp.log(alpha_S) - jnp.log(sigma_S)
  # Steps 0 .. S-2 go to the next position; step S-1 goes to the data.
  h_next = lambda_S[1:] - lambda_S[:-1]                                   # [S-1]
  x_coef = jnp.append(sigma_S[1:] / sigma_S[:-1], 0.0)                   # sigma_i / sigma_{i-1}
  d_coef = jnp.append(-alpha_S[1:] * jnp.expm1(-h_next), 1.0)            # -alpha_i (e^{-h} - 1)
  # 1 / (2 r) = h_i / (2 h_{i-1}) on the second-order steps 1 .. S-2, else 0.
  w = jnp.concatenate([jnp.zeros(1), h_next[1:] / (2.0 * h_next[:-1]), jnp.zeros(1)])[:num_steps]
  x, _ = _start(key, shape)

  def step(carry, xs):
    x, x0_prev = carry
    t, x_c, d_c, w_c = xs
    t_B = _t_B(t, shape)
    x0, _ = process.to_x0_eps(sched, objective, x, t_B, fn(x, t_B), clip_x0=True)
    d = x0 + w_c * (x0 - x0_prev)
    x = (x_c * x + d_c * d).astype(jnp.float32)
    return (x, x0.astype(jnp.float32)), (x if trajectory else None)

  (x, _), x_S = lax.scan(step, (x, jnp.zeros(shape, jnp.float32)), (t_S, x_coef, d_coef, w))
  return _finish(x, x_S, trajectory)


def sample(name: str, model_fn: ModelFn, sched, objective: str, shape, key, *,
           num_steps: Optional[int] = None, **kw):
  """Dispatch to one of SAMPLERS. ddpm always takes all T steps, so its
  num_steps must be None or T; ddim and dpm_solver need num_steps."""
  if name == 'ddpm':
    if num_steps is not None and num_steps != sched.num_steps:
      raise ValueError(f'ddpm takes all T={sched.num_steps} steps; got num_steps={num_steps}')
    return ddpm(model_fn, sched, objective, shape, key, **kw)
  if name in ('ddim', 'dpm_solver'):
    if num_steps is None:
      raise ValueError(f'{name} needs num_steps')
    fn = ddim if name == 'ddim' else dpm_solver
    return fn(model_fn, sched, objective, shape, key, num_steps=num_steps, **kw)
  raise ValueError(f'unknown sampler {name!r}; allowed: {", ".join(SAMPLERS)}')


def parse_sampler(spec: str, num_timesteps: int) -> tuple[str, int]:
  """'ddim:50' -> ('ddim', 50); 'ddpm' -> ('ddpm', T)."""
  name, _, steps = spec.partition(':')
  check(name in SAMPLERS, 'sampler', f'unknown sampler {name!r} in {spec!r}',
        f'allowed: {", ".join(SAMPLERS)}')
  if name == 'ddpm':
    check(steps in ('', str(num_timesteps)), 'sampler', f'{spec!r}: ddpm takes all '
          f'{num_timesteps} steps', f'write ddpm or ddpm:{num_timesteps}')
    return name, num_timesteps
  check(steps.isdigit() and 0 < int(steps) <= num_timesteps, 'sampler',
        f'{spec!r} has no valid step count', f'write {name}:S with 1 <= S <= {num_timesteps}')
  return name, int(steps)
