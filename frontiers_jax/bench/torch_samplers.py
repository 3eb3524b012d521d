"""A PyTorch twin of the DDIM sampler (`frontiers_jax.diffusion.samplers.ddim`).

DDIM (Song et al. 2021, eq. 12) walks down S positions t_1 > ... > t_S of the
T-step schedule, np.linspace(T - 1, 0, S) rounded (both ends included). At
position t with abar = abar_t and abar_prev that of the next position (1 after
the last one) a step is

  x0    = the model's x_0 at (x, t), clipped to [-1, 1]
  eps   = (x - sqrt(abar) x0) / sqrt(1 - abar)          (recomputed from x0)
  sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)
  x     <- sqrt(abar_prev) x0 + sqrt(max(1 - abar_prev - sigma^2, 0)) eps + sigma z

and the samples are the last x clipped to [-1, 1]. With eta = 0 the walk is
deterministic given the start x_T; with eta > 0 the twin takes the per-step
noise z as an argument, since torch cannot draw JAX's random numbers (the JAX
sampler draws step s's z from `fold_in(key_steps, s)`).

Classifier-free guidance (Ho & Salimans 2022) is done as the JAX code does it:
with labels and a scale other than the number 1, one batched call on
[x; x] with labels [labels; null] gives cond and uncond, and the prediction is
uncond + scale (cond - uncond); scale 1 runs the conditional half only, and
no labels means the unconditional model. The prediction is read as the
objective says (eps, x0 or v), as `process.to_x0_eps` does.

All constants are float32 tensors computed with the same float32 operations as
the JAX sampler, from the same abar table, so the two walks differ only by the
models' rounding (about 1e-6 per step on the tiny UNet).
"""

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from frontiers_jax.diffusion import samplers
from frontiers_jax.bench.torch_unet import alpha_bars_of

ModelFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def positions(num_timesteps: int, num_steps: int) -> np.ndarray:
  """The S positions visited, from T - 1 down to 0 (the JAX samplers' own)."""
  return samplers.timestep_positions(num_timesteps, num_steps).astype(np.int64)


def guided(model_fn: ModelFn, labels_B: Optional[torch.Tensor], null_label: Optional[int],
           scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """fn(x, t_B) -> prediction with classifier-free guidance (`samplers.guided`)."""
  if labels_B is None:
    return lambda x, t_B: model_fn(x, t_B, None)
  labels_B = torch.as_tensor(labels_B).long()
  if isinstance(scale, (int, float)) and scale == 1:
    return lambda x, t_B: model_fn(x, t_B, labels_B)
  if null_label is None:
    raise ValueError(f'guidance scale {scale} needs a null_label for the unconditional model')
  null_B = torch.full_like(labels_B, null_label)

  def fn(x_BxHxWxC: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
    b = x_BxHxWxC.shape[0]
    pred = model_fn(torch.cat([x_BxHxWxC, x_BxHxWxC]), torch.cat([t_B, t_B]),
                    torch.cat([labels_B.to(x_BxHxWxC.device), null_B.to(x_BxHxWxC.device)]))
    cond, uncond = pred[:b], pred[b:]
    return uncond + scale * (cond - uncond)

  return fn


def to_x0_eps(objective: str, xt: torch.Tensor, abar: torch.Tensor,
              prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """(x0 clipped to [-1, 1], eps recomputed from it), as `process.to_x0_eps`
  with clip_x0=True; abar is a scalar tensor."""
  if objective == 'eps':
    x0 = (xt - torch.sqrt(1.0 - abar) * prediction) / torch.sqrt(abar)
  elif objective == 'x0':
    x0 = prediction
  elif objective == 'v':
    x0 = torch.sqrt(abar) * xt - torch.sqrt(1.0 - abar) * prediction
  else:
    raise ValueError(f"objective must be one of ('eps', 'x0', 'v'), got {objective!r}")
  x0 = torch.clip(x0, -1.0, 1.0)
  return x0, (xt - torch.sqrt(abar) * x0) / torch.sqrt(1.0 - abar)


@torch.no_grad()
def ddim(torch_model: ModelFn, schedule_arrays: Any, x_T: torch.Tensor, num_steps: int,
         labels: Optional[torch.Tensor] = None, guidance: float = 1.0, eta: float = 0.0,
         *, objective: str = 'eps', null_label: Optional[int] = None,
         noise: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
  """DDIM samples in [-1, 1] from the start x_T, as `samplers.ddim`.

  Args:
    torch_model: the twin (put it in eval mode), or any fn(x, t_B, labels) -> prediction.
    schedule_arrays: the schedule (`torch_unet.alpha_bars_of`: a `process.Schedule`,
      a mapping with 'alpha_bars', or abar [T] itself).
    x_T: the start [B, H, W, C], standard normal (JAX: `normal(split(key)[0], shape)`).
    num_steps: S, the number of model evaluations (times 2 with guidance).
    labels: [B] class labels, or None for the unconditional model.
    guidance: the classifier-free guidance scale (1: conditional, 0: unconditional).
    eta: 0 for DDIM proper; 1 over all T steps is DDPM with the 'small' variance.
    objective: what the model predicts: 'eps', 'x0' or 'v'.
    null_label: the unconditional label; default `torch_model.num_classes`.
    noise: with eta > 0, the S draws z [B, H, W, C] (JAX: step s draws
      `normal(fold_in(split(key)[1], s), shape)`).

  Returns:
    The samples, clipped to [-1, 1], [B, H, W, C].
  """
  if null_label is None:
    null_label = getattr(torch_model, 'num_classes', None)
  fn = guided(torch_model, labels, null_label, guidance)
  alpha_bars_T = alpha_bars_of(schedule_arrays).to(x_T.device, x_T.dtype)
  t_S = positions(alpha_bars_T.shape[0], num_steps)
  abar_S = alpha_bars_T[torch.from_numpy(t_S)]
  abar_prev_S = torch.cat([abar_S[1:], torch.ones_like(abar_S[:1])])
  sigma_S = (eta * torch.sqrt((1.0 - abar_prev_S) / (1.0 - abar_S))
             * torch.sqrt(1.0 - abar_S / abar_prev_S))
  noiseless = isinstance(eta, (int, float)) and eta == 0
  if not noiseless and (noise is None or len(noise) != num_steps):
    raise ValueError(f'eta={eta} needs noise: {num_steps} draws shaped like x_T')
  x = x_T
  for s, t in enumerate(t_S.tolist()):
    t_B = torch.full(x.shape[:1], t, dtype=torch.long, device=x.device)
    x0, eps = to_x0_eps(objective, x, abar_S[s], fn(x, t_B))
    direction = torch.sqrt(torch.clamp(1.0 - abar_prev_S[s] - sigma_S[s] ** 2, min=0.0))
    x = torch.sqrt(abar_prev_S[s]) * x0 + direction * eps
    if not noiseless:
      x = x + sigma_S[s] * torch.as_tensor(noise[s], device=x.device)
  return torch.clip(x, -1.0, 1.0)
