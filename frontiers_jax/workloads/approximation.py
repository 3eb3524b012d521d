"""Universal approximation: one hidden layer fits any continuous function,
given enough width (Cybenko 1989; Hornik 1991; Leshno et al. 1993 for any
non-polynomial activation).

One run fits one target function f: [-1, 1]^d -> R with a whole *bank* of
one-hidden-layer networks, one per width in `config.widths` (1 ... 1024). The
bank's loss is the sum of the members' mean squared errors. The members share
no parameters, so each one's gradient comes from its own loss alone, and Adam
normalizes per parameter: training the bank is exactly training each width on
its own, in one compiled step. The test error on a dense grid, as a function
of width, is the experiment's result.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from frontiers_jax import config as config_lib
from frontiers_jax import plots
from frontiers_jax.errors import check
from frontiers_jax.workloads.base import Workload, gradient_step


def _bumps(x):
  return np.exp(-20 * (x[:, 0] - 0.4) ** 2) - 0.7 * np.exp(-40 * (x[:, 0] + 0.5) ** 2)


def _ripple(x):
  r = np.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2)
  return np.cos(3 * np.pi * r) * np.exp(-r)


# name -> (input dimension, f: [N, d] -> [N]); all continuous on [-1, 1]^d.
TARGETS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    'sine': (1, lambda x: np.sin(2 * np.pi * x[:, 0])),
    'abs': (1, lambda x: np.abs(x[:, 0])),          # continuous, not smooth
    'bumps': (1, _bumps),
    'ripple': (2, _ripple),
}
ACTIVATIONS = {'relu': nn.relu, 'tanh': nn.tanh, 'sigmoid': nn.sigmoid}


def width_key(width: int) -> str:
  return f'mse_w{width}'


class OneHiddenLayer(nn.Module):
  """x -> a(x W + b) v + c, with `width` hidden units.

  Each hidden unit's breakpoint (the hyperplane x W + b = 0) is placed through
  a point drawn uniformly from [-1, 1]^d, so that every unit starts active
  somewhere in the domain; zero biases would put all of them through the
  origin.
  """
  width: int
  activation: str = 'relu'

  @nn.compact
  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    d = x_BxD.shape[-1]
    w_DxH = self.param('kernel', nn.initializers.normal(1.0), (d, self.width))

    def through_random_points(key):
      points_DxH = jax.random.uniform(key, (d, self.width), minval=-1.0, maxval=1.0)
      return -jnp.sum(points_DxH * w_DxH, axis=0)

    b_H = self.param('bias', through_random_points)
    h_BxH = ACTIVATIONS[self.activation](x_BxD @ w_DxH + b_H)
    return nn.Dense(1, name='readout')(h_BxH)[:, 0]


class WidthBank(nn.Module):
  """Independent `OneHiddenLayer` networks, one per width: outputs [W, B]."""
  widths: Sequence[int]
  activation: str = 'relu'

  @nn.compact
  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    return jnp.stack([OneHiddenLayer(w, self.activation, name=f'width_{w}')(x_BxD)
                      for w in self.widths])


def make_dataset(target: str, num_train: int, grid: int, seed: int) -> dict:
  """Uniform random training points; a dense regular grid for testing."""
  dim, f = TARGETS[target]
  rng = np.random.default_rng((seed, 0))
  x_train = rng.uniform(-1.0, 1.0, (num_train, dim))
  axis = np.linspace(-1.0, 1.0, grid)
  x_test = (axis[:, None] if dim == 1 else
            np.stack(np.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2))
  return {
      'train': {'x': x_train.astype(np.float32), 'y': f(x_train).astype(np.float32)},
      'test': {'x': x_test.astype(np.float32), 'y': f(x_test).astype(np.float32)},
  }


class Approximation(Workload):
  """A bank of one-hidden-layer networks of growing width fits one target."""

  name = 'approximation'

  def validate(self) -> None:
    c = self.config
    config_lib.check_choice(c, 'target', tuple(TARGETS))
    config_lib.check_choice(c, 'activation', tuple(ACTIVATIONS))
    check(len(c.widths) > 0 and all(isinstance(w, int) and w > 0 for w in c.widths),
          'config.widths', f'{c.widths} is not allowed',
          'give positive whole numbers like 1,2,4,8')
    check(c.num_train > 0, 'config.num_train', f'{c.num_train} is not allowed',
          'give a whole number > 0')
    check(c.grid > 1, 'config.grid', f'{c.grid} is not allowed', 'give 2 or more')

  def load_data(self) -> dict:
    c = self.config
    return make_dataset(c.target, c.num_train, c.grid, c.seed)

  def build_model(self):
    return self.model()

  def model(self) -> WidthBank:
    return WidthBank(tuple(self.config.widths), self.config.activation)

  def create_state(self, rng, batch):
    model = self.model()
    params = model.init(rng, batch['x'][:1])['params']
    return self.new_state(model.apply, params)

  def _squared_errors(self, params, apply_fn, batch):
    pred_WxB = apply_fn({'params': params}, batch['x'])
    return (pred_WxB - batch['y'][None, :]) ** 2

  def train_step(self, state, batch, rng):
    del rng

    def loss_fn(params):
      mse_W = self._squared_errors(params, state.apply_fn, batch).mean(axis=1)
      per_width = {width_key(w): mse_W[i] for i, w in enumerate(self.config.widths)}
      return mse_W.sum(), per_width

    return gradient_step(state, loss_fn)

  def eval_step(self, state, batch):
    err_WxB = self._squared_errors(state.params, state.apply_fn, batch) * batch['mask']
    sums = {width_key(w): err_WxB[i].sum() for i, w in enumerate(self.config.widths)}
    return {'loss': err_WxB.sum(), 'count': batch['mask'].sum(), **sums}

  def predict(self, state, x: np.ndarray) -> np.ndarray:
    """Predictions [W, N] of every width on points `x` [N, d]."""
    return np.asarray(jax.jit(state.apply_fn)({'params': state.params}, x))

  def figures(self, state, data, history, fig_dir):
    c = self.config
    test = data['test']
    predictions = self.predict(state, test['x'])
    final = history[-1] if history else {}
    errors = {w: final.get(f'eval/{width_key(w)}') for w in c.widths}
    return [
        plots.approximation_fits(c.target, test, data['train'], c.widths,
                                 predictions, f'{fig_dir}/fits.png'),
        plots.error_vs_width({c.target: errors}, f'{fig_dir}/error_vs_width.png'),
    ]

  @staticmethod
  def sweep_figures(runs: dict[str, dict], fig_dir: str) -> list[str]:
    """Error vs width for every target of a sweep, on one log-log plot."""
    curves = {}
    for target, run in runs.items():
      final = run['summary']['final']
      widths = run['config']['widths']
      curves[target] = {w: final.get(f'eval/{width_key(w)}') for w in widths}
    return [plots.error_vs_width(curves, f'{fig_dir}/error_vs_width_all.png')]
