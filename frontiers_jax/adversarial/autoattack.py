"""AutoAttack's parameter-free attacks: APGD, Square, and the worst-case ensemble.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks": APGD (Algorithm 1, Sec. 3.1) with
the CE or DLR loss, and the per-example worst case over an ensemble of attacks.
Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search": the L-inf Square attack (Algorithm 1).

Same conventions as `attacks`: pure, batched and jittable; `x` is float32 in
[0, 1], `logits_fn(x) -> [B, K]` treats examples independently, keys are
derived with `fold_in`, and every iteration and restart runs on device in a
`lax.fori_loop` (so `steps`, `queries` and `restarts` may be traced integers)
without early stopping. Each attack returns `(x_adv, success_B)`, where x_adv
is, per example, the best point found and the clean input counts as a
candidate: a clean mistake is a success.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from frontiers_jax.adversarial import attacks
from frontiers_jax.adversarial.attacks import LogitsFn

AUTOATTACK = ('apgd-ce', 'apgd-dlr', 'square')
SQUARE_LOSSES = {'margin': 'cw', 'ce': 'ce'}  # name -> `attacks.attack_loss` objective
Attack = Callable[..., tuple[jax.Array, jax.Array]]


def _per_example(v_B: jax.Array, like: jax.Array) -> jax.Array:
  """[B] -> [B, 1, ..., 1], to broadcast against `like`."""
  return v_B.reshape(v_B.shape + (1,) * (like.ndim - 1))


# -- APGD --------------------------------------------------------------------


def _checkpoint_percents() -> tuple[int, ...]:
  """100 p_j for the p_j <= 1 of Croce & Hein 2020, Sec. 3.1:
  p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).

  In integer percent, so that ceil(p_j N) below is exact (in floats,
  0.22 + 0.19 = 0.41000000000000003 and ceil(100 p_2) would be 42, not 41).
  """
  p = [0, 22]
  while p[-1] + max(p[-1] - p[-2] - 3, 6) <= 100:
    p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
  return tuple(p)


CHECKPOINT_PERCENTS = _checkpoint_percents()  # (0, 22, 41, 57, 70, 80, 87, 93, 99)


def apgd_checkpoints(steps: int) -> tuple[int, ...]:
  """The checkpoints w_j = ceil(p_j steps) of APGD, without repeats (small `steps`)."""
  return tuple(sorted({-(-p * steps // 100) for p in CHECKPOINT_PERCENTS}))


def _is_checkpoint(t, steps) -> jax.Array:
  """bool: iteration count t (1-based) is a checkpoint w_j, j >= 1. Traceable."""
  w_J = (jnp.asarray(CHECKPOINT_PERCENTS[1:]) * steps + 99) // 100  # exact ceil
  return jnp.any(w_J == t)


def apgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, key: jax.Array, eps,
         steps=100, norm: str = 'linf', loss: str = 'ce', restarts=1, rho: float = 0.75,
         alpha: float = 0.75) -> tuple[jax.Array, jax.Array]:
  """Auto-PGD (Croce & Hein 2020, Algorithm 1), untargeted.

  Per restart r, from x^(0) = `attacks.random_start(fold_in(key, r), ...)`,
  with step size eta = 2 eps per example, k = 0 .. steps-1:
    z^(k+1) = P(x^(k) + eta sign(g))          (l2: eta g / ||g||_2)
    x^(k+1) = P(x^(k) + a (z^(k+1) - x^(k)) + (1 - a)(x^(k) - x^(k-1))),
  a = 1 at k = 0 and `alpha` after; P projects onto the eps-ball and [0, 1].
  x_max is the highest-loss point so far. After iteration w_j (Sec. 3.1),
  eta halves and the search restarts from x_max, per example, if
    condition 1: fewer than rho (w_j - w_{j-1}) of the iterations since
      w_{j-1} increased the loss, or
    condition 2: eta was not halved at w_{j-1} and the best loss has not
      changed since w_{j-1}.

  Per example the returned x_adv is the best of the clean input and every
  iterate of every restart, as in `attacks.pgd`: a fooling one first, then
  the highest loss.

  Args:
    loss: an `attacks.attack_loss` objective; 'ce' and 'dlr' are AutoAttack's.
    steps: iterations (gradient steps) per restart; steps + 1 gradient
      evaluations, counting the starting point's.
    rho: condition 1's threshold. alpha: momentum (0.75 in the paper).

  Returns:
    x_adv: same shape as x, in the eps-ball and in [0, 1], without gradient.
    success_B: bool [B], whether x_adv fools the model.
  """
  attacks._check(loss, norm)
  loss_and_grad = attacks._loss_and_grad(logits_fn, labels, loss, False)

  def feasible(x_adv):
    return attacks._to_ball_and_box(x, x_adv, eps, norm)

  def direction(grad):
    return jnp.sign(grad) if norm == 'linf' else attacks._unit_l2(grad)

  def evaluate(x_adv):
    (_, (loss_B, logits_BxK)), grad = loss_and_grad(x_adv)
    return loss_B, attacks._fooled(logits_BxK, labels, False), grad

  def step(k, carry):
    (x_cur, x_prev, grad, loss_cur, eta_B, x_max, loss_max, grad_max, increases_B,
     last_check, loss_max_last, halved_last, best) = carry
    a = jnp.where(k == 0, 1., alpha)
    z = feasible(x_cur + _per_example(eta_B, x) * direction(grad))
    x_new = feasible(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev))
    loss_new, fooled_new, grad_new = evaluate(x_new)
    best = attacks._keep_best(best, x_new, loss_new, fooled_new)
    increases_B = increases_B + (loss_new > loss_cur)
    improved = loss_new > loss_max
    x_max = jnp.where(_per_example(improved, x), x_new, x_max)
    grad_max = jnp.where(_per_example(improved, x), grad_new, grad_max)
    loss_max = jnp.where(improved, loss_new, loss_max)

    t = k + 1  # iterations done
    check = _is_checkpoint(t, steps)
    condition_1 = increases_B < rho * (t - last_check)
    condition_2 = ~halved_last & (loss_max == loss_max_last)
    halve_B = check & (condition_1 | condition_2)
    eta_B = jnp.where(halve_B, eta_B / 2, eta_B)
    halve = _per_example(halve_B, x)
    x_new = jnp.where(halve, x_max, x_new)
    grad_new = jnp.where(halve, grad_max, grad_new)
    loss_new = jnp.where(halve_B, loss_max, loss_new)
    halved_last = jnp.where(check, halve_B, halved_last)
    loss_max_last = jnp.where(check, loss_max, loss_max_last)
    increases_B = jnp.where(check, 0, increases_B)
    last_check = jnp.where(check, t, last_check)
    return (x_new, x_cur, grad_new, loss_new, eta_B, x_max, loss_max, grad_max,
            increases_B, last_check, loss_max_last, halved_last, best)

  def restart(r, best):
    x_0 = attacks.random_start(jax.random.fold_in(key, r), x, eps, norm)
    loss_0, fooled_0, grad_0 = evaluate(x_0)
    best = attacks._keep_best(best, x_0, loss_0, fooled_0)
    eta_B = jnp.full(loss_0.shape, 2., x.dtype) * eps
    carry = (x_0, x_0, grad_0, loss_0, eta_B, x_0, loss_0, grad_0,
             jnp.zeros(loss_0.shape, jnp.int32), jnp.zeros((), jnp.int32), loss_0,
             jnp.zeros(loss_0.shape, bool), best)
    return lax.fori_loop(0, steps, step, carry)[-1]

  loss_clean, fooled_clean, _ = evaluate(x)
  best = attacks._Best(x, loss_clean, fooled_clean)
  best = lax.fori_loop(0, restarts, restart, best)
  x_adv = lax.stop_gradient(best.x)
  return x_adv, attacks.success(logits_fn, x_adv, labels)


# -- Square ------------------------------------------------------------------

# Andriushchenko et al. 2020, Sec. 3.1 / their code: p halves after these
# iterations of a 10,000-query run, rescaled to other budgets.
SQUARE_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(i, p_init, horizon) -> jax.Array:
  """p at iteration i (0-based) of a run of `horizon` queries. Traceable."""
  i_scaled = (i * 10000) // horizon  # int32: fine for horizon * 10^4 < 2^31
  halvings = jnp.sum(i_scaled > jnp.asarray(SQUARE_HALVINGS))
  return p_init / 2. ** halvings


def square(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, key: jax.Array, eps,
           queries=1000, p_init: float = 0.8, loss: str = 'margin',
           horizon=None) -> tuple[jax.Array, jax.Array]:
  """Square Attack, L-inf, untargeted (Andriushchenko et al. 2020, Algorithm 1).

  Score-based: it reads only `logits_fn`'s outputs, never its gradients.
  x is NHWC. Query 1 is the start x + eps * (vertical stripes of random signs
  per column and channel), clipped to [0, 1]. Each further query, per
  example, takes the best point so far and sets a random s x s window, in
  each channel, to x + eps or x - eps at random (clipped), with side
    s = round(sqrt(p * n_features / C)) = round(sqrt(p H W)), clipped to [1, min(H, W)],
  where p = `square_fraction`: p_init, halved after each of SQUARE_HALVINGS
  scaled by `horizon` / 10,000 (default horizon: `queries`). The new point is
  kept if it lowers the loss
  (the margin z_y - max_{j != y} z_j, or -CE). Fooled examples no longer
  change, and a clean mistake is kept as the answer.

  `horizon` only sets the p schedule: with a fixed horizon a run of q queries
  is the first q queries of any longer run with the same key, so more queries
  never fool fewer examples (with the default horizon = queries, the schedule
  and so the whole run changes with `queries`).

  Returns:
    x_adv: same shape as x, in the eps-ball and in [0, 1], without gradient.
    success_B: bool [B], whether x_adv fools the model.
  """
  if loss not in SQUARE_LOSSES:
    raise ValueError(f'loss must be one of {tuple(SQUARE_LOSSES)}, got {loss!r}')
  if x.ndim != 4:
    raise ValueError(f'square needs NHWC images, got shape {x.shape}')
  objective = SQUARE_LOSSES[loss]
  horizon = queries if horizon is None else horizon
  B, H, W, C = x.shape
  key_start, key_search = jax.random.split(key)

  def evaluate(x_adv):  # the attack_loss to *increase*: -margin, or CE
    logits_BxK = logits_fn(x_adv)
    return (attacks.attack_loss(logits_BxK, labels, objective),
            attacks._fooled(logits_BxK, labels, False))

  stripes_Bx1xWxC = jax.random.rademacher(key_start, (B, 1, W, C), x.dtype)
  x_0 = jnp.clip(x + eps * stripes_Bx1xWxC, 0., 1.)
  best = attacks._Best(x_0, *evaluate(x_0))
  _, fooled_clean = evaluate(x)
  keep_clean = fooled_clean & ~best.success
  best = attacks._Best(jnp.where(_per_example(keep_clean, x), x, best.x),
                       best.loss, best.success | fooled_clean)

  rows_1xHx1, cols_1x1xW = jnp.arange(H)[None, :, None], jnp.arange(W)[None, None, :]

  def query(i, best):
    k_row, k_col, k_sign = jax.random.split(jax.random.fold_in(key_search, i), 3)
    p = square_fraction(i - 1, p_init, horizon)
    s = jnp.clip(jnp.round(jnp.sqrt(p * H * W)), 1, min(H, W)).astype(jnp.int32)
    row_Bx1x1 = jax.random.randint(k_row, (B, 1, 1), 0, H - s + 1)
    col_Bx1x1 = jax.random.randint(k_col, (B, 1, 1), 0, W - s + 1)
    window_BxHxW = ((rows_1xHx1 >= row_Bx1x1) & (rows_1xHx1 < row_Bx1x1 + s) &
                    (cols_1x1xW >= col_Bx1x1) & (cols_1x1xW < col_Bx1x1 + s))
    sign_Bx1x1xC = jax.random.rademacher(k_sign, (B, 1, 1, C), x.dtype)
    x_new = jnp.where(window_BxHxW[..., None], jnp.clip(x + eps * sign_Bx1x1xC, 0., 1.),
                      best.x)
    loss_new, fooled_new = evaluate(x_new)
    accept_B = ~best.success & (loss_new > best.loss)
    return attacks._Best(jnp.where(_per_example(accept_B, x), x_new, best.x),
                         jnp.where(accept_B, loss_new, best.loss),
                         jnp.where(accept_B, fooled_new, best.success))

  best = lax.fori_loop(1, queries, query, best)
  x_adv = lax.stop_gradient(best.x)
  return x_adv, attacks.success(logits_fn, x_adv, labels)


# -- The ensemble ------------------------------------------------------------


def standard_attacks(steps: int = 100, queries: int = 5000) -> dict[str, Attack]:
  """AutoAttack-style L-inf ensemble: APGD-CE, APGD-DLR and Square, by name."""
  return {'apgd-ce': functools.partial(apgd, steps=steps, loss='ce'),
          'apgd-dlr': functools.partial(apgd, steps=steps, loss='dlr'),
          'square': functools.partial(square, queries=queries)}


def worst_case(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, key: jax.Array, eps,
               attacks: dict[str, Attack]) -> dict:
  """Runs every attack and reports the worst case per example (Croce & Hein 2020).

  Attack i gets key fold_in(key, i). Returns {'per_attack': {name: success_B},
  'success': bool [B], any attack succeeded, 'x_adv': per example the first
  successful attack's x_adv, or the last attack's if none succeeded}.
  """
  if not attacks:
    raise ValueError('worst_case needs at least one attack')
  results = {name: fn(logits_fn, x, labels, jax.random.fold_in(key, i), eps)
             for i, (name, fn) in enumerate(attacks.items())}
  per_attack = {name: s for name, (_, s) in results.items()}
  x_adv = None
  for x_i, success_B in reversed(list(results.values())):
    x_adv = x_i if x_adv is None else jnp.where(_per_example(success_B, x), x_i, x_adv)
  success_B = functools.reduce(jnp.logical_or, per_attack.values())
  return {'per_attack': per_attack, 'success': success_B, 'x_adv': x_adv}
