"""Optimizers from config: name, learning-rate schedule, clipping."""

import jax
import ml_collections
import optax


def learning_rate_schedule(c: ml_collections.ConfigDict, num_steps: int):
  if c.schedule == 'constant':
    return optax.constant_schedule(c.learning_rate)
  if c.schedule == 'cosine':
    return optax.cosine_decay_schedule(c.learning_rate, num_steps,
                                       alpha=c.final_learning_rate / c.learning_rate)
  # warmup_cosine: linear warm-up from 0, then cosine decay to the floor.
  return optax.warmup_cosine_decay_schedule(
      0.0, c.learning_rate, max(c.warmup_steps, 1), num_steps,
      end_value=c.final_learning_rate)


def matrices_only(params):
  """The weight-decay mask: decay weight matrices and embeddings (ndim >= 2),
  never biases or normalization scales (as GPT-2, nanoGPT and MaxText do)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(c: ml_collections.ConfigDict,
                   num_steps: int) -> optax.GradientTransformation:
  """`c` is `config.optim` (see `frontiers_jax.config.base_config`)."""
  lr = learning_rate_schedule(c, num_steps)
  if c.name == 'adam':
    tx = optax.adam(lr, b2=c.b2)
  elif c.name == 'adamw':
    tx = optax.adamw(lr, b2=c.b2, weight_decay=c.weight_decay, mask=matrices_only)
  elif c.name == 'momentum':
    tx = optax.sgd(lr, momentum=c.momentum)
  else:
    tx = optax.sgd(lr)
  if c.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(c.clip_norm), tx)
  return tx
