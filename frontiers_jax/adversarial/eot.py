"""Expectation over Transformation (EOT): adversarial examples that survive
random physical changes (Athalye et al. 2018, "Synthesizing robust
adversarial examples", eq. 1-2; the 3-D-printed turtle read as a rifle).

Plain PGD maximizes the loss at one input; EOT maximizes the loss expected
over a distribution T of transformations t, within the same eps-ball:

  argmax_{x'}  E_{t ~ T} [ L(f(t(x')), y) ]   s.t.  ||x' - x|| <= eps,  x' in [0, 1]

with the gradient of the expectation estimated from a fresh Monte-Carlo
sample of transformations at every step. (The paper bounds or penalizes the
expected distance between the transformed images, eq. 1-2; here, as in PGD,
the bound is a hard eps-ball around x.)

A transformation here is a rotation, scaling and translation of the whole
image about its centre (bilinear resampling, zeros outside), then an additive
brightness change, then Gaussian pixel noise, then a clip to [0, 1]. Images
are NHWC float32 in [0, 1], any C. Conventions follow `attacks`: `logits_fn`
treats examples independently, labels are int32 [B] (targets when
`targeted`), outputs carry no gradient, steps iterate in `lax.fori_loop`.

Typical use under `jit` (`TransformRange` is a frozen, hashable dataclass):

  attack = jax.jit(eot.eot_pgd, static_argnames=(
      'logits_fn', 'num_samples', 'ranges', 'norm', 'loss', 'random_start',
      'targeted'))
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from frontiers_jax.adversarial import attacks
from frontiers_jax.adversarial.attacks import LogitsFn

# The names of the per-example transformation parameters; each is [count, B]
# from `sample_transforms` (or [B] for one transformation per example).
PARAMS = ('angle', 'scale', 'shift_y', 'shift_x', 'brightness', 'noise_std', 'noise_key')


@dataclasses.dataclass(frozen=True)
class TransformRange:
  """The distribution T: each parameter independent and uniform in its range."""
  max_rotation_deg: float = 15.0   # angle ~ U[-max, max] degrees
  max_translation: float = 0.1     # shift ~ U[-max, max] times H (rows) or W (columns)
  scale_range: tuple = (0.9, 1.1)  # scale ~ U[lo, hi]; > 1 enlarges the content
  brightness: float = 0.1          # added to every pixel, ~ U[-b, b]
  noise_std: float = 0.02          # std of i.i.d. Gaussian pixel noise


def sample_transforms(key: jax.Array, batch: int, count: int,
                      ranges: TransformRange = TransformRange()) -> dict[str, jax.Array]:
  """`count` independent transformations for each of `batch` examples.

  Returns a dict with the keys of `PARAMS`, each [count, batch]:
    angle:            radians; positive turns the content counter-clockwise as
                      displayed (row 0 on top), like `np.rot90`.
    scale:            > 1 enlarges the content about the image centre.
    shift_y, shift_x: fractions of H and W; positive moves the content down
                      and right.
    brightness:       added to every pixel.
    noise_std:        std of the pixel noise (the same for all, from `ranges`).
    noise_key:        a PRNG key per transformation, for its noise.
  """
  k_angle, k_scale, k_y, k_x, k_bright, k_noise = jax.random.split(key, 6)
  shape = (count, batch)
  max_angle = math.radians(ranges.max_rotation_deg)
  lo, hi = ranges.scale_range
  t = ranges.max_translation
  return {
      'angle': jax.random.uniform(k_angle, shape, minval=-max_angle, maxval=max_angle),
      'scale': jax.random.uniform(k_scale, shape, minval=lo, maxval=hi),
      'shift_y': jax.random.uniform(k_y, shape, minval=-t, maxval=t),
      'shift_x': jax.random.uniform(k_x, shape, minval=-t, maxval=t),
      'brightness': jax.random.uniform(k_bright, shape, minval=-ranges.brightness,
                                       maxval=ranges.brightness),
      'noise_std': jnp.full(shape, ranges.noise_std, jnp.float32),
      'noise_key': jax.random.split(k_noise, shape),
  }


def identity_transforms(batch: int, **overrides) -> dict[str, jax.Array]:
  """[batch] parameters of the identity, with any parameter set by keyword
  (a scalar, broadcast to the batch), e.g. `identity_transforms(4, angle=0.1)`.
  Noise, if asked for with `noise_std`, comes from a fixed key."""
  params = {'angle': 0., 'scale': 1., 'shift_y': 0., 'shift_x': 0., 'brightness': 0.,
            'noise_std': 0.}
  unknown = set(overrides) - set(params)
  if unknown:
    raise ValueError(f'unknown transformation parameters {sorted(unknown)}; use {PARAMS[:-1]}')
  params.update(overrides)
  params = {k: jnp.full((batch,), v, jnp.float32) for k, v in params.items()}
  params['noise_key'] = jax.random.split(jax.random.key(0), batch)
  return params


def _bilinear(x_HxWxC: jax.Array, row_HxW: jax.Array, col_HxW: jax.Array) -> jax.Array:
  """x sampled at fractional (row, col) positions; zero outside the image.

  The four neighbours are gathered and weighted; a neighbour outside the image
  counts as 0 (what `map_coordinates(order=1, mode='constant', cval=0)` does).
  Linear in x, so the gradient in x is exact (a scatter-add of the weights).
  """
  h, w, _ = x_HxWxC.shape
  row0, col0 = jnp.floor(row_HxW), jnp.floor(col_HxW)
  w_row, w_col = row_HxW - row0, col_HxW - col0
  row0, col0 = row0.astype(jnp.int32), col0.astype(jnp.int32)

  def tap(r, c):
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    v = x_HxWxC[jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1)]
    return jnp.where(inside[..., None], v, 0.)

  w_row, w_col = w_row[..., None], w_col[..., None]
  return ((1 - w_row) * ((1 - w_col) * tap(row0, col0) + w_col * tap(row0, col0 + 1)) +
          w_row * ((1 - w_col) * tap(row0 + 1, col0) + w_col * tap(row0 + 1, col0 + 1)))


def _transform_one(x_HxWxC: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  h, w, c = x_HxWxC.shape
  center_row, center_col = (h - 1) / 2, (w - 1) / 2
  # The forward map takes input position s to q = centre + shift + scale R (s - centre),
  # R the rotation by `angle`; each output pixel q samples s = its inverse at q.
  u = jnp.arange(h, dtype=jnp.float32)[:, None] - center_row - p['shift_y'] * h
  v = jnp.arange(w, dtype=jnp.float32)[None, :] - center_col - p['shift_x'] * w
  cos, sin = jnp.cos(p['angle']), jnp.sin(p['angle'])
  row_HxW = (cos * u + sin * v) / p['scale'] + center_row
  col_HxW = (cos * v - sin * u) / p['scale'] + center_col
  y = _bilinear(x_HxWxC, row_HxW, col_HxW) + p['brightness']
  y = y + p['noise_std'] * jax.random.normal(p['noise_key'], (h, w, c), y.dtype)
  return jnp.clip(y, 0., 1.).astype(x_HxWxC.dtype)


def apply_transform(x_BxHxWxC: jax.Array, params_B: dict[str, jax.Array]) -> jax.Array:
  """Transforms each example by its own parameters (see `sample_transforms`).

  In order: rotation and scaling about the image centre and translation, as one
  affine map, sampled bilinearly with zeros outside the image; then + brightness;
  then + noise_std * N(0, 1) per pixel; then a clip to [0, 1]. The identity
  parameters return x exactly (for x in [0, 1]). Differentiable in x (almost
  everywhere: the clip), jittable and vmappable (e.g. over a `count` axis).

  Args:
    x_BxHxWxC: images, NHWC, float.
    params_B: the keys of `PARAMS`, each [B].

  Returns:
    The transformed images, same shape and dtype as x.
  """
  return jax.vmap(_transform_one)(x_BxHxWxC, params_B)


def _loss_under(logits_fn: LogitsFn, x_adv, labels, params_B, loss: str, targeted: bool):
  return attacks.attack_loss(logits_fn(apply_transform(x_adv, params_B)), labels, loss,
                             targeted)


def eot_pgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, key: jax.Array, eps,
            step_size, steps, num_samples: int = 16,
            ranges: TransformRange = TransformRange(), norm: str = 'linf',
            loss: str = 'ce', random_start: bool = True,
            targeted: bool = False) -> jax.Array:
  """PGD on the expected attack loss over random transformations (EOT).

  Step i draws `num_samples` fresh transformations per example from
  `fold_in(key_steps, i)`, averages `attacks.attack_loss` over them (a vmap
  over the sample axis), and takes a PGD step on that average: linf
  x <- P(x + step_size * sign(g)), l2 x <- P(x + step_size * g / ||g||_2),
  with P the projection onto the eps-ball around x and then [0, 1]. The random
  start uses another key split from `key` (`attacks.random_start`).

  Returns the *last* iterate, not the best one: each step's loss estimate uses
  different transformations, so the iterate with the highest estimate is
  largely the one whose sample was luckiest (a winner's curse); ranking the
  iterates fairly would need a fixed evaluation sample and extra forward
  passes. `eps = 0` returns x.

  Args:
    logits_fn: x -> logits [B, K]; examples independent.
    x: images NHWC in [0, 1].
    labels: int [B]; targets when `targeted`.
    key: PRNG key; the same key gives the same result.
    eps, step_size, steps: may be traced.
    num_samples: transformations per step (static).
    ranges: the transformation distribution (static; hashable).
    norm, loss, targeted: as in `attacks.pgd`.

  Returns:
    x_adv: same shape as x, in the eps-ball and [0, 1], without gradient.
  """
  attacks._check(loss, norm)
  key_start, key_steps = jax.random.split(key)

  def expected_loss(x_adv, step):
    params_NxB = sample_transforms(jax.random.fold_in(key_steps, step), x.shape[0],
                                   num_samples, ranges)
    loss_NxB = jax.vmap(lambda p: _loss_under(logits_fn, x_adv, labels, p, loss,
                                              targeted))(params_NxB)
    # Athalye et al. 2018, eq. 1: the Monte-Carlo estimate of E_t[L(t(x'))].
    return jnp.sum(jnp.mean(loss_NxB, axis=0))

  def step(i, x_adv):
    grad = jax.grad(expected_loss)(x_adv, i)
    direction = jnp.sign(grad) if norm == 'linf' else attacks._unit_l2(grad)
    return attacks._to_ball_and_box(x, x_adv + step_size * direction, eps, norm)

  x_adv = attacks.random_start(key_start, x, eps, norm) if random_start else x
  return lax.stop_gradient(lax.fori_loop(0, steps, step, x_adv))


def success_under_transforms(logits_fn: LogitsFn, x_adv: jax.Array, labels: jax.Array,
                             key: jax.Array, num_samples: int = 100,
                             ranges: TransformRange = TransformRange(),
                             targeted: bool = False, chunk: int = 25) -> jax.Array:
  """float [B]: the fraction of `num_samples` fresh random transformations
  under which x_adv still fools the model (misclassified, or the target when
  `targeted`). Transformations are evaluated `chunk` at a time (`lax.map`) to
  bound memory. Use a key the attack never saw."""
  params_NxB = sample_transforms(key, x_adv.shape[0], num_samples, ranges)

  def fooled(params_B):
    logits_BxK = logits_fn(apply_transform(x_adv, params_B))
    hit_B = jnp.argmax(logits_BxK, axis=-1) == labels
    return hit_B if targeted else ~hit_B

  fooled_NxB = lax.map(fooled, params_NxB, batch_size=min(chunk, num_samples))
  return jnp.mean(fooled_NxB.astype(jnp.float32), axis=0)


def compare_eot_vs_pgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                       key: jax.Array, eps, steps, step_size=None, num_samples: int = 16,
                       eval_samples: int = 100, ranges: TransformRange = TransformRange(),
                       norm: str = 'linf', loss: str = 'ce') -> dict[str, jax.Array]:
  """Plain PGD vs EOT-PGD at the same budget, judged under fresh transformations.

  Both attacks are untargeted, with random starts, `steps` steps of
  `step_size` (default 2.5 eps / steps, a common rule of thumb). `pgd` keeps
  its best iterate, `eot_pgd` its last. All three inputs
  are judged under the same `eval_samples` transformations, from a key split
  off `key` that neither attack uses (a paired comparison).

  Returns scalars (means over the batch):
    survival_clean: fraction of transformations under which the clean x is
                    misclassified (the baseline);
    survival_pgd, survival_eot: the same for each attack's x_adv;
    success_pgd, success_eot: fraction fooled with no transformation.
  """
  if step_size is None:
    step_size = 2.5 * eps / steps
  k_pgd, k_eot, k_eval = jax.random.split(key, 3)
  x_pgd, success_pgd_B = attacks.pgd(logits_fn, x, labels, k_pgd, eps, step_size, steps,
                                     norm=norm, loss=loss)
  x_eot = eot_pgd(logits_fn, x, labels, k_eot, eps, step_size, steps, num_samples, ranges,
                  norm, loss)

  # One evaluation program for the three inputs, under the same transformations.
  survival_3xB = jax.vmap(lambda x_in: success_under_transforms(
      logits_fn, x_in, labels, k_eval, eval_samples, ranges))(jnp.stack([x, x_pgd, x_eot]))
  survival_clean, survival_pgd, survival_eot = jnp.mean(survival_3xB, axis=1)
  return {
      'survival_clean': survival_clean,
      'survival_pgd': survival_pgd,
      'survival_eot': survival_eot,
      'success_pgd': jnp.mean(success_pgd_B.astype(jnp.float32)),
      'success_eot': jnp.mean(attacks.success(logits_fn, x_eot, labels).astype(jnp.float32)),
  }
