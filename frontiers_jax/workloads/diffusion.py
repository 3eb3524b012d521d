"""Denoising diffusion (the lecture's New Frontiers I): learn to remove noise.

Training (Ho et al. 2020, Algorithm 1): take an image x_0 (scaled to [-1, 1]),
a step t ~ U{1..T} and noise eps ~ N(0, I); noise the image in closed form,
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, and train the UNet to recover
eps (or x_0, or v) from (x_t, t) with a squared error (Ho et al. 2020, eq. 14).

Conditioning: the class label enters next to t; with probability
`label_dropout` it is replaced by a null label, so one network learns both the
conditional and the unconditional model that classifier-free guidance mixes
(Ho & Salimans 2022). An exponential moving average of the parameters is kept
and used for sampling and evaluation.

Sampling and evaluation live in `frontiers_jax.diffusion`; this file connects
them to the shared training loop, `launch/sample.py` and `launch/evaluate.py`.
"""

import functools
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from frontiers_jax import config as config_lib
from frontiers_jax import data as data_lib
from frontiers_jax import plots
from frontiers_jax import streams
from frontiers_jax.diffusion import process
from frontiers_jax.diffusion import samplers
from frontiers_jax.diffusion import unet
from frontiers_jax.diffusion.process import to_image_space, to_model_space
from frontiers_jax.diffusion.samplers import parse_sampler
from frontiers_jax.errors import UsageError, check
from frontiers_jax.training.optim import make_optimizer
from frontiers_jax.workloads import diffusion_scores
from frontiers_jax.workloads.base import SampleRequest, Workload, gradient_step
from frontiers_jax.workloads.classification import NUM_CLASSES, load_images


# Class names, used as prompts by launch/sample.py ("a sneaker" -> 7).
CLASS_NAMES = {
    'digits': ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight',
               'nine'),
    'fashion_mnist': ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal',
                      'shirt', 'sneaker', 'bag', 'ankle boot'),
}
CLASS_NAMES['mnist'] = CLASS_NAMES['digits']


class DiffusionState(train_state.TrainState):
  """The train state plus the moving average of the parameters."""
  ema_params: Any = None


def label_from_prompt(prompt: str, dataset: str) -> int:
  """Text-to-image in miniature: 'a sneaker' -> the class named sneaker."""
  names = CLASS_NAMES.get(dataset, ())
  words = prompt.lower().strip().split()
  if words and words[0] in ('a', 'an', 'the'):
    words = words[1:]
  text = ' '.join(words).rstrip('s') if words else ''
  for label, name in enumerate(names):
    if text in (name, name.rstrip('s'), str(label)):
      return label
  raise UsageError('prompt', f'{prompt!r} names no class of {dataset}',
                   'allowed: ' + ', '.join(f'"a {n}"' for n in names) if names
                   else f'{dataset} has no class names')


class Diffusion(Workload):
  """A UNet denoiser trained with the DDPM objective; samples with guidance."""

  name = 'diffusion'

  def validate(self) -> None:
    c, d = self.config, self.config.diffusion
    config_lib.check_choice(c, 'data.name', data_lib.IMAGE_DATASETS)
    config_lib.check_choice(c, 'diffusion.schedule', process.SCHEDULES)
    config_lib.check_choice(c, 'diffusion.objective', process.OBJECTIVES)
    config_lib.check_choice(c, 'sample.sampler', samplers.SAMPLERS)
    config_lib.check_choice(c, 'sample.spacing', samplers.SPACINGS)
    check(d.num_timesteps >= 2, 'config.diffusion.num_timesteps',
          f'{d.num_timesteps} is not allowed', 'give a whole number >= 2')
    config_lib.check_range(c, 'diffusion.label_dropout', 0.0, 1.0)
    check(0.0 <= d.ema_decay < 1.0, 'config.diffusion.ema_decay',
          f'{d.ema_decay} is out of range', 'allowed: 0 <= decay < 1')
    check(c.data.train_size >= 0, 'config.data.train_size',
          f'{c.data.train_size} is not allowed', 'give 0 (all) or more')
    config_lib.check_dtype(c)
    m = c.model
    check(m.channels > 0 and m.channels % m.num_groups == 0, 'config.model.channels',
          f'{m.channels} with num_groups {m.num_groups} is not allowed',
          'give channels > 0, a multiple of num_groups')
    check(len(m.channel_mults) >= 1 and all(k > 0 for k in m.channel_mults),
          'config.model.channel_mults', f'{m.channel_mults} is not allowed',
          'give one or more whole numbers > 0')
    check(all(0 <= a < len(m.channel_mults) for a in m.attention_levels),
          'config.model.attention_levels', f'{m.attention_levels} is not allowed',
          f'give level indices in 0..{len(m.channel_mults) - 1}')
    check(m.num_res_blocks > 0, 'config.model.num_res_blocks',
          f'{m.num_res_blocks} is not allowed', 'give a whole number > 0')
    config_lib.check_range(c, 'model.dropout', 0.0, 1.0)
    check(c.sample.steps > 0, 'config.sample.steps', f'{c.sample.steps} is not allowed',
          'give a whole number > 0')
    e = c.eval
    for spec in e.fid_samplers:
      parse_sampler(spec, d.num_timesteps)
    for key in ('num_samples', 'batch_size', 'accuracy_samples', 'classifier_steps'):
      check(e[key] > 0, f'config.eval.{key}', f'{e[key]} is not allowed',
            'give a whole number > 0')
    check(e.bpd_examples >= 0, 'config.eval.bpd_examples', f'{e.bpd_examples} is not '
          'allowed', 'give 0 (skip) or more')
    data_lib.check_available(c.data.name, c.data.dir)

  # -- Training ----------------------------------------------------------------

  @property
  def schedule(self) -> process.Schedule:
    """Built where used: a cached copy made inside a jit trace would hold tracers."""
    d = self.config.diffusion
    return process.make_schedule(d.schedule, d.num_timesteps)

  @property
  def num_classes(self) -> int:
    return NUM_CLASSES if self.config.diffusion.conditional else 0

  def load_data(self) -> dict:
    return load_images(self.config)

  def build_model(self) -> unet.UNet:
    return self.network()

  def start_from(self, state, params):
    """The EMA starts at the given parameters too."""
    return state.replace(params=params, ema_params=params)

  def inference_params(self, state: dict):
    """The EMA of the parameters: what the sampler and evaluation use."""
    return state['ema_params']

  def network(self) -> unet.UNet:
    return unet.create_unet(self.config.model, self.num_classes)

  def create_state(self, rng, batch):
    x = batch['image'][:1]
    labels = batch['label'][:1] if self.num_classes else None
    network = self.network()
    params = network.init(rng, x, jnp.zeros((1,), jnp.int32), labels)['params']
    tx = make_optimizer(self.config.optim, self.config.num_steps)
    return DiffusionState.create(apply_fn=network.apply, params=params, tx=tx,
                                 ema_params=params)

  def loss_terms(self, params, apply_fn, images, labels, key, train: bool):
    """Per-example squared error of the prediction (Ho et al. 2020, eq. 14)."""
    sched, d = self.schedule, self.config.diffusion
    x0 = to_model_space(images)
    k_t, k_eps, k_drop, k_null = jax.random.split(key, 4)
    t_B = jax.random.randint(k_t, x0.shape[:1], 0, sched.num_steps)
    eps = jax.random.normal(k_eps, x0.shape)
    xt = process.q_sample(sched, x0, t_B, eps)
    if self.num_classes:
      null = jax.random.bernoulli(k_null, d.label_dropout if train else 0.0, labels.shape)
      labels = jnp.where(null, self.num_classes, labels)
    else:
      labels = None
    prediction = apply_fn({'params': params}, xt, t_B, labels, train=train,
                          rngs={'dropout': k_drop} if train else None)
    error = (prediction - process.target(sched, d.objective, x0, t_B, eps)) ** 2
    return error.reshape(error.shape[0], -1).mean(axis=1)

  def train_step(self, state, batch, rng):
    def loss_fn(params):
      per_example = self.loss_terms(params, state.apply_fn, batch['image'],
                                    batch['label'], rng, train=True)
      return per_example.mean(), {}

    step = state.step  # Before the update: 0 at the first step.
    state, metrics = gradient_step(state, loss_fn)
    # The decay warms up as (1 + n) / (10 + n), so that a short run's average
    # is not dominated by the initial parameters.
    decay = jnp.minimum(self.config.diffusion.ema_decay, (1.0 + step) / (10.0 + step))
    ema = optax.incremental_update(state.params, state.ema_params, 1.0 - decay)
    return state.replace(ema_params=ema), metrics

  def eval_step(self, state, batch):
    """The denoising loss of the EMA parameters, with noise fixed by the seed."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), streams.EVAL_NOISE)
    per_example = self.loss_terms(state.ema_params, state.apply_fn, batch['image'],
                                  batch['label'], key, train=False)
    return {'loss': jnp.sum(per_example * batch['mask']), 'count': jnp.sum(batch['mask'])}

  # -- Sampling ----------------------------------------------------------------

  def model_fn(self, state):
    """(x_t, t, labels) -> prediction, with the EMA parameters."""
    def fn(x, t_B, labels):
      return state.apply_fn({'params': state.ema_params}, x, t_B, labels)
    return fn

  def image_shape(self, data) -> tuple[int, int, int]:
    return tuple(data['test']['image'].shape[1:])

  # `plain` (static): guidance exactly 1, so the sampler runs only the
  # conditional model; any other scale is traced and shares one compile.
  @functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 8, 9))
  def _generate(self, state, key, shape, sampler, steps, labels, guidance, plain, trajectory):
    conditional = labels is not None
    out = samplers.sample(
        sampler, self.model_fn(state), self.schedule, self.config.diffusion.objective,
        shape, key, num_steps=None if sampler == 'ddpm' else steps,
        labels=labels if conditional else None,
        null_label=self.num_classes if conditional else None,
        guidance=1.0 if plain else guidance, trajectory=trajectory,
        **({'eta': self.config.sample.eta} if sampler == 'ddim' else {}),
        **({'spacing': self.config.sample.spacing} if sampler != 'ddpm' else {}))
    if trajectory:
      return to_image_space(out[0]), to_image_space(out[1])
    return to_image_space(out)

  def generate(self, state, key, num: int, image_shape, sampler: str, steps: int,
               labels=None, guidance: float = 1.0, trajectory: bool = False):
    """`num` images in [0, 1]: guided by `labels` ([num] ints) when given."""
    if labels is not None and not self.num_classes:
      raise UsageError('label', 'this model was trained without labels',
                       'sample without --label, or train with diffusion.conditional=True')
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    return self._generate(state, key, (num,) + tuple(image_shape), sampler, steps, labels,
                          jnp.float32(guidance), float(guidance) == 1.0, trajectory)

  def generate_many(self, state, key, num: int, image_shape, sampler: str, steps: int,
                    labels=None, guidance: float = 1.0,
                    on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """`num` images in batches of eval.batch_size, or one batch of `num` when
    fewer (one compiled sampler); `on_batch(images done)` after each batch."""
    batch = min(self.config.eval.batch_size, num)
    out = []
    for start in range(0, num, batch):
      chunk = None
      if labels is not None:
        chunk = np.resize(np.asarray(labels[start:start + batch]), batch)
      images = self.generate(state, jax.random.fold_in(key, start), batch, image_shape,
                             sampler, steps, chunk, guidance)
      out.append(np.asarray(images)[:num - start])
      if on_batch is not None:
        on_batch(min(start + batch, num))
    return np.concatenate(out)

  def check_sample(self, request: SampleRequest) -> dict:
    """A grid of `num` images, of one class when a label or prompt is given."""
    c = self.config
    r = request
    sampler, steps, num, label, guidance = r.sampler, r.steps, r.num, r.label, r.guidance
    check(len(r.prompts) <= 1, 'prompt', f'given {len(r.prompts)} times',
          'give one class name (a diffusion call draws one class)')
    prompt = r.prompts[0] if r.prompts else ''
    steps = steps or (c.diffusion.num_timesteps if sampler == 'ddpm' else c.sample.steps)
    name, steps = parse_sampler(f'{sampler}:{steps}', c.diffusion.num_timesteps)
    check(num > 0, 'num', f'{num} is not allowed', 'give a whole number > 0')
    check(guidance >= 0, 'guidance', f'{guidance} is not allowed', 'give a scale >= 0')
    check(not (prompt and label is not None), 'prompt', 'given with --label',
          'give one of --prompt and --label')
    if prompt:
      label = label_from_prompt(prompt, c.data.name)
    if label is not None:
      check(self.num_classes > 0, 'label', 'this model was trained without labels',
            'sample without --label/--prompt, or train with diffusion.conditional=True')
      check(0 <= label < self.num_classes, 'label', f'{label} is out of range',
            f'allowed: 0 to {self.num_classes - 1}')
    return {'sampler': name, 'steps': steps, 'num': num, 'label': label,
            'guidance': guidance, 'seed': r.seed,
            'name': f'{name}_{steps}' + ('' if label is None else f'_label{label}')}

  def sample(self, state, data, plan: dict, out: str) -> list[str]:
    """Writes `out`.png (a grid) and `out`.npy (the images, [N, H, W, C] in [0, 1])."""
    r = plan
    seed = r['seed']
    key = jax.random.fold_in(jax.random.key(seed), streams.EVALUATE)
    labels = None if r['label'] is None else np.full(r['num'], r['label'])
    images = np.asarray(self.generate(state, key, r['num'], self.image_shape(data),
                                      r['sampler'], r['steps'], labels, r['guidance']))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.save(out + '.npy', images)
    cols = min(8, r['num'])
    rows = math.ceil(r['num'] / cols)
    grid = np.zeros((rows * cols,) + images.shape[1:], np.float32)
    grid[:len(images)] = images
    what = 'unconditional'
    if r['label'] is not None:
      names = CLASS_NAMES.get(self.config.data.name, [str(k) for k in range(NUM_CLASSES)])
      what = f'class {r["label"]} ({names[r["label"]]}), guidance {r["guidance"]:g}'
    plots.image_grid(grid.reshape((rows, cols) + images.shape[1:]),
                     f'{what}; {r["sampler"]}, {r["steps"]} steps, seed {seed}', out + '.png')
    return [out + '.png', out + '.npy']

  # -- Figures -------------------------------------------------------------------

  def figures(self, state, data, history, fig_dir):
    c = self.config
    sched, shape = self.schedule, self.image_shape(data)
    key = jax.random.fold_in(jax.random.key(c.seed), streams.FIGURES)
    paths = [plots.loss_curve(history, f'{c.data.name}: denoising loss',
                              f'{fig_dir}/diffusion_loss.png')]
    # Forward noising: 100 % image / 0 % noise -> 0 % image / 100 % noise.
    x0 = to_model_space(jnp.asarray(data['test']['image'][:4]))
    positions = [0, sched.num_steps // 4, sched.num_steps // 2, 3 * sched.num_steps // 4,
                 sched.num_steps - 1]
    eps = jax.random.normal(jax.random.fold_in(key, 0), x0.shape)
    strip = [to_image_space(process.q_sample(sched, x0, jnp.full((4,), t), eps))
             for t in positions]
    signal = np.sqrt(np.asarray(sched.alpha_bars)[positions])
    paths.append(plots.image_grid(
        np.stack(strip, axis=1), 'forward noising q(x_t | x_0)',
        f'{fig_dir}/diffusion_forward.png',
        col_labels=[f't={t + 1}\n{s:.0%} image' for t, s in zip(positions, signal)]))
    # Grids of samples and the reverse path of one of them. All come from one
    # compiled sampler: the unconditional grid is guidance 0 (only the null
    # label counts), so a conditional model needs no second compile.
    s, per_row = c.sample, 8
    names = CLASS_NAMES.get(c.data.name, [str(k) for k in range(NUM_CLASSES)])
    labels = np.repeat(np.arange(NUM_CLASSES), per_row) if self.num_classes else None
    count = NUM_CLASSES * per_row
    images, path_S = self.generate(state, jax.random.fold_in(key, 1), count, shape,
                                   s.sampler, s.steps, labels, s.guidance, trajectory=True)
    if self.num_classes:
      paths.append(plots.image_grid(
          np.asarray(images).reshape((NUM_CLASSES, per_row) + shape),
          f'guided samples (scale {s.guidance:g}, {s.sampler}, {s.steps} steps)',
          f'{fig_dir}/diffusion_samples_guided.png', row_labels=names))
      unconditional, _ = self.generate(state, jax.random.fold_in(key, 2), count, shape,
                                       s.sampler, s.steps, labels, 0.0, trajectory=True)
    else:
      unconditional = images
    paths.append(plots.image_grid(
        np.asarray(unconditional)[:per_row * per_row].reshape((per_row, per_row) + shape),
        f'unconditional samples ({s.sampler}, {s.steps} steps)',
        f'{fig_dir}/diffusion_samples.png'))
    num_steps = path_S.shape[0]
    shown = np.linspace(0, num_steps - 1, 7).round().astype(int)
    one = 3 * per_row if self.num_classes else 0  # a sample of class 3
    paths.append(plots.image_grid(
        np.asarray(path_S)[shown, one][None], f'reverse denoising ({s.sampler}, '
        f'{num_steps} steps)', f'{fig_dir}/diffusion_reverse.png',
        col_labels=[f'step {i + 1}' for i in shown]))
    return paths

  # -- Evaluation (frontiers evaluate) --------------------------------------------

  def evaluate(self, state, data, workdir: str, mesh, say=print) -> str:
    """FID, guided accuracy and bits/dim (`diffusion_scores.evaluate_generation`)."""
    del mesh  # Sampling runs on one device: its batches are small.
    diffusion_scores.evaluate_generation(self, state, data, workdir, say)
    return os.path.join(workdir, 'generation.json')
