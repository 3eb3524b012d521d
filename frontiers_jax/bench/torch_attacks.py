"""A PyTorch twin of `frontiers_jax.adversarial.attacks.pgd` for the L-inf ball and CE loss.

PGD (Madry et al. 2018, eq. 2) ascends the per-example cross-entropy by signed
gradient steps and projects back after each:

  x_{t+1} = clip(x + clip(x_t + step_size * sign(g_t) - x, -eps, eps), 0, 1),

with g_t the gradient of the summed loss at x_t (each example's own, since
examples are independent). The JAX version is one restart of `attacks.pgd(...,
norm='linf', loss='ce')`; this twin repeats its every operation in the same
order, so that with the same model weights and the same start the iterates
agree to float32 rounding:

  start   x_0 = clip(x + clip((x + noise) - x, -eps, eps), 0, 1), where JAX
          draws noise ~ U[-eps, eps] from `fold_in(key, 0)`. The noise is an
          argument here, so both frameworks can be fed identical noise (or
          None: start at x, as `random_start=False`).
  result  per example the best candidate among the clean x, x_0, ..., x_steps:
          a fooling one first, then the highest loss (strictly higher replaces;
          ties keep the earlier), as `attacks._keep_best`.

For a benchmark, draw the noise in torch: `torch.empty_like(x).uniform_(-eps, eps)`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F


class _Best(NamedTuple):
  """Per example, the best candidate seen so far."""
  x: torch.Tensor        # [B, ...]
  loss: torch.Tensor     # [B]
  success: torch.Tensor  # [B] bool


def _to_ball_and_box(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
  """Projects x_adv onto the L-inf eps-ball around x, then onto [0, 1]."""
  return torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0., 1.)


def _evaluate(model: torch.nn.Module, x_adv: torch.Tensor, labels: torch.Tensor):
  """Per-example CE [B] and whether the model is fooled [B]."""
  logits = model(x_adv)
  return (F.cross_entropy(logits, labels, reduction='none'),
          logits.argmax(dim=-1) != labels)


def _keep_best(best: _Best, x_new: torch.Tensor, loss_new: torch.Tensor,
               success_new: torch.Tensor) -> _Best:
  """Success wins; among equal success, the strictly higher loss wins."""
  better = ((success_new & ~best.success) |
            ((success_new == best.success) & (loss_new > best.loss)))
  better_x = better.reshape(better.shape + (1,) * (x_new.dim() - 1))
  return _Best(torch.where(better_x, x_new, best.x),
               torch.where(better, loss_new, best.loss),
               torch.where(better, success_new, best.success))


def _loss_and_grad(model: torch.nn.Module, x_adv: torch.Tensor, labels: torch.Tensor):
  """(CE [B], fooled [B], d sum(CE) / d x_adv), leaving the weights' .grad alone."""
  x_adv = x_adv.detach().requires_grad_(True)
  with torch.enable_grad():
    loss, fooled = _evaluate(model, x_adv, labels)
    (grad,) = torch.autograd.grad(loss.sum(), x_adv)
  return loss.detach(), fooled, grad


def pgd_linf(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float,
             step_size: float, steps: int,
             start_noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
  """L-inf PGD on the cross-entropy from a given start (one restart).

  Args:
    model: images -> logits [B, K]; examples must not interact (no batch
      statistics), as in `attacks.pgd`.
    x: clean images in [0, 1], [B, ...] (NHWC for the CNN twin).
    labels: true classes, int [B].
    eps: radius of the L-inf ball.
    step_size: size of each signed-gradient step.
    steps: number of steps.
    start_noise: the random start's perturbation, shaped like x, drawn from
      U[-eps, eps] (it is projected, so any tensor works); None starts at x.

  Returns:
    x_adv: the best candidate per example (in the ball and in [0, 1]; detached).
    success: bool [B], whether the model misclassifies x_adv.
  """
  labels = labels.long()
  with torch.no_grad():
    best = _Best(x, *_evaluate(model, x, labels))
    x_adv = x if start_noise is None else _to_ball_and_box(x, x + start_noise, eps)
    for _ in range(steps):
      loss, fooled, grad = _loss_and_grad(model, x_adv, labels)
      best = _keep_best(best, x_adv, loss, fooled)
      x_adv = _to_ball_and_box(x, x_adv + step_size * torch.sign(grad), eps)
    best = _keep_best(best, x_adv, *_evaluate(model, x_adv, labels))
    return best.x.detach(), model(best.x).argmax(dim=-1) != labels
