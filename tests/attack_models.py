"""Models shared by the attack tests: fast-compiling jit and a linear problem."""

import functools

import jax
import jax.numpy as jnp

# What `jax_disable_most_optimizations` sets, for these test programs only.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
D = 16


@functools.partial(jax.jit, static_argnames='batch', compiler_options=FAST_COMPILE)
def linear_problem(seed, batch):
  """A binary linear model m(x) = w.x + b and inputs in [0.3, 0.7]."""
  k_w, k_x = jax.random.split(jax.random.key(seed))
  w_D = jax.random.normal(k_w, (D,))
  x_BxD = jax.random.uniform(k_x, (batch, D), minval=0.3, maxval=0.7)
  return w_D, -0.5 * jnp.sum(w_D), x_BxD  # b centers the margins near 0


def linear_logits(w_D, b, x_BxD):
  """Binary logits [0, m(x)]."""
  m_B = x_BxD @ w_D + b
  return jnp.stack([jnp.zeros_like(m_B), m_B], axis=-1)
