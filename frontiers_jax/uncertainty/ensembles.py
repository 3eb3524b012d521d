"""Sampling-based uncertainty: deep ensembles and MC dropout, as functions of
functions (any `init`/`apply` pair, flax or not).

Deep ensembles (Lakshminarayanan et al. 2017): M networks from M random
initializations, trained independently; their disagreement is the epistemic
uncertainty. Here the M parameter trees are stacked on a leading member axis,
so one `jax.vmap` trains them all in one step:

  params_M = init_ensemble(model.init, key, M, x_example)
  logits_MxBxK = ensemble_apply(model.apply, params_M, x_BxD)
  # a step of (params, opt_state, batch) -> (params, opt_state, loss) trains
  # all members at once as jax.vmap(step, in_axes=(0, 0, None)).

MC dropout (Gal & Ghahramani 2016): keep dropout on at test time and average
T stochastic passes; each pass is a sample from an approximate posterior.

The sample axis (M or T) comes first, as `metrics.sample_uncertainty` expects.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp


def _member_keys(key: jax.Array, num: int) -> jax.Array:
  """Key i is fold_in(key, i): the same whether drawn here or one at a time."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num))


def init_ensemble(init_fn: Callable[[jax.Array, Any], Any], key: jax.Array,
                  num_members: int, example: Any) -> Any:
  """M parameter trees stacked on a leading axis: member m is
  `init_fn(jax.random.fold_in(key, m), example)` (e.g. `model.init`)."""
  return jax.vmap(init_fn, in_axes=(0, None))(_member_keys(key, num_members), example)


def ensemble_apply(apply_fn: Callable[..., Any], stacked_params: Any, x: Any,
                   **kwargs) -> Any:
  """Every member's output on the same input, stacked on a leading member axis:
  output m is `apply_fn(member m's params, x, **kwargs)`."""
  return jax.vmap(lambda params: apply_fn(params, x, **kwargs))(stacked_params)


def mc_dropout_samples(apply_fn: Callable[..., Any], params: Any, x: Any, key: jax.Array,
                       num_samples: int, chunk_size: int | None = None) -> Any:
  """T = num_samples stochastic passes stacked on a leading axis.

  Pass i is `apply_fn(params, x, rngs={'dropout': jax.random.fold_in(key, i)})`,
  so `apply_fn` must run the model with dropout on, e.g.
  `functools.partial(model.apply, train=True)` for a flax module whose dropout
  is `nn.Dropout(rate, deterministic=not train)`. With `chunk_size=None` all
  passes run at once under `jax.vmap` (T times the activation memory);
  otherwise `jax.lax.map` runs them `chunk_size` at a time.
  """
  one_pass = lambda k: apply_fn(params, x, rngs={'dropout': k})
  keys = _member_keys(key, num_samples)
  if chunk_size is None:
    return jax.vmap(one_pass)(keys)
  return jax.lax.map(one_pass, keys, batch_size=chunk_size)


# --- The mean-variance regression head (Lakshminarayanan et al. 2017) --------

VARIANCE_FLOOR = 1e-6


def gaussian_head(raw_x2: jax.Array, floor: float = VARIANCE_FLOOR) -> tuple[jax.Array,
                                                                             jax.Array]:
  """Raw outputs [..., 2] -> (mean, variance), each [...]: the variance is
  softplus of its raw output plus `floor` (Lakshminarayanan et al. 2017,
  section 2.2.1), so it is positive and a huge negative raw value gives the
  floor, not zero."""
  return raw_x2[..., 0], jax.nn.softplus(raw_x2[..., 1]) + floor


def gaussian_nll(mean: jax.Array, variance: jax.Array, y: jax.Array) -> jax.Array:
  """-log N(y; mean, variance), [...] (Lakshminarayanan et al. 2017, eq. 1,
  with the constant 1/2 log 2 pi): a proper scoring rule, so the variance
  head learns the noise level (the aleatoric part)."""
  return 0.5 * (jnp.log(2 * jnp.pi * variance) + (y - mean)**2 / variance)


def mixture_moments(mean_Sx: jax.Array, variance_Sx: jax.Array) -> tuple[jax.Array,
                                                                           jax.Array,
                                                                           jax.Array]:
  """(mean, aleatoric, epistemic), each [...], of the equally weighted mixture
  of S Gaussians (ensemble members or MC-dropout passes; sample axis first):
  the mixture's mean, the mean of the variances (the noise each sample
  predicts) and the variance of the means (their disagreement). Aleatoric
  plus epistemic is the mixture's variance (law of total variance)."""
  mean = jnp.mean(mean_Sx, axis=0)
  return mean, jnp.mean(variance_Sx, axis=0), jnp.mean((mean_Sx - mean)**2, axis=0)
