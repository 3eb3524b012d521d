"""How good a trained diffusion model is: FID of each sampler against the test
set (features of the project's CNN, trained here on the same data), how often
guided samples are labelled as asked, and the negative ELBO in bits/dim.

`frontiers evaluate` on a diffusion run calls `evaluate_generation`; each
function takes the `Diffusion` workload whose sampler and config it uses.
"""

import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from frontiers_jax import config as config_lib
from frontiers_jax import models
from frontiers_jax import plots
from frontiers_jax import runs
from frontiers_jax import streams
from frontiers_jax.diffusion import evaluation
from frontiers_jax.diffusion.process import to_model_space
from frontiers_jax.diffusion.samplers import parse_sampler
from frontiers_jax.progress import Progress
from frontiers_jax.training import loop
from frontiers_jax.workloads.classification import NUM_CLASSES


def feature_classifier(workload, workdir: str):
  """The project's CNN trained on the same dataset, in `workdir/classifier`
  (trained on the first call, restored after): (model, params, accuracy)."""
  c = workload.config
  k = config_lib.base_config()
  k.workload = 'generalization'
  k.randomization = 'none'
  k.corruption = 0.5
  k.data = c.data.copy_and_resolve_references()
  k.data.train_size = 0
  k.model = config_lib.classifier_config('cnn')
  k.num_steps = c.eval.classifier_steps
  k.batch_size = 128
  k.eval_batch_size = c.eval_batch_size
  k.log_every = max(1, k.num_steps // 10)
  k.eval_every = 0
  k.checkpoint_every = k.num_steps
  k.optim.schedule = 'cosine'
  k.quiet = c.quiet
  k.seed = c.seed
  directory = os.path.join(workdir, 'classifier')
  run = runs.prepare(k, directory)
  if os.path.exists(os.path.join(directory, 'summary.json')):
    state = loop.restore_trained(run)
  else:
    loop.run_training(run)
    state = loop.restore_trained(run)
  with open(os.path.join(directory, 'summary.json')) as f:
    accuracy = json.load(f)['final']['eval/accuracy']
  return models.create_classifier(k.model, NUM_CLASSES), state.params, accuracy


def evaluate_generation(workload, state, data, workdir: str, say=print) -> dict:
  """FID per sampler and step count, conditional accuracy of guided samples,
  bits/dim; writes `generation.json` and `figures/fid_vs_steps.png`."""
  c, e = workload.config, workload.config.eval
  key = jax.random.fold_in(jax.random.key(c.seed), streams.EVALUATE)
  shape = workload.image_shape(data)
  model, params, classifier_accuracy = feature_classifier(workload, workdir)
  say(f'feature classifier: test accuracy {classifier_accuracy:.4f}')
  features = functools.partial(evaluation.classifier_features, model, params)
  test = data['test']
  test_feats = features(test['image'])
  real = data['train']['image'][:e.num_samples]
  floor = evaluation.fid_from_features(features(real), test_feats)
  say(f'FID of {len(real)} real training images vs the test set (the floor): {floor:.3f}')
  results = {'num_samples': e.num_samples, 'guidance': e.guidance,
             'classifier_test_accuracy': classifier_accuracy, 'fid_floor': floor,
             'fid': {}, 'sampling_s': {}}
  labels = np.arange(e.num_samples) % NUM_CLASSES if workload.num_classes else None
  accuracy_total = NUM_CLASSES * e.accuracy_samples if workload.num_classes else 0
  progress = Progress('evaluate', e.num_samples * len(e.fid_samplers) + accuracy_total,
                      'images sampled', enabled=not c.quiet)
  for index, spec in enumerate(e.fid_samplers):
    name, steps = parse_sampler(spec, c.diffusion.num_timesteps)
    start = time.time()
    before = index * e.num_samples
    images = workload.generate_many(
        state, jax.random.fold_in(key, index), e.num_samples, shape, name, steps, labels,
        e.guidance, on_batch=lambda n, b=before, s=spec: progress.update(b + n, f'FID {s}'))
    seconds = time.time() - start
    fid = evaluation.fid_from_features(features(images), test_feats)
    results['fid'].setdefault(name, {})[steps] = fid
    results['sampling_s'][f'{name}:{steps}'] = seconds
    say(f'FID {name:<10} {steps:>5} steps: {fid:8.3f}  ({seconds:.0f} s to sample)')
  if workload.num_classes:
    wanted = np.repeat(np.arange(NUM_CLASSES), e.accuracy_samples)
    before = e.num_samples * len(e.fid_samplers)
    images = workload.generate_many(
        state, jax.random.fold_in(key, 1000), len(wanted), shape, c.sample.sampler,
        c.sample.steps, wanted, e.accuracy_guidance,
        on_batch=lambda n: progress.update(before + n, 'guided samples'))
    predicted = np.concatenate([
        np.asarray(jnp.argmax(model.apply({'params': params}, jnp.asarray(chunk)), -1))
        for chunk in np.array_split(images, max(1, len(images) // 500))])
    per_class = [float(np.mean(predicted[wanted == k] == k)) for k in range(NUM_CLASSES)]
    results['conditional_accuracy'] = float(np.mean(predicted == wanted))
    results['conditional_accuracy_per_class'] = per_class
    results['conditional_setting'] = {'sampler': c.sample.sampler,
                                      'steps': c.sample.steps,
                                      'guidance': e.accuracy_guidance}
    say(f'guided samples ({c.sample.sampler} {c.sample.steps} steps, scale '
        f'{e.accuracy_guidance:g}) labelled as asked: {results["conditional_accuracy"]:.4f}')
  if e.bpd_examples:
    results['bits_per_dim'] = bits_per_dim(workload, state, test['image'][:e.bpd_examples],
                                                jax.random.fold_in(key, 2000))
    say(f'negative ELBO on {min(e.bpd_examples, len(test["image"]))} test images: '
        f'{results["bits_per_dim"]:.4f} bits/dim')
  os.makedirs(os.path.join(workdir, 'figures'), exist_ok=True)
  if results['fid']:
    plots.fid_vs_steps(results['fid'], floor, f'{c.data.name}: FID vs sampler steps',
                       os.path.join(workdir, 'figures', 'fid_vs_steps.png'))
  with open(os.path.join(workdir, 'generation.json'), 'w') as f:
    json.dump(results, f, indent=2)
  return results


def bits_per_dim(workload, state, images, key) -> float:
  """Mean negative ELBO (Ho et al. 2020, eq. 5) of `images`, bits/dim."""
  d = workload.config.diffusion
  sched = workload.schedule

  @jax.jit
  def batch_bpd(x0, k):
    def pred_fn(xt, t_B):
      labels = (jnp.full(t_B.shape, workload.num_classes, jnp.int32)
                if workload.num_classes else None)
      return state.apply_fn({'params': state.ema_params}, xt, t_B, labels)
    return evaluation.nelbo_bpd(pred_fn, sched, d.objective, x0, k)

  batch = min(workload.config.eval.batch_size, len(images))
  total = 0.0
  for start in range(0, len(images), batch):
    chunk = to_model_space(np.resize(images[start:start + batch],
                                     (batch,) + images.shape[1:]))
    bpd = np.asarray(batch_bpd(jnp.asarray(chunk), jax.random.fold_in(key, start)))
    total += float(bpd[:len(images) - start].sum())
  return total / len(images) if len(images) else math.nan
