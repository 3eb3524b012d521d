"""Mixed precision (`config.model.dtype`): bfloat16 compute with float32
parameters and optimizer state, for each workload's tiny config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frontiers_jax import workloads
from conftest import load

STEPS = 6
# The largest gap allowed between the bfloat16 and the float32 loss at each
# of the first STEPS steps, relative to the float32 loss. bfloat16 keeps 8
# bits of mantissa (a rounding error of up to 2^-9 = 0.2 % per value); the
# gaps measured here were at most 3.0e-4 (README "Sharding and precision").
RTOL = 3e-3
SPECS = ('generalization.py:tiny', 'adversarial.py:tiny', 'diffusion.py:tiny', 'lm.py:tiny')
OVERRIDES = {
    'generalization.py:tiny': {'model.name': 'cnn'},  # the MLP: see below
    # A one-level UNet (with attention) compiles in half the time; a larger
    # step moves it off its zero-initialized output within STEPS steps.
    'diffusion.py:tiny': {'model.channel_mults': (1,), 'model.attention_levels': (0,),
                          'optim.learning_rate': 1e-2},
}


@pytest.fixture(scope='module', autouse=True)
def _fast_compile(fast_compile):
  """Every test here runs with few XLA optimizations (conftest.fast_compile)."""


def _train(spec: str, dtype: str, **overrides):
  """STEPS train steps of the workload on one device: (state, losses, program text)."""
  config = load(spec, **{'model.dtype': dtype, **OVERRIDES.get(spec, {}), **overrides})
  workload = workloads.create(config)
  workload.validate()
  data = workload.load_data()
  batches = workload.train_batches(data, config.batch_size, config.seed)
  state = jax.jit(workload.create_state)(jax.random.key(config.seed), batches(0))
  step = jax.jit(workload.train_step)
  key = jax.random.key(1)
  program = step.lower(state, batches(0), key).as_text()
  losses = []
  for s in range(STEPS):
    state, metrics = step(state, batches(s), jax.random.fold_in(key, s))
    losses.append(float(metrics['loss']))
  return state, np.array(losses), program


@pytest.mark.parametrize('spec', SPECS)
def test_bfloat16_trains_close_to_float32(spec):
  f32_state, f32, f32_program = _train(spec, 'float32')
  bf16_state, bf16, bf16_program = _train(spec, 'bfloat16')
  assert np.all(np.isfinite(bf16)), bf16
  # The switch acts: the bfloat16 step multiplies in bfloat16, the float32 one never.
  assert 'bf16' in bf16_program and 'bf16' not in f32_program
  assert not np.array_equal(bf16, f32)
  np.testing.assert_allclose(bf16, f32, rtol=RTOL)
  # Master parameters and optimizer state stay float32.
  for tree in (bf16_state.params, bf16_state.opt_state):
    for leaf in jax.tree.leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32
  assert jax.tree.structure(bf16_state.params) == jax.tree.structure(f32_state.params)


def test_bfloat16_mlp_classifier():
  # The generalization default (an MLP) too: same check, fewer words.
  _, f32, _ = _train('generalization.py:tiny', 'float32', **{'model.name': 'mlp'})
  _, bf16, program = _train('generalization.py:tiny', 'bfloat16', **{'model.name': 'mlp'})
  assert 'bf16' in program
  np.testing.assert_allclose(bf16, f32, rtol=RTOL)
