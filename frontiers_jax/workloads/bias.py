"""Algorithmic bias: a spurious colour, its cost, and two remedies.

The data (`frontiers_jax.data.bias`): digits on coloured backgrounds, the
colour agreeing with the label for `config.bias.aligned_fraction` of the
training images and independent of it at test time. Test examples fall into
two subgroups, bias-aligned (colour = the label's colour) and bias-conflicting.

`config.method` picks the training:
  standard  plain cross-entropy (empirical risk minimization);
  reweight  cross-entropy weighted per (label, colour) group, inversely to the
            group's training frequency: a baseline that *uses the attribute*;
  dbvae     the debiasing VAE (`frontiers_jax.bias.dbvae`): classifier + VAE on one
            encoder, examples resampled by the rarity of their latent code
            within their class; never sees the attribute.

DB-VAE resampling inside the loop's contract (batch `s` a pure function of
(seed, s); the state carries everything else): batch `s` is a uniformly
drawn *pool* of `dbvae.pool_factor x batch_size` examples with their indices.
The step encodes the pool, stores each example's latent mean and label in
buffers of the train state, and draws its `batch_size` training rows from the
pool with probability proportional to the examples' weights (with
replacement, from `fold_in(key, step)`). The weights live in the state too and
are recomputed from the buffers inside the step at fixed steps
(`dbvae.first_refresh`, then every `dbvae.refresh_every`). A resumed run
restores the buffers with the parameters and repeats the run bit for bit.

Eval metrics (`eval/...`): accuracy overall, on each subgroup, their gap, and
`follows_colour`: how often a conflicting example is classified as the class
of its colour.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax.training import train_state

from frontiers_jax import config as config_lib
from frontiers_jax import data as data_lib
from frontiers_jax import models
from frontiers_jax import streams
from frontiers_jax.bias import dbvae
from frontiers_jax.data import bias as bias_data
from frontiers_jax.data import pipeline
from frontiers_jax.data import registry
from frontiers_jax.errors import check
from frontiers_jax.training.optim import make_optimizer
from frontiers_jax.workloads.base import Workload, gradient_step

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

METHODS = ('standard', 'reweight', 'dbvae')
DATASETS = ('digits', 'mnist', 'fashion_mnist')
NUM_CLASSES = bias_data.NUM_CLASSES
_SAMPLE, _LATENT = 0, 1               # step key streams


class DebiasState(train_state.TrainState):
  """The train state plus DB-VAE's view of the training set: the latest
  latent mean and the label of every example (label -1: not seen yet), and
  the sampling weights computed from them."""
  latent_mu: Any = None
  latent_label: Any = None
  weights: Any = None


def grey_splits(config) -> dict:
  """The grey digits (uint8), train cut to `data.train_size`."""
  splits = data_lib.load(config.data.name, config.data.dir)
  n = config.data.train_size or None
  splits['train'] = {k: v[:n] for k, v in splits['train'].items()}
  return splits


def subgroup_sums(logits_BxK, label_B, attribute_B, mask_B) -> dict:
  """Masked sums of correct predictions overall and per subgroup, each with
  its own count (`count_<metric>`), and how often a conflicting example is
  classified as its colour's class."""
  predicted = jnp.argmax(logits_BxK, -1)
  correct = (predicted == label_B).astype(jnp.float32)
  aligned = (attribute_B == label_B).astype(jnp.float32) * mask_B
  conflicting = (attribute_B != label_B).astype(jnp.float32) * mask_B
  losses = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, label_B)
  return {
      'loss': jnp.sum(losses * mask_B), 'accuracy': jnp.sum(correct * mask_B),
      'count': jnp.sum(mask_B),
      'aligned_accuracy': jnp.sum(correct * aligned),
      'count_aligned_accuracy': jnp.sum(aligned),
      'conflicting_accuracy': jnp.sum(correct * conflicting),
      'count_conflicting_accuracy': jnp.sum(conflicting),
      'follows_colour': jnp.sum((predicted == attribute_B) * conflicting),
      'count_follows_colour': jnp.sum(conflicting),
  }


def images(batch) -> jax.Array:
  return batch['image'].astype(jnp.float32) / 255.0


class Bias(Workload):
  """A colour-biased classifier, trained plainly, reweighted, or as a DB-VAE."""

  name = 'bias'

  def validate(self) -> None:
    c = self.config
    config_lib.check_choice(c, 'method', METHODS)
    config_lib.check_choice(c, 'data.name', DATASETS)
    config_lib.check_choice(c, 'dbvae.combine', dbvae.COMBINE)
    f = c.bias.aligned_fraction
    check(0.0 <= f <= 1.0, 'config.bias.aligned_fraction', f'{f} is out of range',
          'give a fraction in [0, 1], e.g. 0.95')
    check(c.data.train_size >= 0, 'config.data.train_size',
          f'{c.data.train_size} is not allowed', 'give 0 (all) or more')
    check(len(c.model.features) >= 1 and all(x > 0 for x in c.model.features),
          'config.model.features', f'{c.model.features} is not allowed',
          'give one or more widths > 0, e.g. 16,32')
    d = c.dbvae
    for key, value in (('model.dense', c.model.dense), ('model.latent_dim', c.model.latent_dim),
                       ('dbvae.pool_factor', d.pool_factor),
                       ('dbvae.refresh_every', d.refresh_every)):
      check(value > 0, f'config.{key}', f'{value} is not allowed', 'give a whole number > 0')
    check(d.bins >= 2, 'config.dbvae.bins', f'{d.bins} is not allowed', 'give 2 or more bins')
    check(d.alpha > 0, 'config.dbvae.alpha', f'{d.alpha} is not allowed',
          'give alpha > 0, e.g. 0.001')
    for key in ('kl_weight', 'vae_weight', 'first_refresh'):
      check(d[key] >= 0, f'config.dbvae.{key}', f'{d[key]} is not allowed', 'give 0 or more')
    data_lib.check_available(c.data.name, c.data.dir)

  # -- Data --------------------------------------------------------------------

  def load_data(self) -> dict:
    c = self.config
    grey = grey_splits(c)
    train = bias_data.make_split(grey['train'], c.bias.aligned_fraction, c.seed,
                                 streams.TRAIN_COLOURS)
    # 1/10 aligned, the rest uniform over the other colours: independent colours.
    test = bias_data.make_split(grey['test'], 1.0 / NUM_CLASSES, c.seed, streams.TEST_COLOURS)
    if c.method == 'reweight':
      train['weight'] = bias_data.group_weights(train['label'], train['attribute'])
    if c.method == 'dbvae':
      train['index'] = np.arange(len(train['label']), dtype=np.int32)
    self.num_train = len(train['label'])
    return {'train': train, 'test': test}

  def train_batches(self, data, global_batch, seed, process_index=0, process_count=1):
    if self.config.method == 'dbvae':  # the pool the step draws its batch from
      global_batch *= self.config.dbvae.pool_factor
      n = pipeline.num_examples(data['train'])
      check(global_batch <= n, 'config.dbvae.pool_factor',
            f'pools of {global_batch} (pool_factor x batch_size) exceed the {n} training '
            'examples', f'give at most {n // self.config.batch_size}')
    return pipeline.TrainBatches(data['train'], global_batch, seed, process_index,
                                 process_count)

  # -- Model and state ---------------------------------------------------------

  def build_model(self) -> dbvae.DBVAE:
    height, width, _ = registry.IMAGE_SHAPES[self.config.data.name]
    return self.model((height, width, 3))  # coloured backgrounds: RGB

  def model(self, image_shape) -> dbvae.DBVAE:
    m = self.config.model
    return dbvae.DBVAE(shape=tuple(image_shape), features=tuple(m.features), dense=m.dense,
                       latent_dim=m.latent_dim, num_classes=NUM_CLASSES,
                       decoder=self.config.method == 'dbvae')

  def create_state(self, rng, batch):
    model = self.model(batch['image'].shape[1:])
    x = images(batch)[:1]
    if self.config.method != 'dbvae':
      return self.new_state(model.apply, model.init(rng, x)['params'])
    params = model.init(rng, x, rng, method=model.reconstruct)['params']
    tx = make_optimizer(self.config.optim, self.config.num_steps)
    n, dim = self.num_train, self.config.model.latent_dim
    return DebiasState.create(apply_fn=model.apply, params=params, tx=tx,
                              latent_mu=jnp.zeros((n, dim), jnp.float32),
                              latent_label=jnp.full((n,), -1, jnp.int32),
                              weights=jnp.ones((n,), jnp.float32))

  # -- Steps -------------------------------------------------------------------

  def train_step(self, state, batch, rng):
    if self.config.method == 'dbvae':
      return self.dbvae_step(state, batch, rng)
    x, y = images(batch), batch['label']
    conflicting = (batch['attribute'] != y).astype(jnp.float32)
    # standard: every example counts once; reweight: by its group weight.
    w = batch['weight'] if self.config.method == 'reweight' else jnp.ones_like(conflicting)

    def loss_fn(params):
      logits, _, _ = state.apply_fn({'params': params}, x)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      accuracy = (jnp.argmax(logits, -1) == y).mean()
      # The attribute is read here for the record only (the share of
      # conflicting examples in what the loss sees).
      return jnp.sum(w * losses) / jnp.sum(w), {
          'accuracy': accuracy, 'conflicting_share': jnp.sum(w * conflicting) / jnp.sum(w)}

    return gradient_step(state, loss_fn)

  def refreshed_weights(self, state):
    """The sampling weights: recomputed from the latent buffers at the refresh
    steps, else the stored ones."""
    d = self.config.dbvae
    due = (state.step >= d.first_refresh) & ((state.step - d.first_refresh)
                                             % d.refresh_every == 0)
    return jax.lax.cond(
        due, lambda: dbvae.latent_weights(state.latent_mu, state.latent_label, NUM_CLASSES,
                                          d.bins, d.alpha, d.combine),
        lambda: state.weights)

  def dbvae_step(self, state, batch, rng):
    d = self.config.dbvae
    pool_x, pool_y, index = images(batch), batch['label'], batch['index']
    weights = self.refreshed_weights(state)
    # Record the pool's latent means (a uniform sample of the training set).
    _, pool_mu, _ = state.apply_fn({'params': state.params}, pool_x)
    state = state.replace(
        weights=weights,
        latent_mu=state.latent_mu.at[index].set(jax.lax.stop_gradient(pool_mu)),
        latent_label=state.latent_label.at[index].set(pool_y))
    rows = jax.random.categorical(jax.random.fold_in(rng, _SAMPLE), jnp.log(weights[index]),
                                  shape=(self.config.batch_size,))
    x, y = pool_x[rows], pool_y[rows]
    conflicting = (batch['attribute'][rows] != y).astype(jnp.float32)
    z_key = jax.random.fold_in(rng, _LATENT)

    def loss_fn(params):
      logits, mu, logvar, x_hat = state.apply_fn({'params': params}, x, z_key,
                                                 method='reconstruct')
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      vae, reconstruction, kl = dbvae.vae_loss(x, x_hat, mu, logvar, d.kl_weight)
      return ce + d.vae_weight * vae.mean(), {
          'accuracy': (jnp.argmax(logits, -1) == y).mean(), 'cross_entropy': ce,
          'reconstruction': reconstruction.mean(), 'kl': kl.mean(),
          # For the record only: DB-VAE never reads the attribute.
          'conflicting_share': conflicting.mean()}

    return gradient_step(state, loss_fn)

  def eval_step(self, state, batch):
    logits, _, _ = state.apply_fn({'params': state.params}, images(batch))
    return subgroup_sums(logits, batch['label'], batch['attribute'], batch['mask'])

  def derived_metrics(self, means):
    if not {'eval/aligned_accuracy', 'eval/conflicting_accuracy'} <= means.keys():
      return {}  # a split without examples of one kind has no gap
    return {'eval/accuracy_gap': means['eval/aligned_accuracy']
            - means['eval/conflicting_accuracy']}

  def describe(self, state, flops_per_step):
    c = self.config
    lines = [f'{c.method} on {c.data.name} with coloured backgrounds '
             f'({c.bias.aligned_fraction:.0%} aligned in training); '
             f'{models.count_params(state.params):,} parameters']
    if c.method == 'dbvae':
      d = c.dbvae
      lines.append(f'DB-VAE: latent {c.model.latent_dim}, pools of {d.pool_factor} x '
                   f'{c.batch_size}, weights ({d.combine}, {d.bins} bins, alpha {d.alpha:g}) '
                   f'from step {d.first_refresh}, every {d.refresh_every}')
    return lines

  # -- Figures -----------------------------------------------------------------

  def figures(self, state, data, history, fig_dir):
    test, train = data['test'], data['train']
    grey = grey_splits(self.config)['test']
    title = f'{self.config.method} on {self.config.data.name}'
    return ([examples_figure(train, test, f'{fig_dir}/bias_examples.png')]
            + inspection_figures(state, test, grey, title, fig_dir)
            + [subgroup_bars({self.config.method: history[-1] if history else {}},
                             f'{fig_dir}/subgroup_accuracy.png')])


# -- Figures ---------------------------------------------------------------------
# Image figures are one mosaic each (one imshow, labels as text): a grid of
# matplotlib subplots costs tens of milliseconds per panel.

def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _first(mask: np.ndarray, count: int) -> np.ndarray:
  return np.flatnonzero(mask)[:count]


def _mosaic_figure(tiles, labels, row_names, title: str, path: str) -> str:
  """Tiles [R, C, H, W, 3] in [0, 1] in one image; `labels[r][c]` is a
  (text, colour) pair written under each tile."""
  tiles = np.asarray(tiles, np.float32)
  rows, cols, h, w, _ = tiles.shape
  pad_h, pad_w = h // 2 + 2, 2
  canvas = np.ones((rows * (h + pad_h), cols * (w + pad_w), 3), np.float32)
  for r in range(rows):
    for c in range(cols):
      top, left = r * (h + pad_h), c * (w + pad_w)
      canvas[top:top + h, left:left + w] = tiles[r, c]
  fig, ax = plt.subplots(figsize=(cols * 0.95 + 1.4, rows * 1.15 + 0.5))
  ax.imshow(canvas, interpolation='nearest')
  for r in range(rows):
    ax.text(-2, r * (h + pad_h) + h / 2, row_names[r], ha='right', va='center', fontsize=7)
    for c in range(cols):
      text, colour = labels[r][c]
      ax.text(c * (w + pad_w) + w / 2, r * (h + pad_h) + h + pad_h / 2 - 1, text,
              ha='center', va='center', fontsize=6, color=colour)
  ax.set_axis_off()
  ax.set_title(title, fontsize=9)
  return _save(fig, path)


def _rgb(split, rows) -> np.ndarray:
  return split['image'][rows].astype(np.float32) / 255.0


def examples_figure(train, test, path: str, count: int = 8) -> str:
  groups = [('train, aligned', train, _first(train['attribute'] == train['label'], count)),
            ('train, conflicting', train, _first(train['attribute'] != train['label'], count)),
            ('test', test, np.arange(count))]
  tiles = [_rgb(split, rows) for _, split, rows in groups]
  labels = [[(f'label {split["label"][i]}', 'black') for i in rows]
            for _, split, rows in groups]
  return _mosaic_figure(tiles, labels, [g[0] for g in groups],
                        'Background colour agrees with the label in training, not at test',
                        path)


def inspect(state, x_BxHxWxC) -> tuple[np.ndarray, np.ndarray]:
  """Input-gradient saliency (Simonyan et al. 2014), the largest absolute
  gradient over channels of the predicted class's logit, and the predicted
  classes; one compiled call."""
  def top_logit(x):
    logits, _, _ = state.apply_fn({'params': state.params}, x)
    return jnp.sum(jnp.max(logits, -1)), jnp.argmax(logits, -1)
  grads, predicted = jax.jit(jax.grad(top_logit, has_aux=True))(x_BxHxWxC)
  return np.abs(np.asarray(grads)).max(-1), np.asarray(predicted)


def background_share(maps_BxHxW, grey_BxHxW) -> np.ndarray:
  """The share of each saliency map on background pixels (stroke below 1/4)."""
  background = grey_BxHxW < 64
  return (maps_BxHxW * background).sum((1, 2)) / np.maximum(maps_BxHxW.sum((1, 2)), 1e-12)


def inspection_figures(state, test, grey, title: str, fig_dir: str,
                       count: int = 8, swapped: int = 4) -> list[str]:
  """What the model relies on, two figures from one compiled call:
  saliency.png, aligned and conflicting test images over their saliency maps
  (each scaled to its maximum) with the prediction and the map's share on the
  background; colour_swap.png, the first test digits on each of the ten
  backgrounds with the predicted class (a colour-biased model follows the
  colour)."""
  aligned = test['attribute'] == test['label']
  groups = (('aligned', _first(aligned, count)), ('conflicting', _first(~aligned, count)))
  rows = np.concatenate([r for _, r in groups])
  colours = np.tile(np.arange(NUM_CLASSES, dtype=np.int32), swapped)
  x_swap = bias_data.colourize(np.repeat(grey['image'][:swapped], NUM_CLASSES, 0), colours)
  x = np.concatenate([_rgb(test, rows), x_swap.astype(np.float32) / 255.0])
  maps, predicted = inspect(state, jnp.asarray(x))
  tiles, labels, names = [], [], []
  start = 0
  for name, group in groups:
    end = start + len(group)
    share = background_share(maps[start:end], grey['image'][group][..., 0])
    scaled = maps[start:end] / np.maximum(maps[start:end].max((1, 2), keepdims=True), 1e-12)
    tiles += [x[start:end], plt.get_cmap('hot')(scaled)[..., :3]]
    labels.append([(f'-> {p}', 'red' if p != y else 'black')
                   for p, y in zip(predicted[start:end], test['label'][group])])
    labels.append([(f'{v:.0%} bg', 'black') for v in share])
    names += [name, 'saliency']
    start = end
  paths = [_mosaic_figure(tiles, labels, names, f'{title}: |d logit / d pixel| of the '
                          'predicted class (red: wrong; bg: share on the background)',
                          f'{fig_dir}/saliency.png')]
  swap = predicted[start:].reshape(swapped, NUM_CLASSES)
  labels = [[(f'-> {p}', 'red' if p != grey['label'][r] else 'black') for p in swap[r]]
            for r in range(swapped)]
  tiles = x[start:].reshape(swapped, NUM_CLASSES, *x.shape[1:])
  paths.append(_mosaic_figure(
      tiles, labels, [f'label {y}' for y in grey['label'][:swapped]],
      f'{title}: each digit on every background colour (red: wrong)',
      f'{fig_dir}/colour_swap.png'))
  return paths


def subgroup_bars(finals: dict[str, dict], path: str) -> str:
  """Accuracy on aligned and conflicting test examples and overall, per method
  (`finals[method]` holds its final `eval/...` metrics)."""
  keys = (('eval/aligned_accuracy', 'bias-aligned'),
          ('eval/conflicting_accuracy', 'bias-conflicting'), ('eval/accuracy', 'all test'))
  names = list(finals)
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(names) + 1.5), 3.6))
  for i, (key, label) in enumerate(keys):
    values = [finals[n].get(key, np.nan) for n in names]
    ax.bar(x + (i - 1) * 0.27, values, 0.27, label=label)
  ax.axhline(0.1, color='grey', linestyle=':', label='chance')
  ax.set_xticks(x, names)
  ax.set(ylabel='test accuracy', ylim=(0, 1.15), title='Accuracy per subgroup')
  ax.legend(loc='upper center', ncol=4, fontsize=7)
  return _save(fig, path)


def method_table(runs: dict[str, dict]) -> list[list]:
  """Rows of the subgroup table per method (`runs[method]['summary']`)."""
  table = [['method', 'aligned accuracy', 'conflicting accuracy', 'gap',
            'test accuracy', 'conflicting -> colour class']]
  for method, run in runs.items():
    final = run['summary']['final']
    table.append([method] + [final.get(f'eval/{k}') for k in (
        'aligned_accuracy', 'conflicting_accuracy', 'accuracy_gap', 'accuracy',
        'follows_colour')])
  return table


def figure_paths(runs: dict[str, dict]) -> list[str]:
  return [os.path.join(run['workdir'], 'figures', name) for run in runs.values()
          for name in ('saliency.png', 'colour_swap.png')]
