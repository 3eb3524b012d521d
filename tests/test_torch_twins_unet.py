"""PyTorch twins of the diffusion UNet and of the DDIM sampler.

With the flax weights copied in, the twin gives the same predictions (to
float32 rounding), the same first-step loss and the same parameters after
optimizer steps of the project's own diffusion train step (its t, noise and
labels reproduced from the step's key); the DDIM twin walks the same path
from the same start x_T. Sizes are configs/diffusion.py:tiny's (channels 8,
mults (1, 2), one block per level, attention at level 1, 2 heads, 4 groups)
on random 8x8x1 images, with random non-zero parameters (the real init zeroes
the last layer of every residual branch and would hide half the network).

Dropout is set to 0 for the comparisons: the two frameworks draw different
masks. The diffusion label dropout is 0 as well, and the dropped (null)
labels are put in the batch instead, so both sides see the same labels.

Two places are looser than rounding: the attention key biases, whose
gradient is exactly 0 (`compare_params`), and the DDIM walk of an eps model,
whose first step divides by sqrt(abar_T) (`test_ddim_twin_equals_jax_ddim`).
"""

import copy
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import load
from frontiers_jax.diffusion import process, samplers, unet
from frontiers_jax.training.optim import make_optimizer
from frontiers_jax.workloads import diffusion

torch = pytest.importorskip('torch',
                            reason='the PyTorch twins need torch (pip install -e .[bench])')
from frontiers_jax.bench import torch_optim, torch_samplers, torch_unet  # noqa: E402

B, SHAPE = 4, (8, 8, 1)
TINY = dict(channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
            num_heads=2, num_groups=4)
NUM_CLASSES = 10
# Unoptimized XLA: these programs compile in a fraction of the time and run in milliseconds.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


@pytest.fixture(scope='module', autouse=True)
def setup(fast_compile):
  """Tiny programs compile faster with few XLA optimizations. One torch thread:
  on a busy 2-core machine two OpenMP threads wait on each other at every op."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  torch.manual_seed(0)
  yield
  torch.set_num_threads(threads)


def random_params(model: unet.UNet, shape=SHAPE, seed: int = 0) -> dict:
  """Kernels ~ N(0, 1/fan_in); GroupNorm scales 1 + N(0, 0.1^2); biases N(0, 0.1^2)."""
  x = jnp.zeros((1,) + tuple(shape))
  labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1,), jnp.int32),
                          labels)['params']
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if len(leaf.shape) > 1:
      value = rng.normal(size=leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))
    else:
      value = (path[-1].key == 'scale') + 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def twin_of(model: unet.UNet, params, image_channels: int = 1) -> 'torch_unet.TorchUNet':
  twin = torch_unet.TorchUNet.from_module(model, image_channels)
  return torch_unet.load_flax_params(twin, params).eval()


def _torch(a) -> 'torch.Tensor':
  return torch.from_numpy(np.array(a))


def random_batch(shape=SHAPE, seed: int = 0):
  """x [B, *shape] ~ N(0, 1), t = (0, 7, 13, 19), labels with one null label."""
  x = np.random.default_rng(seed).standard_normal((B,) + tuple(shape)).astype(np.float32)
  return x, np.array([0, 7, 13, 19], np.int32), np.array([3, 0, NUM_CLASSES, 9], np.int32)


@pytest.fixture(scope='module')
def conditional():
  model = unet.UNet(**TINY, num_classes=NUM_CLASSES)
  return model, random_params(model)


# -- The model ----------------------------------------------------------------------


@pytest.mark.parametrize('fields, shape, labelled', [
    (dict(num_classes=NUM_CLASSES), SHAPE, True),    # labels, one of them null
    (dict(num_classes=NUM_CLASSES), SHAPE, False),   # no labels: the null label
    (dict(), SHAPE, False),                          # an unconditional network
    # 28 -> 14 -> 7: the stride-2 'SAME' conv pads (0, 1) on even sizes.
    (dict(channel_mults=(1, 2, 2), attention_levels=(2,)), (28, 28, 1), False),
    # 7 -> 4 -> 7: nearest resizing 4 -> 7 reads pixels 0 0 1 2 2 3 3; 3 channels.
    (dict(num_classes=NUM_CLASSES, attention_levels=(0, 1)), (7, 7, 3), True),
], ids=['labels', 'null_label', 'unconditional', 'mnist_28', 'odd_7_rgb'])
def test_twin_outputs_equal_jax_outputs(fields, shape, labelled):
  model = unet.UNet(**{**TINY, **fields})
  params = random_params(model, shape)
  x, t, labels = random_batch(shape)
  labels = labels if labelled else None
  apply = jax.jit(model.apply, compiler_options=FAST_COMPILE)
  expected = np.asarray(apply({'params': params}, x, t, labels))
  assert np.abs(expected).max() > 0.5  # random weights: no zero-initialised layer
  twin = twin_of(model, params, shape[-1])
  with torch.no_grad():
    out = twin(_torch(x), _torch(t), None if labels is None else _torch(labels))
    as_float = twin(_torch(x), _torch(t).float(), None if labels is None else _torch(labels))
  assert out.dtype == torch.float32 and tuple(out.shape) == (B,) + tuple(shape)
  np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(as_float.numpy(), out.numpy())


def test_nearest_resize_matches_jax():
  """Both ways between the sizes the UNets meet (28 -> 14 -> 7 -> 4 and back)."""
  sizes = (2, 3, 4, 7, 8, 14)
  for size_in in sizes:
    x = np.arange(size_in * size_in, dtype=np.float32).reshape(1, size_in, size_in, 1)
    for size_out in sizes:
      expected = jax.image.resize(x, (1, size_out, size_out, 1), method='nearest')
      out = torch_unet.resize_nearest(_torch(x).permute(0, 3, 1, 2), size_out, size_out)
      np.testing.assert_array_equal(out.permute(0, 2, 3, 1).numpy(), expected)


def test_timestep_embedding_matches_jax():
  # exp may round f_i 1 ulp apart; t = 999 scales that to ~1e-6 in sin, cos.
  t = np.array([0, 1, 19, 999, 0.5], np.float32)
  for dim in (8, 9, 32):
    np.testing.assert_allclose(torch_unet.timestep_embedding(_torch(t), dim).numpy(),
                               unet.timestep_embedding(t, dim), rtol=0, atol=1e-5)


def test_round_trip_is_exact(conditional):
  model, params = conditional
  back = torch_unet.flax_params_from_torch(twin_of(model, params), like=params)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.asarray(y))


def test_load_refuses_incomplete_or_mismatched_params(conditional):
  model, params = conditional
  twin = torch_unet.TorchUNet.from_module(model)
  incomplete = {k: v for k, v in params.items() if k != 'Embed_0'}
  with pytest.raises(KeyError, match='Embed_0.weight'):
    torch_unet.load_flax_params(twin, incomplete)
  wider = unet.UNet(**{**TINY, 'channels': 12}, num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match='does not fit'):
    torch_unet.load_flax_params(twin, random_params(wider))
  with pytest.raises(KeyError, match='no torch twin'):
    torch_unet.load_flax_params(torch_unet.TorchUNet(**TINY), params)  # no class table


def test_labels_refused_without_classes():
  twin = torch_unet.TorchUNet(**TINY)
  x, t, labels = random_batch()
  with pytest.raises(ValueError, match='num_classes=0'):
    twin(_torch(x), _torch(t), _torch(labels))


# -- The training loss and optimizer steps ------------------------------------------


def workload(objective: str, **optim_overrides) -> diffusion.Diffusion:
  """configs/diffusion.py:tiny with dropout and label dropout off."""
  overrides = {f'optim.{k}': v for k, v in optim_overrides.items()}
  config = load('diffusion.py:tiny', **{'model.dropout': 0.0, 'diffusion.label_dropout': 0.0,
                                        'diffusion.objective': objective, **overrides})
  return diffusion.Diffusion(config)


def drawn_t_noise(work: diffusion.Diffusion, images, key):
  """The steps and noise that `Diffusion.loss_terms` draws from `key`."""
  k_t, k_eps, _, _ = jax.random.split(key, 4)
  t = jax.random.randint(k_t, images.shape[:1], 0, work.schedule.num_steps)
  return np.asarray(t), np.asarray(jax.random.normal(k_eps, images.shape))


def compare_params(after, expected, initial, steps: int, lr: float) -> None:
  """Every parameter within 1e-4, except the attention key biases: q . b_k is
  the same for all keys of a query, a shift the softmax ignores, so their
  gradient is exactly 0 and each framework's rounding residue (~1e-10) is what
  Adam (lr g / (|g| + 1e-8)) turns into a step of up to lr in an arbitrary
  direction (as for the GPT twin; measured here: 8e-5 apart after one step,
  1.1e-4 after two). The function does not depend on them; they are only
  checked to have moved by at most lr per step."""
  flat = traverse_util.flatten_dict
  after, expected, initial = flat(after), flat(expected), flat(initial)
  for path, value in expected.items():
    value, got = np.asarray(value), after[path]
    if path[0].startswith('AttentionBlock') and path[1:] == ('Dense_0', 'bias'):
      c = value.shape[0] // 3  # [q, k, v] biases
      key = slice(c, 2 * c)
      assert np.all(np.abs(got[key] - np.asarray(initial[path])[key]) <= 1.01 * lr * steps)
      got, value = np.delete(got, np.s_[key]), np.delete(value, np.s_[key])
    np.testing.assert_allclose(got, value, rtol=0, atol=1e-4, err_msg='/'.join(path))


def test_twin_steps_equal_jax_steps():
  """The project's train step (configs/diffusion.py:tiny: eps objective, Adam,
  clipping at 1) at a constant rate (tiny's warm-up makes update 0 a no-op):
  the loss within 1e-4 relative and every parameter within 1e-4 (the key
  biases aside, see `compare_params`) after one step, and after a second."""
  work = workload('eps', schedule='constant')
  model = work.network()
  params = random_params(model)
  images = np.random.default_rng(1).uniform(size=(B,) + SHAPE).astype(np.float32)
  labels = np.array([3, NUM_CLASSES, 7, NUM_CLASSES], np.int32)  # two dropped to null
  batch = {'image': jnp.asarray(images), 'label': jnp.asarray(labels)}
  state = diffusion.DiffusionState.create(
      apply_fn=model.apply, params=params, ema_params=params,
      tx=make_optimizer(work.config.optim, work.config.num_steps))
  twin = twin_of(model, params).train()
  made = torch_optim.make_torch_optimizer(work.config.optim, twin.named_parameters(),
                                          work.config.num_steps)
  train_step = jax.jit(work.train_step, compiler_options=FAST_COMPILE)
  x0 = _torch(diffusion.to_model_space(images))
  for step in range(2):
    key = jax.random.key(step)
    t, noise = drawn_t_noise(work, images, key)
    state, metrics = train_step(state, batch, key)
    loss = torch_unet.diffusion_loss(twin, work.schedule, x0, _torch(t), _torch(noise),
                                     _torch(labels), 'eps')
    np.testing.assert_allclose(loss.item(), float(metrics['loss']), rtol=1e-4)
    torch_optim.torch_step(twin, *made, loss)
    after = torch_unet.flax_params_from_torch(twin, like=state.params)
    compare_params(after, state.params, params, steps=step + 1, lr=work.config.optim.learning_rate)
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)))
  assert moved > 1e-4  # the steps did move the parameters


@pytest.mark.parametrize('objective', process.OBJECTIVES)
def test_diffusion_loss_equals_jax_loss(conditional, objective):
  """The loss math alone, for every objective, on the linear schedule of T = 20."""
  model, params = conditional
  sched = process.make_schedule('linear', 20)
  x0, t, labels = random_batch(seed=2)
  x0 = np.tanh(x0)
  noise = np.random.default_rng(3).standard_normal(x0.shape).astype(np.float32)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def jax_loss(params):
    xt = process.q_sample(sched, x0, t, noise)
    prediction = model.apply({'params': params}, xt, t, labels)
    return jnp.mean((prediction - process.target(sched, objective, x0, t, noise)) ** 2)

  with torch.no_grad():
    loss = torch_unet.diffusion_loss(twin_of(model, params), sched, _torch(x0), _torch(t),
                                     _torch(noise), _torch(labels), objective)
  np.testing.assert_allclose(loss.item(), float(jax_loss(params)), rtol=1e-5)


# -- DDIM ---------------------------------------------------------------------------


@pytest.mark.parametrize('labelled, guidance, eta, objective', [
    (True, 3.0, 0.0, 'eps'),    # classifier-free guidance, batched [cond; null]
    (True, 1.0, 0.0, 'eps'),    # the plain conditional model
    (False, 1.0, 0.0, 'x0'),    # the null label
    (True, 2.0, 1.0, 'v'),      # stochastic: the JAX draws are passed in
], ids=['guided', 'conditional', 'unconditional_x0', 'eta1_v'])
def test_ddim_twin_equals_jax_ddim(conditional, labelled, guidance, eta, objective):
  """10 steps of the T = 20 cosine schedule from the same x_T: samples within
  1e-4 of JAX's, and so is the twin's walk in float64.

  The first step is ill-conditioned for the eps objective: at position T - 1,
  abar = 6e-6 and x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) multiplies the
  model's float32 rounding (~1e-6) by 400 (times 5 with guidance 3) wherever
  x0 is not clipped. So the gap depends on the key: over keys 0 to 9 the
  guided eps walk differs from JAX's by up to 2.4e-4 (keys 4, 7, 8: 5 of
  2560 pixels above 1e-4), with JAX itself up to 1.9e-4 from the float64
  walk; the plain conditional eps walk by up to 9.5e-5; x0 and v, which need
  no division by sqrt(abar), by at most 3e-6. Key 0 is below 1e-5 in all four.
  """
  model, params = conditional
  sched, steps, shape = process.make_schedule('cosine', 20), 10, (B,) + SHAPE
  labels = np.array([0, 3, 5, 9], np.int32) if labelled else None
  key = jax.random.key(0)
  model_fn = lambda x, t, y: model.apply({'params': params}, x, t, y)
  run = lambda k: samplers.ddim(model_fn, sched, objective, shape, k, num_steps=steps, eta=eta,
                               labels=labels, null_label=NUM_CLASSES, guidance=guidance)
  expected = jax.jit(run, compiler_options=FAST_COMPILE)(key)
  key_init, key_steps = jax.random.split(key)  # as samplers._start splits it
  x_T = _torch(jax.random.normal(key_init, shape))
  noise = [_torch(jax.random.normal(jax.random.fold_in(key_steps, s), shape))
           for s in range(steps)]
  twin = twin_of(model, params)
  walk = lambda twin, dtype: torch_samplers.ddim(
      twin, sched, x_T.to(dtype), steps, None if labels is None else _torch(labels), guidance,
      eta, objective=objective, noise=None if eta == 0 else [z.to(dtype) for z in noise])
  samples, exact = walk(twin, torch.float32), walk(copy.deepcopy(twin).double(), torch.float64)
  expected = np.asarray(expected)
  assert 0.1 < float(np.std(expected)) and np.all(np.abs(samples.numpy()) <= 1)
  np.testing.assert_allclose(samples.numpy(), expected, rtol=0, atol=1e-4)
  np.testing.assert_allclose(exact.numpy(), expected, rtol=0, atol=1e-4)  # float64 walk


def test_ddim_positions_and_refusals():
  np.testing.assert_array_equal(torch_samplers.positions(20, 10),
                                samplers._positions(process.make_schedule('linear', 20), 10))
  with pytest.raises(ValueError, match='num_steps'):
    torch_samplers.positions(20, 21)
  with pytest.raises(ValueError, match='needs noise'):
    torch_samplers.ddim(lambda x, t, y: x, process.make_schedule('linear', 20),
                        torch.zeros((1,) + SHAPE), 5, eta=1.0)
