"""Adversarial examples and adversarial training (the lecture's failure mode III).

A small, crafted change of the input, x <- x + eps * sign(dJ/dx), flips a
confident prediction (Goodfellow et al. 2015). The defence is to train on the
worst case in the eps-ball (Madry et al. 2018):

  min_theta E_(x,y) [ max_{||d|| <= eps} CE(f_theta(x + d), y) ]

`config.train_method` picks the training objective:
  standard  plain cross-entropy on clean inputs;
  pgd       cross-entropy on PGD adversarial examples (Madry et al. 2018);
  trades    CE(f(x), y) + beta * KL(f(x) || f(x')), x' maximizing the KL
            (Zhang et al. 2019, eq. 5), trading clean for robust accuracy.

Evaluation reports clean accuracy and, on the test split, PGD robust accuracy
(`eval/robust_accuracy`) with `attack.eval_steps` steps from a fixed key.
"""

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from frontiers_jax import config as config_lib
from frontiers_jax import plots
from frontiers_jax import streams
from frontiers_jax.adversarial import attacks
from frontiers_jax.adversarial import eot
from frontiers_jax.adversarial import robustness
from frontiers_jax.errors import check
from frontiers_jax.progress import Progress
from frontiers_jax.workloads.base import classification_sums, gradient_step
from frontiers_jax.workloads.classification import Classification, cross_entropy

METHODS = ('standard', 'pgd', 'trades')
ROBUSTNESS_ATTACKS = ('fgsm', 'pgd', 'pgd-long', 'apgd-ce', 'apgd-dlr', 'square')
_L2_ATTACKS = ('pgd', 'pgd-long', 'apgd-ce', 'apgd-dlr')  # FGSM and Square are L-inf


def trades_adversary(logits_fn, x, key, eps: float, step_size: float, steps: int):
  """Zhang et al. 2019, Algorithm 1: L-inf steps maximizing KL(f(x) || f(x')).

  Starts at x + 0.001 * N(0, I) (at x itself the KL gradient is zero).
  """
  p_clean = jax.nn.softmax(jax.lax.stop_gradient(logits_fn(x)))

  def kl(x_adv):
    log_p_adv = jax.nn.log_softmax(logits_fn(x_adv))
    return jnp.sum(p_clean * (jnp.log(p_clean + 1e-12) - log_p_adv))

  def step(_, x_adv):
    x_adv = x_adv + step_size * jnp.sign(jax.grad(kl)(x_adv))
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)

  start = jnp.clip(x + 0.001 * jax.random.normal(key, x.shape), 0.0, 1.0)
  return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, step, start))


class Adversarial(Classification):
  """A classifier trained clean, with PGD, or with TRADES; robust accuracy."""

  name = 'adversarial'

  def validate(self) -> None:
    c, a = self.config, self.config.attack
    config_lib.check_choice(c, 'train_method', METHODS)
    config_lib.check_choice(c, 'attack.norm', attacks.NORMS)
    config_lib.check_choice(c, 'attack.loss', attacks.LOSSES)
    check(a.eps >= 0, 'config.attack.eps', f'{a.eps} is not allowed', 'give eps >= 0')
    for key in ('step_size', 'trades_beta'):
      check(a[key] > 0, f'config.attack.{key}', f'{a[key]} is not allowed', 'give > 0')
    check(a.eps_warmup_steps >= 0, 'config.attack.eps_warmup_steps',
          f'{a.eps_warmup_steps} is not allowed', 'give 0 (none) or more steps')
    for key in ('train_steps', 'eval_steps'):
      check(a[key] > 0, f'config.attack.{key}', f'{a[key]} is not allowed',
            'give a whole number > 0')
    check(c.train_method != 'trades' or a.norm == 'linf', 'config.attack.norm',
          f'{a.norm} is not supported by trades', 'use linf with trades')
    r = c.robustness
    for name in r.attacks:
      check(name in ROBUSTNESS_ATTACKS, 'config.robustness.attacks',
            f'unknown attack {name!r}', f'allowed: {", ".join(ROBUSTNESS_ATTACKS)}')
    for key in ('eps', 'l2_eps'):
      check(all(e >= 0 for e in r[key]), f'config.robustness.{key}',
            f'{r[key]} is not allowed', 'give eps values >= 0')
    for key in ('pgd_steps', 'apgd_steps', 'square_queries'):
      check(r[key] > 0, f'config.robustness.{key}', f'{r[key]} is not allowed',
            'give a whole number > 0')
    for key in ('num_examples', 'eot_examples'):
      check(r[key] >= 0, f'config.robustness.{key}', f'{r[key]} is not allowed',
            'give 0 or more')
    check(r.eot_samples > 0, 'config.robustness.eot_samples',
          f'{r.eot_samples} is not allowed', 'give a whole number > 0')
    super().validate()

  def pgd(self, params, apply_fn, images, labels, key, steps: int, scale=1.0):
    """PGD with the config's eps and step size (both times `scale`), norm and
    loss (one restart)."""
    a = self.config.attack
    x_adv, _ = attacks.pgd(lambda x: apply_fn({'params': params}, x), images, labels,
                           key, eps=a.eps * scale, step_size=a.step_size * scale,
                           steps=steps, norm=a.norm, loss=a.loss)
    return jax.lax.stop_gradient(x_adv)

  def train_step(self, state, batch, rng):
    method, a = self.config.train_method, self.config.attack
    if method == 'standard':
      return super().train_step(state, batch, rng)
    # The inner maximization sees the current parameters as constants.
    frozen = jax.lax.stop_gradient(state.params)
    x, y = batch['image'], batch['label']
    # eps grows linearly over the first eps_warmup_steps: at the full eps from
    # step 0, MNIST training can sit at chance for thousands of steps.
    scale = jnp.minimum(1.0, (state.step + 1) / max(a.eps_warmup_steps, 1))
    if method == 'pgd':
      x_adv = self.pgd(frozen, state.apply_fn, x, y, rng, a.train_steps, scale)

      def loss_fn(params):
        return cross_entropy(state.apply_fn({'params': params}, x_adv), y)
    else:
      x_adv = trades_adversary(lambda v: state.apply_fn({'params': frozen}, v), x, rng,
                               a.eps * scale, a.step_size * scale, a.train_steps)

      def loss_fn(params):
        logits = state.apply_fn({'params': params}, x)
        logits_adv = state.apply_fn({'params': params}, x_adv)
        natural, metrics = cross_entropy(logits, y)
        # KL(f(x) || f(x')) per example, averaged: Zhang et al. 2019, eq. 5.
        robust = optax.kl_divergence(jax.nn.log_softmax(logits_adv),
                                     jax.nn.softmax(logits)).mean()
        return natural + a.trades_beta * robust, {**metrics, 'kl': robust}

    return gradient_step(state, loss_fn)

  def eval_step(self, state, batch):
    x, y, mask = batch['image'], batch['label'], batch['mask']
    logits = state.apply_fn({'params': state.params}, x)
    sums = classification_sums(logits, y, mask)
    key = jax.random.fold_in(jax.random.key(self.config.seed), streams.EVAL_ATTACK)
    x_adv = self.pgd(state.params, state.apply_fn, x, y, key, self.config.attack.eval_steps)
    logits_adv = state.apply_fn({'params': state.params}, x_adv)
    sums['robust_accuracy'] = jnp.sum((jnp.argmax(logits_adv, -1) == y) * mask)
    return sums

  def figures(self, state, data, history, fig_dir):
    test = data['test']
    x, y = test['image'][:6], test['label'][:6]
    apply = jax.jit(state.apply_fn)
    key = jax.random.fold_in(jax.random.key(self.config.seed), streams.EVAL_ATTACK)
    x_adv = self.pgd(state.params, state.apply_fn, x, y, key, self.config.attack.eval_steps)
    probs = jax.nn.softmax(apply({'params': state.params}, x))
    probs_adv = jax.nn.softmax(apply({'params': state.params}, x_adv))
    a = self.config.attack
    title = (f'{self.config.train_method} training, PGD-{a.eval_steps} '
             f'{a.norm} eps={a.eps:g}')
    return [plots.adversarial_examples(x, x_adv, probs, probs_adv, title,
                                       f'{fig_dir}/adversarial_examples.png'),
            plots.robust_curves(history, f'{fig_dir}/robust_accuracy.png')]

  def evaluate(self, state, data, workdir: str, mesh, say=print) -> str:
    """`evaluate_robustness`, with a table per norm and a warning line (on
    stderr) for each sign of gradient masking."""
    results = self.evaluate_robustness(state, data, workdir, mesh)
    for norm, result in results.items():
      if norm == 'eot':
        say(f'EOT vs PGD at eps {result["eps"]:g}: still adversarial under fresh random '
            f'transformations {result["survival_eot"]:.1%} (EOT) vs '
            f'{result["survival_pgd"]:.1%} (PGD) of the time; clean images are '
            f'misclassified {result["survival_clean"]:.1%} of the time')
        continue
      say(f'{norm}: clean accuracy {result["clean_accuracy"]:.4f} on '
          f'{result["num_examples"]} test examples')
      names = list(result['accuracy']) + ['worst case']
      say('  eps      ' + ''.join(f'{n:>12}' for n in names))
      for i, eps in enumerate(result['eps']):
        row = [result['accuracy'][n][i] for n in result['accuracy']] + [result['worst_case'][i]]
        say(f'  {eps:<8.4g} ' + ''.join(f'{v:>12.4f}' for v in row))
      for warning in result['warnings']:
        print(f'WARNING: possible gradient masking: {warning}', file=sys.stderr)
    return os.path.join(workdir, 'robustness.json')

  def evaluate_robustness(self, state, data, workdir: str, mesh) -> dict:
    """Every attack at every eps (L-inf, then L2) on the test split; writes
    `robustness.json` and `figures/robustness_<norm>.png`; returns the result
    with the gradient-masking warnings."""
    r = self.config.robustness
    test = data['test']
    if r.num_examples:
      test = {k: v[:r.num_examples] for k, v in test.items()}
    key = jax.random.fold_in(jax.random.key(self.config.seed), streams.ROBUSTNESS)
    results = {}
    figures = []
    for index, (norm, eps, allowed) in enumerate(
        (('linf', r.eps, ROBUSTNESS_ATTACKS), ('l2', r.l2_eps, _L2_ATTACKS))):
      names = [n for n in r.attacks if n in allowed]
      if not eps or not names:
        continue
      attack_fns = robustness.make_attacks(names, norm, r.pgd_steps, r.apgd_steps,
                                           r.square_queries)
      progress = Progress(f'evaluate {norm}', len(eps) * len(names) * len(test['label']),
                          'attacked images', enabled=not self.config.quiet)
      result = robustness.evaluate(state.apply_fn, state.params, test,
                                   jax.random.fold_in(key, index), eps, attack_fns,
                                   self.config.eval_batch_size, mesh, progress)
      # Images live in [0, 1]: eps 1 (L-inf) or sqrt(pixels) (L2) reaches any image.
      unbounded = 1.0 if norm == 'linf' else float(np.sqrt(np.prod(test['image'].shape[1:])))
      result['warnings'] = robustness.masking_checks(result, unbounded)
      results[norm] = result
      os.makedirs(os.path.join(workdir, 'figures'), exist_ok=True)
      figures.append(plots.robustness_curve(
          result, f'{self.config.train_method} training, {norm} attacks',
          os.path.join(workdir, 'figures', f'robustness_{norm}.png')))
    if r.eot_examples:
      eot_result, figure = self.eot_comparison(state, test, workdir)
      results['eot'] = eot_result
      figures.append(figure)
    with open(os.path.join(workdir, 'robustness.json'), 'w') as f:
      json.dump(results, f, indent=2)
    return results

  def eot_comparison(self, state, test: dict, workdir: str) -> tuple[dict, str]:
    """EOT vs plain PGD at the training eps: how often each adversarial
    example still fools the model under fresh random transformations."""
    r, a = self.config.robustness, self.config.attack
    x, y = test['image'][:r.eot_examples], test['label'][:r.eot_examples]
    key = jax.random.fold_in(jax.random.key(self.config.seed), streams.EOT)

    def logits_fn(v):
      return state.apply_fn({'params': state.params}, v)

    ranges = eot.TransformRange(
        max_rotation_deg=r.eot_rotation_deg, max_translation=r.eot_translation,
        scale_range=tuple(r.eot_scale), brightness=r.eot_brightness,
        noise_std=r.eot_noise_std)
    compare = jax.jit(lambda x, y, k: eot.compare_eot_vs_pgd(
        logits_fn, x, y, k, a.eps, r.pgd_steps, num_samples=r.eot_samples,
        ranges=ranges))
    result = {k: float(v) for k, v in compare(x, y, key).items()}
    result.update(eps=a.eps, norm='linf', steps=r.pgd_steps, samples=r.eot_samples,
                  num_examples=int(len(y)), ranges=dataclasses.asdict(ranges))
    # The figure: the first test image, both attacks, six fresh transformations.
    k_pgd, k_eot, k_show = jax.random.split(jax.random.fold_in(key, 1), 3)
    step = 2.5 * a.eps / r.pgd_steps
    x_pgd, _ = attacks.pgd(logits_fn, x[:1], y[:1], k_pgd, a.eps, step, r.pgd_steps)
    x_eot = eot.eot_pgd(logits_fn, x[:1], y[:1], k_eot, a.eps, step, r.pgd_steps,
                        r.eot_samples, ranges)
    params = eot.sample_transforms(k_show, 1, 6, ranges)
    rows, predictions = {}, {}
    for name, image in (('clean', x[:1]), ('PGD', x_pgd), ('EOT', x_eot)):
      seen = jax.vmap(lambda p, im=image: eot.apply_transform(im, p)[0])(params)
      rows[name] = seen
      predictions[name] = jnp.argmax(logits_fn(seen), -1)
    os.makedirs(os.path.join(workdir, 'figures'), exist_ok=True)
    figure = plots.eot_examples(
        rows, predictions, int(y[0]),
        f'true class {int(y[0])}; under random rotation, shift, scale, brightness, '
        f'noise (eps {a.eps:g})', os.path.join(workdir, 'figures', 'eot.png'))
    return result, figure
