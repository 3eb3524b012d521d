"""Robust accuracy of a trained classifier: every attack, every eps, and checks
that the numbers are not an artefact of gradient masking.

An attack here is `fn(logits_fn, x, labels, key, eps) -> (x_adv, success_B)`.
`evaluate` runs each one over a whole split at each eps, batch by batch, with
keys derived from (key, eps index, attack index, batch index); the worst case
per example over all attacks is the robust accuracy that counts (AutoAttack's
rule, Croce & Hein 2020). `masking_checks` then applies the sanity checks of
Athalye et al. 2018 / Carlini et al. 2019 ("On evaluating adversarial
robustness", section 5) and returns one warning per violation.
"""

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from frontiers_jax.adversarial import attacks
from frontiers_jax.data import pipeline
from frontiers_jax.progress import Progress
from frontiers_jax.training import sharding

Attack = Callable[..., tuple[jax.Array, jax.Array]]
WHITE_BOX = ('fgsm', 'pgd', 'apgd-ce', 'apgd-dlr')
# Accuracy differences below this are noise, not violations.
TOLERANCE = 0.005


def make_attacks(names: Sequence[str], norm: str, pgd_steps: int, apgd_steps: int,
                 square_queries: int) -> dict[str, Attack]:
  """Attack functions by name, with the settings of `config.robustness`."""
  def fgsm(logits_fn, x, y, key, eps):
    del key
    x_adv = attacks.fgsm(logits_fn, x, y, eps)
    # Like the iterative attacks, a clean mistake counts as a success.
    wrong = jnp.argmax(logits_fn(x), -1) != y
    return x_adv, attacks.success(logits_fn, x_adv, y) | wrong

  def pgd(logits_fn, x, y, key, eps, steps=pgd_steps, restarts=1):
    # Step size 2.5 eps / steps (Madry et al. 2018).
    return attacks.pgd(logits_fn, x, y, key, eps=eps, step_size=2.5 * eps / steps,
                       steps=steps, norm=norm, restarts=restarts)

  table = {'fgsm': fgsm, 'pgd': pgd,
           # For the "more steps and restarts never help" check.
           'pgd-long': functools.partial(pgd, steps=2 * pgd_steps, restarts=2)}
  if any(n.startswith(('apgd', 'square')) for n in names):
    from frontiers_jax.adversarial import autoattack  # noqa: PLC0415  (optional until present)
    table['apgd-ce'] = functools.partial(autoattack.apgd, steps=apgd_steps, norm=norm,
                                         loss='ce')
    table['apgd-dlr'] = functools.partial(autoattack.apgd, steps=apgd_steps, norm=norm,
                                          loss='dlr')
    table['square'] = functools.partial(autoattack.square, queries=square_queries)
  return {n: table[n] for n in names}


def evaluate(apply_fn, params, split: dict, key: jax.Array, eps_list: Sequence[float],
             attack_fns: dict[str, Attack], batch_size: int, mesh,
             progress: Progress | None = None) -> dict:
  """Clean accuracy, and accuracy under each attack and in the worst case, per
  eps. `progress` (optional) hears of every attacked batch: which eps and
  attack, how many images of all the attacks' work are done."""
  def logits_fn(p, x):
    return apply_fn({'params': p}, x)

  @functools.partial(jax.jit, static_argnames='name')
  def attack_batch(p, x, y, mask, key, eps, name):
    success = attack_fns[name](functools.partial(logits_fn, p), x, y, key, eps)[1]
    return success & (mask > 0)

  @jax.jit
  def correct_batch(p, x, y, mask):
    return jnp.sum((jnp.argmax(logits_fn(p, x), -1) == y) * mask)

  local = list(pipeline.eval_batches(split, batch_size))
  sizes = [int(np.sum(b['mask'])) for b in local]  # real rows, for the progress
  batches = [sharding.shard_batch(mesh, b) for b in local]
  count = len(split['label'])
  clean = sum(float(correct_batch(params, b['image'], b['label'], b['mask']))
              for b in batches) / count
  accuracy = {name: [] for name in attack_fns}
  worst = []
  done = 0
  for e, eps in enumerate(eps_list):
    fooled_any = []
    for b_index, b in enumerate(batches):
      fooled = jnp.zeros_like(b['mask'], dtype=bool)
      for a, name in enumerate(attack_fns):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, e), a), b_index)
        success = attack_batch(params, b['image'], b['label'], b['mask'], k,
                               jnp.float32(eps), name)
        accuracy[name].append(success)
        fooled = fooled | success
        if progress is not None:
          success.block_until_ready()  # the work done, not the work dispatched
          done += sizes[b_index]
          progress.update(done, f'eps {eps:g}, {name}')
      fooled_any.append(fooled)
    worst.append(fooled_any)
  # Robust accuracy = examples neither misclassified clean nor fooled (the
  # attacks count a clean mistake as a success).
  result = {'num_examples': count, 'clean_accuracy': clean, 'eps': list(eps_list),
            'accuracy': {}, 'worst_case': []}
  n_batches = len(batches)
  for name, successes in accuracy.items():
    result['accuracy'][name] = [
        1.0 - float(sum(jnp.sum(s) for s in successes[e * n_batches:(e + 1) * n_batches]))
        / count for e in range(len(eps_list))]
  result['worst_case'] = [1.0 - float(sum(jnp.sum(s) for s in fooled)) / count
                          for fooled in worst]
  return result


def masking_checks(result: dict, unbounded_eps: float | None = None) -> list[str]:
  """Warnings for each sign of gradient masking in an `evaluate` result.

  The "an unbounded attack must win" check runs when the largest eps is at
  least `unbounded_eps` (None: the largest eps is taken to be unbounded).
  """
  warnings = []
  eps, acc = result['eps'], result['accuracy']
  order = np.argsort(eps)
  for name, values in list(acc.items()) + [('worst case', result['worst_case'])]:
    ordered = np.asarray(values)[order]
    if np.any(np.diff(ordered) > TOLERANCE):
      warnings.append(f'{name}: robust accuracy rises with eps ({_fmt(ordered)}); '
                      'the attack is failing somewhere: suspect gradient masking')
  largest = int(order[-1])
  unbounded = unbounded_eps is None or eps[largest] >= unbounded_eps
  if unbounded and result['worst_case'][largest] > 0.05:
    warnings.append(f'worst case at the largest eps {eps[largest]:g} is '
                    f'{result["worst_case"][largest]:.1%}, not about 0: an unbounded '
                    'attack should win; suspect gradient masking')
  if 'pgd' in acc and 'fgsm' in acc:
    for i, e in enumerate(eps):
      if acc['pgd'][i] > acc['fgsm'][i] + TOLERANCE:
        warnings.append(f'eps {e:g}: PGD ({acc["pgd"][i]:.1%}) is weaker than FGSM '
                        f'({acc["fgsm"][i]:.1%}): iterative attacks should be stronger')
  white = [n for n in acc if n in WHITE_BOX]
  if 'square' in acc and white:
    for i, e in enumerate(eps):
      best_white = min(acc[n][i] for n in white)
      if acc['square'][i] < best_white - TOLERANCE:
        warnings.append(f'eps {e:g}: black-box Square ({acc["square"][i]:.1%}) beats the '
                        f'white-box attacks ({best_white:.1%}): gradients are '
                        'misleading; suspect gradient masking')
  if 'pgd-long' in acc and 'pgd' in acc:
    for i, e in enumerate(eps):
      if acc['pgd-long'][i] > acc['pgd'][i] + TOLERANCE:
        warnings.append(f'eps {e:g}: more PGD steps and restarts raised robust accuracy '
                        f'({acc["pgd"][i]:.1%} -> {acc["pgd-long"][i]:.1%})')
  return warnings


def _fmt(values) -> str:
  return ', '.join(f'{v:.3f}' for v in values if not math.isnan(v))
