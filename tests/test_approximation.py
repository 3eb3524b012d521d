"""Universal approximation: the width bank and the falling error."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frontiers_jax import runs
from frontiers_jax.workloads import approximation as approx
from conftest import load


@pytest.mark.parametrize('target', list(approx.TARGETS))
def test_dataset_shapes_and_values(target):
  dim, f = approx.TARGETS[target]
  data = approx.make_dataset(target, num_train=100, grid=11, seed=0)
  chex.assert_shape(data['train']['x'], (100, dim))
  chex.assert_shape(data['test']['x'], (11 ** dim, dim))
  assert np.all(np.abs(data['train']['x']) <= 1)
  np.testing.assert_allclose(data['test']['y'], f(data['test']['x'].astype(np.float64)),
                             rtol=1e-6, atol=1e-6)


class BankTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_bank_gradient_is_each_members_own_gradient(self):
    """Summing the members' losses trains each width as if alone."""
    widths = (1, 3, 8)
    bank = approx.WidthBank(widths)
    x = jax.random.uniform(jax.random.key(0), (32, 1), minval=-1, maxval=1)
    y = jnp.sin(3 * x[:, 0])
    params = bank.init(jax.random.key(1), x)['params']

    def bank_loss(p):
      return ((bank.apply({'params': p}, x) - y) ** 2).mean(axis=1).sum()

    grads = self.variant(jax.grad(bank_loss))(params)
    for w in widths:
      member = approx.OneHiddenLayer(w)
      def own_loss(p, member=member):
        return ((member.apply({'params': p}, x) - y) ** 2).mean()
      own = jax.grad(own_loss)(params[f'width_{w}'])
      chex.assert_trees_all_close(grads[f'width_{w}'], own, rtol=1e-6, atol=1e-7)

  def test_bank_output_shape_and_parameter_count(self):
    bank = approx.WidthBank((2, 5))
    x = jnp.zeros((7, 2))
    params = bank.init(jax.random.key(0), x)['params']
    chex.assert_shape(bank.apply({'params': params}, x), (2, 7))
    # width w on 2-D input: 2w + w (hidden) + w + 1 (readout)
    assert sum(p.size for p in jax.tree.leaves(params)) == (4 * 2 + 1) + (4 * 5 + 1)


def test_hidden_breakpoints_spread_over_the_domain():
  params = approx.OneHiddenLayer(4096).init(jax.random.key(0), jnp.zeros((1, 1)))
  hidden = params['params']
  kinks = -hidden['bias'] / hidden['kernel'][0]
  # Uniform on [-1, 1]: zero biases would put every kink at 0.
  assert np.all(np.abs(kinks) <= 1 + 1e-6)
  np.testing.assert_allclose(np.histogram(kinks, bins=4, range=(-1, 1))[0] / 4096,
                             0.25, atol=0.03)


def test_error_falls_with_width(tmp_path):
  config = load('approximation.py:tiny', widths='(1,8,64)', num_steps=1000,
                log_every=500, eval_every=1000, checkpoint_every=1000, batch_size=128,
                num_train=512, grid=201, **{'optim.learning_rate': 1e-2})
  summary = runs.train(config, str(tmp_path / 'run'))
  errors = [summary['final'][f'eval/{approx.width_key(w)}'] for w in (1, 8, 64)]
  assert errors[0] > 3 * errors[1] > 3 * 3 * errors[2], errors
