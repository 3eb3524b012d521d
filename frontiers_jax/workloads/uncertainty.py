"""Does a network know what it doesn't know?

Four methods (`config.method`) on two tasks (`config.task`):

  softmax     one plain network: a softmax classifier, or for regression a
              Gaussian mean-variance network (aleatoric only, no epistemic part);
  ensemble    M networks from M initializations (Lakshminarayanan et al. 2017),
              parameters stacked on a leading member axis, all trained in one
              vmapped step;
  mc_dropout  one network with dropout, kept on at test: T stochastic passes
              (Gal & Ghahramani 2016);
  evidential  one pass that outputs evidence: a Dirichlet over class
              probabilities (Sensoy et al. 2018) or a Normal-Inverse-Gamma over
              the Gaussian's mean and variance (Amini et al. 2020).

  cubic           y = x^3 + eps, eps ~ N(0, 3^2), x ~ U[-4, 4] (Amini et al.
                  2020, section 5.1), shown on a grid over [-6, 6]. Ensembles
                  and MC dropout use a Gaussian mean-variance head, so that the
                  mean of the predicted variances (aleatoric) and the variance
                  of the predicted means (epistemic) separate.
  classification  images of `data.name`; `config.ood` names the out-of-
                  distribution images (Fashion-MNIST test for MNIST; for the
                  embedded digits, the test digits with grey levels inverted).

Where the numbers come from:
  - the loop's evaluation (every `eval_every` steps) averages per-example
    metrics over whole splits: test accuracy, NLL, mean confidence, entropy,
    mutual information or vacuity, and the same scores on the OOD split
    (`eval_ood/...`); for cubic, the mean epistemic std inside (|x| < 4) and
    outside (|x| > 4.5) the training range and their ratio, `eval/epistemic_ratio`;
  - after training, `evaluate_uncertainty` scores every test and OOD example
    on the host: exact AUROC (the rank statistic over all pairs), the 15-bin
    ECE and reliability bins, score histograms. `figures()` writes them to
    `figures/uncertainty.json` beside the figures; the tour and
    `sweep_figures` read that file.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from frontiers_jax import config as config_lib
from frontiers_jax import data as data_lib
from frontiers_jax import models
from frontiers_jax import streams
from frontiers_jax.errors import check
from frontiers_jax.uncertainty import ensembles
from frontiers_jax.uncertainty import evidential as ev
from frontiers_jax.uncertainty import metrics
from frontiers_jax.uncertainty.models import CNN, MLP
from frontiers_jax.uncertainty import plots
from frontiers_jax.workloads.base import Workload, gradient_step
from frontiers_jax.workloads.classification import NUM_CLASSES, load_images

METHODS = ('softmax', 'ensemble', 'mc_dropout', 'evidential')
TASKS = ('cubic', 'classification')
MODELS = ('mlp', 'cnn')
# Out-of-distribution images per training data set; `inverted` is the
# in-distribution test set with grey levels x -> 1 - x.
OOD_SETS = {'mnist': ('fashion_mnist', 'inverted'), 'fashion_mnist': ('mnist', 'inverted'),
            'digits': ('inverted',)}

# Cubic: the model sees x / 4 and predicts y / 64 (the training range's
# half-width and the largest |x^3| in it), so that both are of order 1.
TRAIN_RANGE = 4.0
OUTSIDE = 4.5   # "outside the data": |x| > 4.5
X_SCALE, Y_SCALE = TRAIN_RANGE, TRAIN_RANGE**3
SHOWN_RANGE = 6.0
HISTOGRAM_BINS = 30


# --- Data ------------------------------------------------------------------------


def make_cubic(num_train: int, noise: float, grid: int, seed: int) -> dict:
  """Training points x ~ U[-4, 4], y = x^3 + N(0, noise^2); test: a regular
  grid over [-6, 6] with the noise-free y = x^3. Arrays [N, 1] and [N]."""
  rng = np.random.default_rng((seed, 0))
  x = rng.uniform(-TRAIN_RANGE, TRAIN_RANGE, num_train)
  y = x**3 + rng.normal(0.0, noise, num_train)
  grid_x = np.linspace(-SHOWN_RANGE, SHOWN_RANGE, grid)
  as_split = lambda x, y: {'x': x[:, None].astype(np.float32), 'y': y.astype(np.float32)}
  return {'train': as_split(x, y), 'test': as_split(grid_x, grid_x**3)}


def ood_images(config, test_images: np.ndarray) -> np.ndarray:
  """The out-of-distribution images `config.ood`, floats in [0, 1]."""
  if config.ood == 'inverted':
    return 1.0 - test_images
  images = data_lib.load(config.ood, config.data.dir)['test']['image']
  return images.astype(np.float32) / 255.0


# --- The workload ------------------------------------------------------------------


class Uncertainty(Workload):
  """One method on one task; see the module docstring."""

  name = 'uncertainty'
  extra_eval_splits = ('ood',)

  @property
  def regression(self) -> bool:
    return self.config.task == 'cubic'

  @property
  def num_samples(self) -> int:
    """Predictive samples at test time: members, dropout passes, or 1."""
    c = self.config
    return {'ensemble': c.ensemble.members, 'mc_dropout': c.mc_dropout.samples}.get(
        c.method, 1)

  def validate(self) -> None:
    c = self.config
    config_lib.check_choice(c, 'method', METHODS)
    config_lib.check_choice(c, 'task', TASKS)
    config_lib.check_choice(c, 'model.name', MODELS)
    check(len(c.model.hidden) > 0 and all(isinstance(w, int) and w > 0
                                          for w in c.model.hidden),
          'config.model.hidden', f'{c.model.hidden} is not allowed',
          'give positive whole numbers like 100,100')
    if c.method == 'ensemble':
      check(c.ensemble.members >= 2, 'config.ensemble.members',
            f'{c.ensemble.members} is not allowed', 'give 2 or more')
      # One global norm over all members would couple their updates.
      check(c.optim.clip_norm == 0, 'config.optim.clip_norm',
            f'{c.optim.clip_norm} couples the ensemble members',
            'give 0 (no global-norm clipping) with method=ensemble')
    if c.method == 'mc_dropout':
      check(0 < c.mc_dropout.rate < 1, 'config.mc_dropout.rate',
            f'{c.mc_dropout.rate} is not allowed', 'give a rate in (0, 1), e.g. 0.1')
      check(c.mc_dropout.samples >= 2, 'config.mc_dropout.samples',
            f'{c.mc_dropout.samples} is not allowed', 'give 2 or more')
    e = c.evidential
    config_lib.check_choice(c, 'evidential.risk', tuple(ev.CLASSIFICATION_LOSSES))
    config_lib.check_choice(c, 'evidential.evidence', tuple(ev.EVIDENCE))
    check(e.coeff >= 0, 'config.evidential.coeff', f'{e.coeff} is not allowed',
          'give 0 or more, e.g. 0.01')
    check(e.annealing_steps > 0, 'config.evidential.annealing_steps',
          f'{e.annealing_steps} is not allowed', 'give a whole number > 0')
    check(c.calibration_bins > 0, 'config.calibration_bins',
          f'{c.calibration_bins} is not allowed', 'give a whole number > 0, e.g. 15')
    if self.regression:
      check(c.model.name == 'mlp', 'config.model.name',
            f'{c.model.name!r} does not take 1-D inputs', 'give mlp with task=cubic')
      check(c.cubic.num_train > 0, 'config.cubic.num_train',
            f'{c.cubic.num_train} is not allowed', 'give a whole number > 0')
      check(c.cubic.noise > 0, 'config.cubic.noise', f'{c.cubic.noise} is not allowed',
            'give a standard deviation > 0, e.g. 3')
      check(c.cubic.grid > 1, 'config.cubic.grid', f'{c.cubic.grid} is not allowed',
            'give 2 or more')
      return
    config_lib.check_choice(c, 'data.name', tuple(OOD_SETS))
    config_lib.check_choice(c, 'ood', OOD_SETS[c.data.name])
    check(c.data.train_size >= 0, 'config.data.train_size',
          f'{c.data.train_size} is not allowed', 'give 0 (all) or more')
    data_lib.check_available(c.data.name, c.data.dir)
    if c.ood != 'inverted':
      data_lib.check_available(c.ood, c.data.dir)

  def load_data(self) -> dict:
    c = self.config
    if self.regression:
      return make_cubic(c.cubic.num_train, c.cubic.noise, c.cubic.grid, c.seed)
    splits = load_images(c)
    # No labels: the evaluation scores these images, it cannot grade them.
    splits['ood'] = {'image': ood_images(c, splits['test']['image'])}
    return splits

  # -- Model and predictions -------------------------------------------------------

  def build_model(self):
    return self.model()

  def model(self) -> nn.Module:
    c, m = self.config, self.config.model
    outputs = (4 if c.method == 'evidential' else 2) if self.regression else NUM_CLASSES
    dropout = c.mc_dropout.rate if c.method == 'mc_dropout' else 0.0
    if m.name == 'cnn':
      return CNN(tuple(m.features), m.dense, outputs, dropout)
    return MLP(tuple(m.hidden), outputs, dropout)

  def inputs(self, batch):
    return batch['x'] / X_SCALE if self.regression else batch['image']

  def create_state(self, rng, batch):
    model = self.model()
    example = self.inputs(batch)[:1]
    init = lambda key, x: model.init(key, x)['params']
    if self.config.method == 'ensemble':
      params = ensembles.init_ensemble(init, rng, self.config.ensemble.members, example)
    else:
      params = init(rng, example)
    return self.new_state(model.apply, params)

  def raw_samples(self, params, apply_fn, x, key):
    """Raw outputs of every predictive sample, [S, B, outputs]."""
    method = self.config.method
    if method == 'ensemble':
      return ensembles.ensemble_apply(lambda p, v: apply_fn({'params': p}, v), params, x)
    if method == 'mc_dropout':
      one_pass = lambda p, v, rngs: apply_fn({'params': p}, v, train=True, shared_masks=True,
                                             rngs=rngs)
      return ensembles.mc_dropout_samples(one_pass, params, x, key,
                                          self.config.mc_dropout.samples)
    return apply_fn({'params': params}, x)[None]

  def predict(self, params, apply_fn, x, key) -> dict:
    """Per-example predictions and uncertainty scores, each [B].

    Classification: `probs` [B, K], `confidence` (max prob), `entropy` of the
    predictive distribution; `mutual_info` for ensembles and MC dropout;
    `vacuity` K / S for evidential. Regression (original units): `mean`,
    `aleatoric` and `epistemic` variances.
    """
    raw = self.raw_samples(params, apply_fn, x, key)
    method = self.config.method
    if self.regression:
      if method == 'evidential':
        mean, aleatoric, epistemic = ev.nig_predictions(ev.nig_head(raw[0]))
      else:
        mean, aleatoric, epistemic = ensembles.mixture_moments(*ensembles.gaussian_head(raw))
      return {'mean': mean * Y_SCALE, 'aleatoric': aleatoric * Y_SCALE**2,
              'epistemic': epistemic * Y_SCALE**2}
    if method == 'evidential':
      alpha = ev.dirichlet_alpha(raw[0], self.config.evidential.evidence)
      probs = ev.dirichlet_probs(alpha)
      out = {'probs': probs, 'entropy': metrics.entropy(probs),
             'vacuity': ev.dirichlet_uncertainty(alpha)}
    else:
      parts = metrics.sample_uncertainty(jax.nn.softmax(raw, axis=-1))
      out = {'probs': parts.mean_NxK, 'entropy': parts.total_N}
      if method != 'softmax':
        out['mutual_info'] = parts.epistemic_N
    out['confidence'] = jnp.max(out['probs'], axis=-1)
    return out

  def score_names(self) -> tuple[str, ...]:
    """The uncertainty scores of this method (higher: less certain), its
    epistemic score first: the one the histogram figure shows."""
    return {'softmax': ('entropy',), 'evidential': ('vacuity', 'entropy')}.get(
        self.config.method, ('mutual_info', 'entropy'))

  # -- Training -------------------------------------------------------------------------

  def sample_losses(self, raw_SxBxO, batch, step):
    """The training loss of each sample (member), [S]."""
    c = self.config
    if self.regression:
      y = batch['y'] / Y_SCALE
      if c.method == 'evidential':
        # The regularizer |y - gamma| (2 nu + alpha) is linear in y's units:
        # scaled back to the units of y, `coeff` means what Amini et al.'s does.
        return ev.evidential_regression_loss(ev.nig_head(raw_SxBxO), y,
                                             c.evidential.coeff * Y_SCALE)[None]
      mean, variance = ensembles.gaussian_head(raw_SxBxO)
      return jnp.mean(ensembles.gaussian_nll(mean, variance, y), axis=-1)
    labels = batch['label']
    if c.method == 'evidential':
      alpha = ev.dirichlet_alpha(raw_SxBxO, c.evidential.evidence)
      return jax.vmap(lambda a: ev.evidential_classification_loss(
          a, labels, step, c.evidential.annealing_steps, c.evidential.risk))(alpha)
    return jax.vmap(lambda logits: optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean())(raw_SxBxO)

  def train_step(self, state, batch, rng):
    """One gradient step. An ensemble's objective is the *sum* of its members'
    losses, so each member's gradient is exactly its own; `train/loss` is
    their mean. MC dropout trains on one dropout pass."""
    x = self.inputs(batch)
    ensemble = self.config.method == 'ensemble'

    def loss_fn(params):
      if ensemble:
        raw = self.raw_samples(params, state.apply_fn, x, None)
      else:
        raw = state.apply_fn({'params': params}, x, train=True,
                             rngs={'dropout': jax.random.fold_in(rng, 0)})[None]
      losses_S = self.sample_losses(raw, batch, state.step)
      out = {'loss': jnp.mean(losses_S)}
      if not self.regression:
        out['accuracy'] = jnp.mean(jnp.argmax(raw, -1) == batch['label'])
      return jnp.sum(losses_S), out

    return gradient_step(state, loss_fn)

  # -- Evaluation ---------------------------------------------------------------------

  def eval_key(self):
    return jax.random.fold_in(jax.random.key(self.config.seed), streams.EVAL_DROPOUT)

  def eval_step(self, state, batch):
    """Masked sums. Test split: accuracy, NLL (`loss`), confidence and the
    scores; OOD split (no labels): confidence and the scores. Cubic: error
    inside, epistemic std inside and outside the training range."""
    mask = batch['mask']
    pred = self.predict(state.params, state.apply_fn, self.inputs(batch), self.eval_key())
    total = lambda v, m=mask: jnp.sum(v * m)
    if self.regression:
      return self.regression_sums(pred, batch['x'][:, 0], batch['y'], mask)
    sums = {name: total(pred[name]) for name in ('confidence',) + self.score_names()}
    if 'label' in batch:  # The OOD split has none.
      p_label = jnp.take_along_axis(pred['probs'], batch['label'][:, None], axis=-1)[:, 0]
      sums['loss'] = total(-jnp.log(jnp.maximum(p_label, jnp.finfo(jnp.float32).tiny)))
      sums['accuracy'] = total(jnp.argmax(pred['probs'], -1) == batch['label'])
    return {**sums, 'count': jnp.sum(mask)}

  def regression_sums(self, pred, x_B, y_B, mask_B):
    inside = mask_B * (jnp.abs(x_B) < TRAIN_RANGE)
    sums = {'mse_in': jnp.sum((pred['mean'] - y_B)**2 * inside),
            'aleatoric_in': jnp.sum(jnp.sqrt(pred['aleatoric']) * inside),
            'count': jnp.sum(mask_B), 'count_mse_in': jnp.sum(inside),
            'count_aleatoric_in': jnp.sum(inside)}
    if self.config.method != 'softmax':  # A single network has no epistemic part.
      outside = mask_B * (jnp.abs(x_B) > OUTSIDE)
      sums.update(epistemic_in=jnp.sum(jnp.sqrt(pred['epistemic']) * inside),
                  epistemic_out=jnp.sum(jnp.sqrt(pred['epistemic']) * outside),
                  count_epistemic_in=jnp.sum(inside), count_epistemic_out=jnp.sum(outside))
    return sums

  def derived_metrics(self, means: dict[str, float]) -> dict[str, float]:
    out = {}
    if 'eval/mse_in' in means:
      out['eval/rmse_in'] = float(np.sqrt(means['eval/mse_in']))
    if means.get('eval/epistemic_in'):
      out['eval/epistemic_ratio'] = means['eval/epistemic_out'] / means['eval/epistemic_in']
    return out

  # -- After training: whole-set scores, AUROC, calibration, figures ------------------

  def predict_all(self, params, apply_fn, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """`predict` over a whole split on one device, in padded chunks of
    eval_batch_size (one compiled function for every chunk)."""
    size = self.config.eval_batch_size
    if getattr(self, '_predict_fn', (None,))[0] is not apply_fn:  # compiled once
      self._predict_fn = (apply_fn, jax.jit(
          lambda p, x: self.predict(p, apply_fn, x, self.eval_key())))
    fn = self._predict_fn[1]
    parts = []
    for start in range(0, len(inputs), size):
      chunk = inputs[start:start + size]
      padded = np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk), axis=0)])
      out = jax.device_get(fn(params, padded))
      parts.append({k: v[:len(chunk)] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def evaluate_uncertainty(self, state, data) -> dict:
    """Every number of the report, from all test (and OOD) examples; JSON-ready."""
    c = self.config
    result = {'method': c.method, 'task': c.task}
    if self.regression:
      return {**result, **self.regression_result(state, data)}
    test, ood = data['test'], data['ood']
    pred_in = self.predict_all(state.params, state.apply_fn, test['image'])
    pred_out = self.predict_all(state.params, state.apply_fn, ood['image'])
    labels = test['label']
    probs = jnp.asarray(pred_in['probs'])
    bins = metrics.reliability_bins(probs, labels, c.calibration_bins)
    p_label = np.take_along_axis(pred_in['probs'], labels[:, None], axis=-1)[:, 0]
    result.update(
        data=c.data.name, ood=c.ood, num_test=len(labels), num_ood=len(ood['image']),
        accuracy=float(np.mean(np.argmax(pred_in['probs'], -1) == labels)),
        nll=float(np.mean(-np.log(np.maximum(p_label.astype(np.float64), 1e-300)))),
        ece=float(metrics.expected_calibration_error(probs, labels, c.calibration_bins)),
        reliability={'confidence': np.asarray(bins.confidence_B).tolist(),
                     'accuracy': np.asarray(bins.accuracy_B).tolist(),
                     'count': np.asarray(bins.count_B).tolist()},
        primary_score=self.score_names()[0], auroc={}, mean_in={}, mean_out={},
        histograms={})
    for name in self.score_names():
      scores_in, scores_out = pred_in[name], pred_out[name]
      result['auroc'][name] = metrics.auroc(scores_in, scores_out)
      result['mean_in'][name] = float(np.mean(scores_in, dtype=np.float64))
      result['mean_out'][name] = float(np.mean(scores_out, dtype=np.float64))
      # From 0 to the largest score seen (mutual information rarely nears log K).
      top = max(float(scores_in.max()), float(scores_out.max()), 1e-6)
      edges = np.linspace(0.0, top, HISTOGRAM_BINS + 1)
      result['histograms'][name] = {
          'edges': edges.tolist(),
          'in': np.histogram(np.clip(scores_in, 0, top), edges)[0].tolist(),
          'out': np.histogram(np.clip(scores_out, 0, top), edges)[0].tolist()}
    return result

  def regression_result(self, state, data) -> dict:
    test, train = data['test'], data['train']
    pred = self.predict_all(state.params, state.apply_fn, test['x'] / X_SCALE)
    x = test['x'][:, 0].astype(np.float64)
    epistemic = np.sqrt(pred['epistemic'].astype(np.float64))
    inside, outside = np.abs(x) < TRAIN_RANGE, np.abs(x) > OUTSIDE
    result = {
        'x': x.tolist(), 'truth': test['y'].astype(np.float64).tolist(),
        'mean': pred['mean'].astype(np.float64).tolist(),
        'aleatoric_std': np.sqrt(pred['aleatoric'].astype(np.float64)).tolist(),
        'epistemic_std': epistemic.tolist(),
        'train_x': train['x'][:, 0].astype(np.float64).tolist(),
        'train_y': train['y'].astype(np.float64).tolist(),
        'train_range': TRAIN_RANGE, 'outside': OUTSIDE,
        'rmse_in': float(np.sqrt(np.mean((pred['mean'][inside] - test['y'][inside])**2,
                                         dtype=np.float64))),
        'aleatoric_in': float(np.mean(np.sqrt(pred['aleatoric'][inside].astype(np.float64)))),
        'noise': self.config.cubic.noise}
    # Does the +-2 std band of the whole predictive variance reach the truth?
    total_std = np.sqrt(pred['aleatoric'].astype(np.float64) + epistemic**2)
    covered = np.abs(pred['mean'] - test['y']) <= 2 * total_std
    result.update(covered_in=float(covered[inside].mean()),
                  covered_out=float(covered[outside].mean()))
    if self.config.method != 'softmax':
      result.update(epistemic_in=float(epistemic[inside].mean()),
                    epistemic_out=float(epistemic[outside].mean()))
      result['epistemic_ratio'] = result['epistemic_out'] / result['epistemic_in']
    return result

  def headline(self, result: dict) -> dict[str, float]:
    """The headline scores of a result, as `test/...`: accuracy, NLL, ECE and
    an AUROC per score; RMSE, coverage and the epistemic ratio on the cubic."""
    keys = (('rmse_in', 'covered_in', 'covered_out', 'epistemic_ratio') if self.regression
            else ('accuracy', 'nll', 'ece'))
    out = {f'test/{k}': result[k] for k in keys if k in result}
    out.update({f'test/auroc_{name}': v for name, v in result.get('auroc', {}).items()})
    return out

  def write_result(self, result: dict, fig_dir: str) -> list[str]:
    """`fig_dir/uncertainty.json` (the whole result) and the figures of it."""
    with open(os.path.join(fig_dir, RESULT_FILE), 'w') as f:
      json.dump(result, f)
    return draw({self.config.method: result}, fig_dir)

  def report(self, state, data, history, fig_dir):
    """Scores and figures from one pass over the test (and OOD) split."""
    result = self.evaluate_uncertainty(state, data)
    return self.headline(result), self.write_result(result, fig_dir)

  def final_metrics(self, state, data):
    return self.headline(self.evaluate_uncertainty(state, data))

  def figures(self, state, data, history, fig_dir):
    return self.write_result(self.evaluate_uncertainty(state, data), fig_dir)

  def evaluate(self, state, data, workdir: str, mesh, say=print) -> str:
    """The headline scores and the figures, with the whole result in
    `figures/uncertainty.json`."""
    del mesh
    fig_dir = os.path.join(workdir, 'figures')
    os.makedirs(fig_dir, exist_ok=True)
    scores, figures = self.report(state, data, [], fig_dir)
    for name, value in scores.items():
      say(f'{name:<28} {value:.4f}')
    say(f'figures: {", ".join(os.path.basename(p) for p in figures)}')
    return os.path.join(fig_dir, RESULT_FILE)

  def describe(self, state, flops_per_step):
    params = models.count_params(state.params)
    what = {'ensemble': f'{self.config.ensemble.members} members, stacked',
            'mc_dropout': f'dropout {self.config.mc_dropout.rate:g}, '
                          f'{self.config.mc_dropout.samples} passes at test'}.get(
                              self.config.method, 'one network')
    return [f'{self.config.method} on {self.config.task}: {params:,} parameters ({what})']

  @staticmethod
  def sweep_figures(runs: dict[str, dict], fig_dir: str) -> list[str]:
    """The figures of a sweep over methods, all methods side by side."""
    return draw({value: read_result(run['workdir']) for value, run in runs.items()}, fig_dir)


RESULT_FILE = 'uncertainty.json'


def read_result(run_workdir: str) -> dict:
  """The `evaluate_uncertainty` result a finished run wrote."""
  with open(os.path.join(run_workdir, 'figures', RESULT_FILE)) as f:
    return json.load(f)


def draw(results: dict[str, dict], fig_dir: str) -> list[str]:
  """The figures of one or several runs' results ({method: result})."""
  cubic = {m: r for m, r in results.items() if r['task'] == 'cubic'}
  images = {m: r for m, r in results.items() if r['task'] != 'cubic'}
  paths = []
  if cubic:
    paths.append(plots.regression_bands(cubic, os.path.join(fig_dir, 'regression.png')))
  if images:
    paths.append(plots.ood_histograms(images, os.path.join(fig_dir, 'ood_histograms.png')))
    paths.append(plots.reliability_diagrams(images, os.path.join(fig_dir,
                                                                 'reliability.png')))
  return paths
