"""The benchmark's rows: each builds a JAX step and its two PyTorch twins.

Every builder takes a config (from `configs/`), draws one random batch with
numpy, initializes the JAX parameters and copies them into the twins, and
returns a `harness.Row`. The JAX side is the project's own code (the
workload's `train_step`, `attacks.pgd`); the twins are in this package.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import torch

from frontiers_jax.adversarial import attacks
from frontiers_jax.bench import torch_attacks, torch_cnn, torch_gpt, torch_optim
from frontiers_jax.bench import torch_samplers, torch_unet
from frontiers_jax.bench.harness import Row
from frontiers_jax.lm import generate, model as model_lib
from frontiers_jax.training import perf
from frontiers_jax.workloads import classification, diffusion, lm

_SEED = 0


def _jax_runner(step, state, *args):
  """A runner that advances `state` with the jitted `step(state, *args)`."""
  box = {'state': state}

  def run():
    box['state'], _ = step(box['state'], *args)
    jax.block_until_ready(box['state'])
  return run


def gpt_train(name: str, config) -> Row:
  """One train step of the language model of `config` on random tokens."""
  workload = lm.LanguageModel(config)
  workload.tokenizer = types.SimpleNamespace(vocab_size=65)  # Shakespeare's characters
  rng = np.random.default_rng(_SEED)
  tokens = rng.integers(0, 65, (config.batch_size, config.model.context + 1)).astype(np.int32)
  batch = {'tokens': jnp.asarray(tokens)}
  key = jax.random.key(_SEED)
  state = jax.jit(workload.create_state)(key, batch)
  step = jax.jit(workload.train_step, donate_argnums=0)
  flops = perf.step_flops(step, state, batch, key)
  params = jax.device_get(state.params)
  torch_tokens = torch.from_numpy(tokens.astype(np.int64))

  def torch_runner(compiled: bool):
    twin = torch_gpt.TorchGPT.from_module(workload.model)
    torch_gpt.load_flax_params(twin, params)
    made = torch_optim.make_torch_optimizer(config.optim, twin.named_parameters(),
                                            config.num_steps)
    forward = torch.compile(twin) if compiled else twin

    def run():
      torch_optim.torch_step(twin, *made, torch_gpt.lm_loss(forward, torch_tokens))
    return run

  return Row(name, {'jax': _jax_runner(step, state, batch, key),
                    'torch_eager': torch_runner(False),
                    'torch_compile': torch_runner(True)}, flops,
             tokens=config.batch_size * config.model.context)


def gpt_decode(name: str, config, batch_size: int, prompt_length: int = 16) -> Row:
  """Greedy KV-cache decoding: a random prompt, then tokens up to the context.

  One call of the row is one whole generation: the prompt's prefill and
  context - prompt_length decoding steps, each appending one token per row
  (no re-prefill). JAX: `lm.generate.generate` (one compiled program, the
  steps in a `lax.scan`); torch: `torch_gpt.greedy_decode` (a Python loop
  over the steps, the step compiled once under `torch.compile`).
  """
  workload = lm.LanguageModel(config)
  workload.tokenizer = types.SimpleNamespace(vocab_size=65)  # Shakespeare's characters
  model = workload.model
  rng = np.random.default_rng(_SEED)
  prompts = rng.integers(0, 65, (batch_size, prompt_length)).astype(np.int32)
  num_tokens = config.model.context - prompt_length
  params = jax.jit(model.init)(jax.random.key(_SEED), prompts)['params']
  first, key = jnp.zeros(batch_size, jnp.int32), jax.random.key(_SEED)

  # The steps are a scan, whose body XLA's cost analysis counts once: the
  # FLOPs are one prefill plus num_tokens - 1 single-token calls.
  def call(tokens, index):
    cache = model_lib.init_cache(model, batch_size)
    return model.apply({'params': params}, tokens, cache=cache, index=index)[0]
  flops = (perf.step_flops(jax.jit(call), jnp.asarray(prompts), 0)
           + (num_tokens - 1) * perf.step_flops(jax.jit(call), jnp.asarray(prompts[:, :1]),
                                                prompt_length))

  def run_jax():
    jax.block_until_ready(generate.generate(model, params, prompts, first, num_tokens, key,
                                            temperature=0.0))

  torch_prompts = torch.from_numpy(prompts.astype(np.int64))

  def torch_runner(compiled: bool):
    twin = torch_gpt.TorchGPT.from_module(model)
    torch_gpt.load_flax_params(twin, jax.device_get(params))
    twin.eval().requires_grad_(False)
    forward = torch.compile(twin) if compiled else twin

    def run():
      torch_gpt.greedy_decode(forward, twin, torch_prompts, num_tokens)
    return run

  return Row(name, {'jax': run_jax, 'torch_eager': torch_runner(False),
                    'torch_compile': torch_runner(True)}, flops,
             tokens=batch_size * num_tokens)


def _cnn(config):
  workload = classification.Classification(config)
  rng = np.random.default_rng(_SEED)
  images = rng.random((config.batch_size, 28, 28, 1), dtype=np.float32)
  labels = rng.integers(0, 10, config.batch_size).astype(np.int32)
  batch = {'image': jnp.asarray(images), 'label': jnp.asarray(labels)}
  state = jax.jit(workload.create_state)(jax.random.key(_SEED), batch)
  return workload, batch, state, images, labels


def _torch_cnn(workload, params):
  twin = torch_cnn.TorchSmallCNN.from_module(workload.model(), image_shape=(28, 28, 1))
  return torch_cnn.load_flax_params(twin, params)


def cnn_train(name: str, config) -> Row:
  """One Adam step of the small CNN classifier on a random batch."""
  workload, batch, state, images, labels = _cnn(config)
  key = jax.random.key(_SEED)
  step = jax.jit(workload.train_step, donate_argnums=0)
  flops = perf.step_flops(step, state, batch, key)
  params = jax.device_get(state.params)
  x, y = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

  def torch_runner(compiled: bool):
    twin = _torch_cnn(workload, params)
    made = torch_optim.make_torch_optimizer(config.optim, twin.named_parameters(),
                                            config.num_steps)
    forward = torch.compile(twin) if compiled else twin

    def run():
      torch_optim.torch_step(twin, *made, torch_cnn.classifier_loss(forward, x, y))
    return run

  return Row(name, {'jax': _jax_runner(step, state, batch, key),
                    'torch_eager': torch_runner(False),
                    'torch_compile': torch_runner(True)}, flops)


def pgd(name: str, config, steps: int = 10) -> Row:
  """An L-inf PGD attack (random start, cross-entropy) on the small CNN."""
  workload, batch, state, images, labels = _cnn(config)
  eps, step_size = config.attack.eps, 2.5 * config.attack.eps / steps
  model, params = workload.model(), state.params

  @jax.jit
  def attack(params, x, y, key):
    logits_fn = lambda v: model.apply({'params': params}, v)
    return attacks.pgd(logits_fn, x, y, key, eps, step_size, steps)

  key = jax.random.key(_SEED)
  # XLA's cost analysis counts a loop body once, whatever its trip count: so
  # the attack's FLOPs are its steps times one loss-and-gradient (the start,
  # the candidate checks and the projections are not counted).
  one_step = jax.jit(attacks._loss_and_grad(
      lambda v: model.apply({'params': params}, v), batch['label'], 'ce', False))
  flops = steps * perf.step_flops(one_step, batch['image'])

  def run_jax():
    jax.block_until_ready(attack(params, batch['image'], batch['label'], key))

  x, y = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
  noise = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(0))

  def torch_runner(compiled: bool):
    twin = _torch_cnn(workload, jax.device_get(params))
    twin.requires_grad_(False)
    forward = torch.compile(twin) if compiled else twin

    def run():
      torch_attacks.pgd_linf(forward, x, y, eps, step_size, steps, noise)
    return run

  return Row(name, {'jax': run_jax, 'torch_eager': torch_runner(False),
                    'torch_compile': torch_runner(True)}, flops)


def _unet(config, batch_size: int):
  workload = diffusion.Diffusion(config)
  rng = np.random.default_rng(_SEED)
  images = rng.random((batch_size, 28, 28, 1), dtype=np.float32)
  labels = rng.integers(0, 10, batch_size).astype(np.int32)
  batch = {'image': jnp.asarray(images), 'label': jnp.asarray(labels)}
  state = jax.jit(workload.create_state)(jax.random.key(_SEED), batch)
  twin_of = lambda: torch_unet.load_flax_params(
      torch_unet.TorchUNet.from_module(workload.network()), jax.device_get(state.params))
  return workload, batch, state, images, labels, twin_of


def unet_train(name: str, config) -> Row:
  """One train step of the diffusion UNet (with its EMA update) on a random batch."""
  workload, batch, state, images, labels, twin_of = _unet(config, config.batch_size)
  key = jax.random.key(_SEED)
  step = jax.jit(workload.train_step, donate_argnums=0)
  flops = perf.step_flops(step, state, batch, key)
  d, sched = config.diffusion, workload.schedule
  x0 = torch.from_numpy(images) * 2 - 1
  y = torch.from_numpy(labels.astype(np.int64))

  def torch_runner(compiled: bool):
    twin = twin_of()
    made = torch_optim.make_torch_optimizer(config.optim, twin.named_parameters(),
                                            config.num_steps)
    ema = [p.detach().clone() for p in twin.parameters()]
    forward = torch.compile(twin) if compiled else twin

    def run():
      t = torch.randint(0, d.num_timesteps, (len(x0),))
      noise = torch.randn_like(x0)
      dropped = torch.where(torch.rand(len(y)) < d.label_dropout, 10, y)
      loss = torch_unet.diffusion_loss(forward, sched, x0, t, noise, dropped, d.objective)
      torch_optim.torch_step(twin, *made, loss)
      with torch.no_grad():
        torch._foreach_lerp_(ema, list(twin.parameters()), 1 - d.ema_decay)
    return run

  return Row(name, {'jax': _jax_runner(step, state, batch, key),
                    'torch_eager': torch_runner(False),
                    'torch_compile': torch_runner(True)}, flops)


def ddim(name: str, config, num_images: int = 16, steps: int = 50) -> Row:
  """Guided DDIM sampling of `num_images` images in `steps` steps."""
  workload, _, state, _, labels, twin_of = _unet(config, num_images)
  guidance, objective = config.sample.guidance, config.diffusion.objective
  shape = (num_images, 28, 28, 1)
  key = jax.random.key(_SEED)
  y = jnp.asarray(labels)
  args = (state, key, shape, 'ddim', steps, y, guidance, False, False)
  # The sampler is one lax.scan, whose body XLA's cost analysis counts once:
  # its FLOPs are the steps times one guided network call (2 x num_images).
  y2 = jnp.concatenate([y, jnp.full_like(y, workload.num_classes)])  # [labels; null]
  guided = jax.jit(lambda x, t: state.apply_fn({'params': state.ema_params}, x, t, y2))
  x2 = jnp.zeros((2 * num_images,) + shape[1:])
  flops = steps * perf.step_flops(guided, x2, jnp.zeros(2 * num_images, jnp.int32))

  def run_jax():
    jax.block_until_ready(workload._generate(*args))

  x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
  torch_labels = torch.from_numpy(labels.astype(np.int64))

  def torch_runner(compiled: bool):
    twin = twin_of()
    twin.requires_grad_(False)
    forward = torch.compile(twin) if compiled else twin

    def run():
      with torch.no_grad():
        torch_samplers.ddim(forward, workload.schedule, x_T, steps, torch_labels, guidance,
                            objective=objective, null_label=10)
    return run

  return Row(name, {'jax': run_jax, 'torch_eager': torch_runner(False),
                    'torch_compile': torch_runner(True)}, flops)
