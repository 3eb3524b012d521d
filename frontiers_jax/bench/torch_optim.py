"""A PyTorch twin of the project's optimizers (`frontiers_jax.training.optim`).

`make_optimizer(config.optim, num_steps)` builds an optax chain; this module
builds the torch objects that take the same steps, for the names `adam` and
`adamw`:

  clipping   optax.clip_by_global_norm(c)     torch.nn.utils.clip_grad_norm_
  optimizer  optax.adam / adamw(b2=...)       torch.optim.Adam / AdamW,
                                              betas (0.9, b2), eps 1e-8
  decay      mask: parameters with ndim >= 2  two parameter groups: weight
                                              decay for ndim >= 2, none else
  schedule   optax schedule of the count      LambdaLR with the same formula

Step counting. optax evaluates the schedule at the count of updates done so
far and increments it afterwards, so update k (from 0) uses lr(k). LambdaLR
sets lr(0) when it is built and lr(k + 1) at the k-th `scheduler.step()`,
which `torch_step` calls after `optimizer.step()`: update k uses lr(k) too.
The schedules (`learning_rate`) are the optax formulas in float64:

  constant       lr(k) = peak
  cosine         lr(k) = peak ((1 - a) (1 + cos(pi min(k, N) / N)) / 2 + a),
                 a = final / peak, N = num_steps
  warmup_cosine  lr(k) = peak k / W for k < W (W = max(warmup_steps, 1)), then
                 the cosine above over the N - W steps after the warm-up

Weight decay. optax's adamw adds wd * p to the Adam direction u before
scaling by -lr, so p <- p - lr (u + wd p); torch's AdamW first shrinks
p <- p (1 - lr wd) and then subtracts lr u. Both read the same p (before the
step), so the two updates are the same expression, not merely equal to first
order in lr wd: they differ only by float32 rounding, which the two orders
of operations do differently. Measured on fixed random gradients: decayed
matrices of size ~1 agree to 3e-6 relative after 50 steps at lr 1e-3, wd 0.1
(within 1e-6 relative after 6 steps, the tolerance of the tests), undecayed
vectors to 1e-7. Adam's moments and bias corrections agree term for term
(optax's eps_root is 0, and eps is added outside the square root in both).

Clipping differs by a hair: optax scales the gradients by c / norm when
norm >= c, torch by min(c / (norm + 1e-6), 1). The relative difference,
1e-6 / norm, is below float32 resolution for norms above about 20, and
Adam's update is nearly invariant to a common scale of the gradients anyway.
"""

import math
from typing import Callable, Iterable, NamedTuple, Optional

import ml_collections
import torch

TWINNED = ('adam', 'adamw')
EPS = 1e-8  # optax.adam's and torch.optim.Adam's default


class TorchOptimizer(NamedTuple):
  """What `torch_step` needs: `torch_step(model, *made, loss)`."""
  optimizer: torch.optim.Optimizer
  scheduler: torch.optim.lr_scheduler.LambdaLR
  clip_norm: float


def cosine(peak: float, final: float, decay_steps: int) -> Callable[[int], float]:
  """optax.cosine_decay_schedule(peak, decay_steps, alpha=final / peak)."""
  if decay_steps <= 0:
    raise ValueError(f'a cosine schedule needs decay_steps > 0, not {decay_steps}')
  alpha = 0.0 if peak == 0.0 else final / peak

  def schedule(step: int) -> float:
    fraction = min(step, decay_steps) / decay_steps
    return peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * fraction)) + alpha)
  return schedule


def learning_rate(c: ml_collections.ConfigDict, num_steps: int) -> Callable[[int], float]:
  """The learning rate of update `step` (from 0), as `optim.learning_rate_schedule`."""
  peak = float(c.learning_rate)
  if c.schedule == 'constant':
    return lambda step: peak
  if c.schedule == 'cosine':
    return cosine(peak, float(c.final_learning_rate), num_steps)
  warmup = max(c.warmup_steps, 1)
  decay = cosine(peak, float(c.final_learning_rate), num_steps - warmup)
  return lambda step: peak * step / warmup if step < warmup else decay(step - warmup)


def param_groups(c: ml_collections.ConfigDict,
                 named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> list[dict]:
  """adamw: matrices and embeddings (ndim >= 2) decay, biases and scales do not
  (`optim.matrices_only`); adam: one group."""
  params = [p for _, p in named_params]
  if c.name == 'adam':
    return [{'params': params}]
  return [{'params': [p for p in params if p.ndim >= 2], 'weight_decay': c.weight_decay},
          {'params': [p for p in params if p.ndim < 2], 'weight_decay': 0.0}]


def make_torch_optimizer(c: ml_collections.ConfigDict,
                         named_params: Iterable[tuple[str, torch.nn.Parameter]],
                         num_steps: int) -> TorchOptimizer:
  """The torch twin of `make_optimizer(c, num_steps)`.

  Args:
    c: `config.optim` (see `frontiers_jax.config.base_config`); name adam or adamw.
    named_params: `model.named_parameters()`.
    num_steps: the length of the run (the schedules decay over it).

  Returns:
    (optimizer, scheduler, clip_norm) as a `TorchOptimizer`.

  Raises:
    ValueError: for another optimizer name, or a schedule optax would refuse.
  """
  if c.name not in TWINNED:
    raise ValueError(f'no torch twin of optimizer {c.name!r}; '
                     f'twinned are {", ".join(TWINNED)}')
  if c.schedule not in ('constant', 'cosine', 'warmup_cosine'):
    raise ValueError(f'unknown schedule {c.schedule!r}')
  schedule = learning_rate(c, num_steps)
  peak = float(c.learning_rate)
  kind = torch.optim.Adam if c.name == 'adam' else torch.optim.AdamW
  optimizer = kind(param_groups(c, named_params), lr=peak, betas=(0.9, c.b2), eps=EPS)
  # LambdaLR multiplies the initial lr (peak) by the lambda of the step.
  multiplier = lambda step: schedule(step) / peak if peak else 0.0
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
  return TorchOptimizer(optimizer, scheduler, float(c.clip_norm or 0.0))


def torch_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LambdaLR, clip_norm: float,
               loss: torch.Tensor) -> Optional[torch.Tensor]:
  """One update from `loss`: backward, clip (when clip_norm > 0), step, advance
  the schedule, clear the gradients.

  Returns:
    The global gradient norm before clipping (a tensor, not synchronised), or
    None without clipping.
  """
  loss.backward()
  norm = None
  if clip_norm > 0:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
  optimizer.step()
  scheduler.step()
  optimizer.zero_grad(set_to_none=True)
  return norm
