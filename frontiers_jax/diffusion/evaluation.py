"""Evaluating a diffusion model: a Frechet distance and the bound in bits/dim.

Frechet distance (Heusel et al. 2017, "GANs trained by a two time-scale update
rule", section 3): fit a Gaussian to the features of each image set and take

  d^2 = |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^{1/2}),

the squared 2-Wasserstein distance between the two Gaussians. The features
here come from the project's own classifier (models.SmallCNN or MLP), not
Inception, so the numbers are comparable only with each other ("FID" below
means this classifier-feature distance).

Bits/dim: the negative variational bound of Ho et al. 2020, eq. 5,

  L = L_T + sum_{t > 1} L_{t-1} + L_0,

summed exactly over all T steps (one scan over t), per example.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from frontiers_jax.diffusion import process

PredFn = Callable[[jax.Array, jax.Array], jax.Array]


# -- Frechet distance --------------------------------------------------------


def gaussian_stats(feats_NxD) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] (divided by N - 1), float64."""
  feats_NxD = np.asarray(feats_NxD, np.float64)
  mu_D = feats_NxD.mean(axis=0)
  centered_NxD = feats_NxD - mu_D
  return mu_D, centered_NxD.T @ centered_NxD / (feats_NxD.shape[0] - 1)


def _psd_sqrt(cov_DxD: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root, from the eigendecomposition."""
  w_D, v_DxD = scipy.linalg.eigh(cov_DxD)
  return (v_DxD * np.sqrt(np.clip(w_D, 0.0, None))) @ v_DxD.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2}) in float64.

  tr (C_1 C_2)^{1/2} is the sum of the square roots of the eigenvalues of
  C_1 C_2. Those are the eigenvalues of S C_2 S with S = C_1^{1/2} (AB and BA
  have the same eigenvalues; take A = S, B = S C_2), and S C_2 S is symmetric
  PSD, so `eigvalsh` gives them real; rounding can make tiny ones negative,
  which are clipped to 0. This avoids `scipy.linalg.sqrtm` of the
  non-symmetric C_1 C_2, whose output can be complex or inaccurate when the
  covariances are near singular (few samples, many features). The distance is
  a squared Wasserstein distance, so a rounding-level negative result is
  returned as 0.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  sqrt1 = _psd_sqrt(cov1)
  middle = sqrt1 @ cov2 @ sqrt1
  eigs = scipy.linalg.eigvalsh((middle + middle.T) / 2)
  tr_sqrt = np.sum(np.sqrt(np.clip(eigs, 0.0, None)))
  d2 = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt
  return max(float(d2), 0.0)


def fid_from_features(feats_a, feats_b) -> float:
  return frechet_distance(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# -- Classifier features -----------------------------------------------------


def _dense_outputs(intermediates) -> list:
  """Outputs of every captured nn.Dense, in call order (dicts keep the order
  in which flax sowed them)."""
  outs = []
  for name, value in intermediates.items():
    if name == '__call__':
      outs.append(value[0])
    else:
      outs.extend(_dense_outputs(value))
  return outs


@functools.partial(jax.jit, static_argnames='model')
def _penultimate(model: nn.Module, params, x_BxHxWxC: jax.Array) -> jax.Array:
  """relu of the last-but-one Dense's output: the input to the readout."""
  _, state = model.apply({'params': params}, x_BxHxWxC,
                         capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dense))
  dense_outs = _dense_outputs(state['intermediates'])
  if len(dense_outs) < 2:
    raise ValueError(f'{type(model).__name__} has no Dense layer before its readout')
  return nn.relu(dense_outs[-2])


def classifier_features(model: nn.Module, params, images_NxHxWxC,
                        batch_size: int = 1000) -> np.ndarray:
  """Penultimate activations [N, D] (float64) of a classifier whose readout
  is its last nn.Dense, with a ReLU before it (models.MLP, models.SmallCNN).

  Images are in [0, 1]. Batches have one shape (the last one is padded and
  the padding dropped), so the feature function compiles once.
  """
  images_NxHxWxC = np.asarray(images_NxHxWxC, np.float32)
  n = images_NxHxWxC.shape[0]
  batch_size = min(batch_size, n)
  feats = []
  for start in range(0, n, batch_size):
    x_BxHxWxC = images_NxHxWxC[start:start + batch_size]
    real = x_BxHxWxC.shape[0]
    if real < batch_size:
      pad = np.zeros((batch_size - real,) + x_BxHxWxC.shape[1:], np.float32)
      x_BxHxWxC = np.concatenate([x_BxHxWxC, pad])
    feats.append(np.asarray(_penultimate(model, params, x_BxHxWxC))[:real])
  return np.concatenate(feats).astype(np.float64)


# -- The bound in bits/dim ---------------------------------------------------


def nelbo_bpd(pred_fn: PredFn, sched: process.Schedule, objective: str,
              x0_BxHxWxC: jax.Array, key: jax.Array, variance: str = 'large') -> jax.Array:
  """The negative ELBO per example [B], bits/dim (Ho et al. 2020, eq. 5).

  L_T + sum_{t=2}^T L_{t-1} + L_0, every term computed (no sampling of t),
  each at its own x_t ~ q(x_t | x_0) drawn with fold_in(key, position). The
  sum over positions is one `lax.scan`, so the traced program does not grow
  with T. `pred_fn(x_t, t_B)` returns the network's output for `objective`.
  """
  b = x0_BxHxWxC.shape[0]

  def step(total_B, t):
    t_B = jnp.full((b,), t)
    eps = jax.random.normal(jax.random.fold_in(key, t), x0_BxHxWxC.shape,
                            x0_BxHxWxC.dtype)
    xt = process.q_sample(sched, x0_BxHxWxC, t_B, eps)
    term_B = process.term_bpd(sched, objective, x0_BxHxWxC, xt, t_B,
                              pred_fn(xt, t_B), variance)
    return total_B + term_B, None

  prior_B = process.prior_bpd(sched, x0_BxHxWxC)
  total_B, _ = jax.lax.scan(step, prior_B, jnp.arange(sched.num_steps))
  return total_B
