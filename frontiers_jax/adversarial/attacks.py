"""Adversarial attacks on image classifiers: FGSM and PGD (L-inf and L2).

Everything here is pure, batched and jittable. `x` is float32 in [0, 1] of any
shape [B, ...]; `logits_fn(x) -> [B, K]` is a pure function (a closure over
params) that treats examples independently (e.g. BatchNorm in eval mode), so
the gradient of the summed loss is each example's own gradient. Labels are
int32 [B]; for targeted attacks they are the target classes.

Steps and restarts iterate on device with `lax.fori_loop` (no Python loop,
no early stopping), so `steps` and `restarts` may be Python ints or traced
integers. Typical use under `jit`:

  attack = jax.jit(attacks.pgd, static_argnames=(
      'logits_fn', 'norm', 'random_start', 'loss', 'targeted'))

Returned adversarial inputs carry no gradient (`stop_gradient`): adversarial
training differentiates the loss at the attack's output, not through the
attack (Madry et al. 2018, Sec. 2 and App. A, via Danskin's theorem).
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

LOSSES = ('ce', 'cw', 'dlr')
NORMS = ('linf', 'l2')

LogitsFn = Callable[[jax.Array], jax.Array]


def _check(loss: str, norm: str = 'linf') -> None:
  if loss not in LOSSES:
    raise ValueError(f'loss must be one of {LOSSES}, got {loss!r}')
  if norm not in NORMS:
    raise ValueError(f'norm must be one of {NORMS}, got {norm!r}')


def _reduce_axes(v: jax.Array) -> tuple[int, ...]:
  return tuple(range(1, v.ndim))


def _l2_norm(v: jax.Array) -> jax.Array:
  """Per-example L2 norm of [B, ...], shaped [B, 1, ..., 1]."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=_reduce_axes(v), keepdims=True))


def _unit_l2(v: jax.Array) -> jax.Array:
  """v / ||v||_2 per example; zero where v is zero.

  Dividing by max|v_i| first keeps tiny gradients (say 1e-25, from a
  saturated softmax) from underflowing to a zero norm when squared.
  """
  v_max = jnp.max(jnp.abs(v), axis=_reduce_axes(v), keepdims=True)
  v = v / jnp.where(v_max > 0, v_max, 1.)
  norm = _l2_norm(v)
  return v / jnp.where(norm > 0, norm, 1.)


# -- Objectives --------------------------------------------------------------


def _true_and_best_other(logits_BxK: jax.Array, labels_B: jax.Array):
  """z_y and max_{j != y} z_j, each [B]."""
  is_label_BxK = jnp.arange(logits_BxK.shape[-1]) == labels_B[:, None]
  z_y_B = jnp.sum(jnp.where(is_label_BxK, logits_BxK, 0.), axis=-1)
  z_other_B = jnp.max(jnp.where(is_label_BxK, -jnp.inf, logits_BxK), axis=-1)
  return z_y_B, z_other_B


def attack_loss(logits_BxK: jax.Array, labels_B: jax.Array, loss: str = 'ce',
                targeted: bool = False) -> jax.Array:
  """The per-example objective [B] that an attacker maximizes.

  Args:
    logits_BxK: classifier outputs (computed in float32 here).
    labels_B: true labels, or the target labels when `targeted`.
    loss: 'ce' cross-entropy; 'cw' the Carlini & Wagner (2017) margin; 'dlr'
      the Difference of Logits Ratio of Croce & Hein (2020), untargeted only.
    targeted: maximize toward `labels_B` instead of away from them.

  Returns:
    ce:  CE(z, y); targeted: -CE(z, t).
    cw:  max_{j != y} z_j - z_y (> 0 iff misclassified); targeted:
         z_t - max_{j != t} z_j (> 0 iff classified as t).
    dlr: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), with z_pi1 >=
         z_pi2 >= z_pi3 the sorted logits (Croce & Hein 2020, eq. 6). Invariant
         to shifting and positive scaling of the logits; needs K >= 3.
  """
  _check(loss)
  logits_BxK = logits_BxK.astype(jnp.float32)  # 1e-12 below vanishes in bf16
  sign = -1. if targeted else 1.
  if loss == 'ce':
    log_p_BxK = jax.nn.log_softmax(logits_BxK, axis=-1)
    log_p_y_B = jnp.take_along_axis(log_p_BxK, labels_B[:, None], axis=-1)[:, 0]
    return -sign * log_p_y_B
  z_y_B, z_other_B = _true_and_best_other(logits_BxK, labels_B)
  if loss == 'cw':  # Carlini & Wagner 2017, eq. for f_6 (with kappa = 0)
    return sign * (z_other_B - z_y_B)
  if targeted:
    raise ValueError(
        "targeted 'dlr' (Croce & Hein 2020, eq. 7) needs both the true and the "
        "target label; use loss='cw' or 'ce' for targeted attacks")
  if logits_BxK.shape[-1] < 3:
    raise ValueError(f"loss='dlr' needs at least 3 classes, got {logits_BxK.shape[-1]}")
  top_Bx3, _ = lax.top_k(logits_BxK, 3)
  return -(z_y_B - z_other_B) / (top_Bx3[:, 0] - top_Bx3[:, 2] + 1e-12)


def success(logits_fn: LogitsFn, x_adv: jax.Array, labels: jax.Array,
            targeted: bool = False) -> jax.Array:
  """bool [B]: misclassified (untargeted), or classified as the target."""
  return _fooled(logits_fn(x_adv), labels, targeted)


def _fooled(logits_BxK: jax.Array, labels_B: jax.Array, targeted: bool) -> jax.Array:
  hit_B = jnp.argmax(logits_BxK, axis=-1) == labels_B
  return hit_B if targeted else ~hit_B


def _loss_and_grad(logits_fn: LogitsFn, labels: jax.Array, loss: str, targeted: bool):
  """x -> ((sum, (loss_B, logits_BxK)), d sum / d x).

  The sum's gradient is each example's own, since examples are independent.
  """
  def total(x_adv):
    logits_BxK = logits_fn(x_adv)
    loss_B = attack_loss(logits_BxK, labels, loss, targeted)
    return jnp.sum(loss_B), (loss_B, logits_BxK)
  return jax.value_and_grad(total, has_aux=True)


# -- Balls -------------------------------------------------------------------


def project(delta: jax.Array, eps, norm: str) -> jax.Array:
  """Euclidean projection of each example's perturbation onto its eps-ball."""
  _check('ce', norm)
  if norm == 'linf':
    return jnp.clip(delta, -eps, eps)
  norm_B1 = _l2_norm(delta)
  return delta * jnp.minimum(1., eps / jnp.where(norm_B1 > 0, norm_B1, 1.))


def _to_ball_and_box(x: jax.Array, x_adv: jax.Array, eps, norm: str) -> jax.Array:
  """Projects x_adv onto {x + delta : ||delta|| <= eps} and then onto [0, 1].

  Clipping to the box after the ball projection cannot leave the ball: x lies
  in [0, 1], so clipping moves each coordinate of x + delta toward x's box and
  never increases |delta_i|; hence neither ||delta||_inf nor ||delta||_2 grows.
  (For L2 this is not the exact projection onto the intersection, but a
  feasible point, which is all PGD needs.)
  """
  return jnp.clip(x + project(x_adv - x, eps, norm), 0., 1.)


def random_start(key: jax.Array, x: jax.Array, eps, norm: str) -> jax.Array:
  """A uniform random point of each example's eps-ball, clipped to [0, 1].

  linf: delta ~ U[-eps, eps]^d. l2: a Gaussian direction, normalized, times
  radius eps * U^(1/d), which is uniform in the d-dimensional ball.
  """
  _check('ce', norm)
  if norm == 'linf':
    delta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  else:
    key_direction, key_radius = jax.random.split(key)
    direction = _unit_l2(jax.random.normal(key_direction, x.shape, x.dtype))
    d = math.prod(x.shape[1:])
    u_B1 = jax.random.uniform(key_radius, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
    delta = eps * u_B1 ** (1. / d) * direction
  return _to_ball_and_box(x, x + delta, eps, norm)


_random_start = random_start  # `pgd` has an argument of the same name.


# -- Attacks -----------------------------------------------------------------


def fgsm(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, eps,
         loss: str = 'ce', targeted: bool = False) -> jax.Array:
  """Fast Gradient Sign Method (Goodfellow et al. 2015, eq. 3).

  x_adv = clip(x + eps * sign(grad_x L(x, y)), 0, 1), with L = `attack_loss`
  (for targeted attacks it already points toward the target).
  """
  _check(loss)
  _, grad = _loss_and_grad(logits_fn, labels, loss, targeted)(x)
  return lax.stop_gradient(jnp.clip(x + eps * jnp.sign(grad), 0., 1.))


class _Best(NamedTuple):
  """Per example, the best candidate seen so far."""
  x: jax.Array          # [B, ...]
  loss: jax.Array       # [B]
  success: jax.Array    # [B] bool


def _keep_best(best: _Best, x_new, loss_new_B, success_new_B) -> _Best:
  """Success wins; among equal success, the higher attack loss wins."""
  better_B = ((success_new_B & ~best.success) |
              ((success_new_B == best.success) & (loss_new_B > best.loss)))
  better_x = better_B.reshape(better_B.shape + (1,) * (x_new.ndim - 1))
  return _Best(jnp.where(better_x, x_new, best.x),
               jnp.where(better_B, loss_new_B, best.loss),
               jnp.where(better_B, success_new_B, best.success))


def pgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, key: jax.Array,
        eps, step_size, steps, norm: str = 'linf', restarts=1,
        random_start: bool = True, loss: str = 'ce',
        targeted: bool = False) -> tuple[jax.Array, jax.Array]:
  """Projected gradient ascent on `attack_loss` (Madry et al. 2018, eq. 2).

  Each step: linf  x <- P(x + step_size * sign(g));
             l2    x <- P(x + step_size * g / ||g||_2)  (per example; g = 0
                   gives a zero step), where P projects onto the eps-ball
  around x and then clips to [0, 1]. Restart r starts from
  `random_start(fold_in(key, r), ...)` (or from x when `random_start` is
  False, which makes restarts repeats).

  Per example, the returned x_adv is the best candidate among the clean input
  and every iterate of every restart (including each restart's start and
  last iterate): a fooling one first, then the highest attack loss. So more
  steps or restarts (with the same key) never find fewer adversarial examples.

  Returns:
    x_adv: same shape as x, in the eps-ball and in [0, 1], without gradient.
    success_B: bool [B], whether x_adv fools the model (see `success`).
  """
  _check(loss, norm)
  loss_and_grad = _loss_and_grad(logits_fn, labels, loss, targeted)

  def evaluate(x_adv):
    logits_BxK = logits_fn(x_adv)
    return (attack_loss(logits_BxK, labels, loss, targeted),
            _fooled(logits_BxK, labels, targeted))

  def step(_, carry):
    x_adv, best = carry
    (_, (loss_B, logits_BxK)), grad = loss_and_grad(x_adv)
    best = _keep_best(best, x_adv, loss_B, _fooled(logits_BxK, labels, targeted))
    direction = jnp.sign(grad) if norm == 'linf' else _unit_l2(grad)
    x_adv = _to_ball_and_box(x, x_adv + step_size * direction, eps, norm)
    return x_adv, best

  def restart(r, best):
    x_adv = _random_start(jax.random.fold_in(key, r), x, eps, norm) if random_start else x
    x_adv, best = lax.fori_loop(0, steps, step, (x_adv, best))
    return _keep_best(best, x_adv, *evaluate(x_adv))

  best = _Best(x, *evaluate(x))
  best = lax.fori_loop(0, restarts, restart, best)
  x_adv = lax.stop_gradient(best.x)
  return x_adv, success(logits_fn, x_adv, labels, targeted)
