"""The uncertainty workload (configs/uncertainty.py): each method's step, the
evaluation against independent float64 references, finiteness, bad input."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from frontiers_jax import runs
from frontiers_jax.data import pipeline
from frontiers_jax.errors import UsageError
from frontiers_jax.workloads import uncertainty as unc
from conftest import load
from test_uncertainty import ece_by_loop  # Guo et al. 2017, eq. 3, float64

pytestmark = pytest.mark.usefixtures('fast_compile')


def workload_and_state(spec, seed=0, **overrides):
  config = load(f'uncertainty.py:{spec}', **overrides)
  workload = unc.Uncertainty(config)
  workload.validate()
  data = workload.load_data()
  batch = workload.train_batches(data, config.batch_size, config.seed)(0)
  state = jax.jit(workload.create_state)(jax.random.key(seed), batch)
  return workload, data, batch, state


def members(tree, m):
  return jax.tree.map(lambda a: a[m], tree)


@pytest.mark.parametrize('spec,model', [('tiny_ensemble', 'mlp'), ('tiny_cubic_ensemble', 'mlp')])
def test_ensemble_members_differ_and_one_step_trains_each_on_its_own_loss(spec, model):
  workload, _, batch, state = workload_and_state(spec, **{'model.name': model})
  m_count = workload.config.ensemble.members
  chex.assert_tree_shape_prefix(state.params, (m_count,))
  kernels = jax.tree.leaves(state.params)[1]  # a kernel: biases start at 0 in every member
  assert kernels.ndim >= 3
  assert all(not np.allclose(kernels[i], kernels[j]) for i in range(m_count) for j in range(i))

  def member_loss(params_m):  # member m alone, as if it were the only network
    raw = state.apply_fn({'params': params_m}, workload.inputs(batch))[None]
    return workload.sample_losses(raw, batch, 0)[0]

  def ensemble_objective(params):
    raw = workload.raw_samples(params, state.apply_fn, workload.inputs(batch), None)
    return jnp.sum(workload.sample_losses(raw, batch, 0))

  grads = jax.jit(jax.grad(ensemble_objective))(state.params)
  own_loss_and_grad = jax.jit(jax.value_and_grad(member_loss))
  own_losses = []
  for m in range(m_count):
    loss_m, grad_m = own_loss_and_grad(members(state.params, m))
    chex.assert_trees_all_close(members(grads, m), grad_m, rtol=1e-5, atol=1e-7)
    own_losses.append(float(loss_m))
  new_state, metrics = jax.jit(workload.train_step)(state, batch, jax.random.key(1))
  np.testing.assert_allclose(metrics['loss'], np.mean(own_losses), rtol=1e-5)
  for m in range(m_count):  # every member moved, in one step
    moved = jax.tree.map(lambda a, b: np.abs(a[m] - b[m]).max(), new_state.params,
                         state.params)
    assert max(jax.tree.leaves(moved)) > 0


def test_mc_dropout_passes_differ_and_are_reproducible():
  workload, data, _, state = workload_and_state('tiny_mc_dropout')
  x = data['test']['image'][:16]
  samples = jax.jit(lambda p, v, k: workload.raw_samples(p, state.apply_fn, v, k))
  raw_TxBxK = samples(state.params, x, workload.eval_key())
  chex.assert_shape(raw_TxBxK, (workload.config.mc_dropout.samples, 16, 10))
  t_count = raw_TxBxK.shape[0]
  assert all(not np.allclose(raw_TxBxK[i], raw_TxBxK[j])
             for i in range(t_count) for j in range(i))
  np.testing.assert_array_equal(raw_TxBxK, samples(state.params, x, workload.eval_key()))
  # One mask per pass for the whole batch: a row's samples do not depend on the others.
  np.testing.assert_allclose(samples(state.params, x[8:], workload.eval_key()),
                             raw_TxBxK[:, 8:], rtol=1e-5, atol=1e-6)
  pred = jax.jit(lambda p: workload.predict(p, state.apply_fn, x, workload.eval_key()))(
      state.params)
  assert (np.asarray(pred['mutual_info']) > 0).all()


def test_evidential_outputs_are_valid_dirichlet_and_nig():
  workload, data, _, state = workload_and_state('tiny_evidential')
  pred = jax.jit(lambda p, x: workload.predict(p, state.apply_fn, x, None))(
      state.params, data['test']['image'][:32])
  np.testing.assert_allclose(pred['probs'].sum(-1), 1.0, rtol=1e-6)
  assert ((pred['vacuity'] > 0) & (pred['vacuity'] <= 1)).all()
  workload, data, _, state = workload_and_state('tiny_cubic_evidential')
  pred = jax.jit(lambda p, x: workload.predict(p, state.apply_fn, x, None))(
      state.params, data['test']['x'] / unc.X_SCALE)
  chex.assert_tree_all_finite(pred)
  assert (pred['aleatoric'] > 0).all() and (pred['epistemic'] > 0).all()


@pytest.mark.parametrize('method', unc.METHODS)
def test_eval_sums_against_float64_reference(method):
  """Masked sums of one padded eval batch, from the predicted probabilities."""
  workload, data, _, state = workload_and_state(f'tiny_{method}')
  batch = {'image': data['test']['image'][:24], 'label': data['test']['label'][:24],
           'mask': np.r_[np.ones(20), np.zeros(4)].astype(np.float32)}
  sums = jax.jit(workload.eval_step)(state, batch)
  pred = jax.jit(lambda p, x: workload.predict(p, state.apply_fn, x, workload.eval_key()))(
      state.params, batch['image'])
  probs = np.asarray(pred['probs'], np.float64)[:20]
  labels = batch['label'][:20]
  assert float(sums['count']) == 20
  np.testing.assert_allclose(sums['accuracy'], np.sum(probs.argmax(-1) == labels))
  np.testing.assert_allclose(sums['loss'], -np.log(probs[np.arange(20), labels]).sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(sums['confidence'], probs.max(-1).sum(), rtol=1e-5)
  np.testing.assert_allclose(sums['entropy'], -np.sum(probs * np.log(probs)), rtol=1e-5)
  ood = jax.jit(workload.eval_step)(state, {'image': batch['image'], 'mask': batch['mask']})
  assert set(ood) == {'confidence', 'count', *workload.score_names()}


def reference_auroc(negative, positive):
  """P(pos > neg) + 1/2 P(pos = neg) over all pairs."""
  pos, neg = np.asarray(positive, np.float64)[:, None], np.asarray(negative, np.float64)
  return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def test_final_evaluation_against_references_and_the_loops_eval_step():
  """Whole-set ECE, AUROC and histograms against independent float64
  references; accuracy and OOD means equal the loop's eval-step means."""
  workload, data, _, state = workload_and_state('tiny_mc_dropout')
  result = workload.evaluate_uncertainty(state, data)
  pred_in = workload.predict_all(state.params, state.apply_fn, data['test']['image'])
  pred_out = workload.predict_all(state.params, state.apply_fn, data['ood']['image'])
  labels = data['test']['label']
  probs = pred_in['probs'].astype(np.float64)
  assert result['accuracy'] == pytest.approx(np.mean(probs.argmax(-1) == labels))
  assert result['ece'] == pytest.approx(ece_by_loop(probs, labels, 15), abs=1e-5)
  assert sum(result['reliability']['count']) == len(labels)
  eval_step = jax.jit(workload.eval_step)
  means = {}
  for split in ('test', 'ood'):
    batches = pipeline.eval_batches(data[split], workload.config.eval_batch_size)
    sums = jax.tree.map(lambda *v: sum(v), *[eval_step(state, b) for b in batches])
    means[split] = {k: float(v) / float(sums['count']) for k, v in sums.items()}
  # The host pass draws the eval step's dropout masks (same key, one mask per pass).
  assert result['accuracy'] == pytest.approx(means['test']['accuracy'], abs=1e-6)
  for name in ('entropy', 'mutual_info'):
    assert result['auroc'][name] == pytest.approx(
        reference_auroc(pred_in[name], pred_out[name]), abs=1e-12)
    assert result['mean_out'][name] == pytest.approx(means['ood'][name], rel=1e-5)
    assert result['mean_in'][name] == pytest.approx(means['test'][name], rel=1e-5)
    histogram = result['histograms'][name]
    assert sum(histogram['in']) == len(labels) and sum(histogram['out']) == len(labels)
  # The headline numbers the loop puts in summary['final'].
  assert workload.final_metrics(state, data) == {
      'test/accuracy': result['accuracy'], 'test/nll': result['nll'],
      'test/ece': result['ece'], 'test/auroc_mutual_info': result['auroc']['mutual_info'],
      'test/auroc_entropy': result['auroc']['entropy']}


def test_cubic_epistemic_uncertainty_grows_outside_the_training_range(tmp_path):
  config = load('uncertainty.py:tiny_cubic_ensemble', num_steps=300, log_every=100,
                eval_every=300, checkpoint_every=300, batch_size=64,
                **{'cubic.num_train': 512, 'optim.learning_rate': 5e-3})
  summary = runs.train(config, str(tmp_path))
  final = summary['final']
  result = unc.read_result(str(tmp_path))
  assert final['eval/epistemic_ratio'] > 3, final
  assert result['epistemic_ratio'] == pytest.approx(final['eval/epistemic_ratio'], rel=1e-4)
  assert final['test/epistemic_ratio'] == result['epistemic_ratio']
  assert final['test/rmse_in'] == result['rmse_in']
  assert 0 <= final['test/covered_in'] <= 1 and 0 <= final['test/covered_out'] <= 1
  # The variance head learned the noise level (std 3) inside the data.
  assert 1.5 < final['eval/aleatoric_in'] < 6, final
  assert summary['figures'] == ['regression.png']


EXTREME = st.floats(-1e4, 1e4, width=32) | st.sampled_from([1e-30, -1e-30, 0.0])


@settings(max_examples=15, deadline=None)
@given(raw=hnp.arrays(np.float32, (2, 3, 10), elements=EXTREME),
       y=hnp.arrays(np.float32, (3,), elements=st.floats(-300, 300, width=32)),
       step=st.integers(0, 10**6))
def test_every_training_loss_and_gradient_is_finite_for_extreme_outputs(raw, y, step):
  for method in unc.METHODS:
    for task, outputs in (('classification', 10), ('cubic', 4 if method == 'evidential' else 2)):
      workload = _WORKLOADS[method, task]
      raw_SxBxO = raw[:1 if method in ('softmax', 'evidential') else 2, :, :outputs]
      batch = {'label': np.arange(3, dtype=np.int32), 'y': y}
      value, grad = _loss_and_grad(workload, raw_SxBxO, batch, step)
      assert np.isfinite(value) and np.isfinite(grad).all(), (method, task)


_WORKLOADS = {(m, t): unc.Uncertainty(load(f'uncertainty.py:tiny_{m}', task=t))
              for m in unc.METHODS for t in unc.TASKS}
_JITTED = {}


def _loss_and_grad(workload, raw, batch, step):
  fn = _JITTED.setdefault(id(workload), jax.jit(jax.value_and_grad(
      lambda r, b, s: workload.sample_losses(r, b, s).sum())))
  return fn(jnp.asarray(raw), batch, step)


@pytest.mark.parametrize('overrides,where,allowed', [
    ({'method': 'bayes'}, 'config.method', 'softmax, ensemble, mc_dropout, evidential'),
    ({'task': 'sine'}, 'config.task', 'cubic, classification'),
    ({'ood': 'fashion_mnist'}, 'config.ood', 'allowed: inverted'),
    ({'ensemble.members': 1}, 'config.ensemble.members', 'give 2 or more'),
    ({'optim.clip_norm': 1.0}, 'config.optim.clip_norm', 'give 0'),
    ({'method': 'mc_dropout', 'mc_dropout.rate': 1.0}, 'config.mc_dropout.rate', '(0, 1)'),
    ({'evidential.risk': 'hinge'}, 'config.evidential.risk', 'mse, digamma'),
    ({'task': 'cubic', 'model.name': 'cnn'}, 'config.model.name', 'give mlp'),
    ({'calibration_bins': 0}, 'config.calibration_bins', 'give a whole number > 0'),
    ({'data.name': 'cifar10'}, 'config.data.name', 'mnist, fashion_mnist, digits'),
])
def test_bad_values_are_one_usage_error_before_anything_runs(tmp_path, overrides, where,
                                                             allowed):
  config = load('uncertainty.py:tiny', **overrides)
  with pytest.raises(UsageError) as error:
    runs.prepare(config, str(tmp_path / 'run'))
  assert error.value.where == where and allowed in str(error.value)
  assert '\n' not in error.value.line()
  assert not os.path.exists(tmp_path / 'run')


def test_unknown_variant_names_the_variants():
  with pytest.raises(UsageError, match='mnist_evidential'):
    load('uncertainty.py:mnist_bayes')
  assert json.loads(json.dumps(load('uncertainty.py:cubic_mc_dropout').to_dict()))[
      'method'] == 'mc_dropout'


def test_evaluate_launcher_rescores_a_run_as_its_summary_says(tmp_path):
  import subprocess
  import sys
  from conftest import REPO
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  workdir = str(tmp_path / 'run')
  subprocess.run([sys.executable, 'launch/train.py', '--config=configs/uncertainty.py:tiny_softmax',
                  f'--workdir={workdir}', '--config.quiet=true'],
                 cwd=REPO, env=env, check=True, capture_output=True)
  with open(os.path.join(workdir, 'summary.json')) as f:
    final = json.load(f)['final']
  assert {'test/accuracy', 'test/nll', 'test/ece', 'test/auroc_entropy'} <= set(final)
  os.remove(os.path.join(workdir, 'figures', 'reliability.png'))  # both written again
  os.remove(os.path.join(workdir, 'figures', unc.RESULT_FILE))
  out = subprocess.run([sys.executable, 'launch/evaluate.py', f'--workdir={workdir}'],
                       cwd=REPO, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  printed = dict(line.split() for line in out.stdout.splitlines() if line.startswith('test/'))
  assert {k: float(v) for k, v in printed.items()} == pytest.approx(
      {k: v for k, v in final.items() if k.startswith('test/')}, abs=1e-4)
  with open(os.path.join(workdir, 'figures', unc.RESULT_FILE)) as f:
    assert json.load(f)['ece'] == pytest.approx(final['test/ece'], abs=1e-6)
  assert os.path.isfile(os.path.join(workdir, 'figures', 'reliability.png'))
