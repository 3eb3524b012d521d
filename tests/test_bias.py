"""Algorithmic bias: the coloured-background data, subgroup metrics, group
weights, DB-VAE's latent weights and loss, and the workload end to end."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from frontiers_jax.bias import dbvae
from frontiers_jax import runs
from frontiers_jax.data import bias as bias_data
from frontiers_jax.errors import UsageError
from frontiers_jax.workloads import bias
from frontiers_jax.workloads import create
from conftest import load

K = bias_data.NUM_CLASSES


def _grey(n, seed=0, size=6):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8),
          'label': rng.integers(0, K, n).astype(np.int32)}


# -- The data set ------------------------------------------------------------------

@pytest.mark.parametrize('fraction', [0.0, 0.5, 0.95, 1.0])
def test_the_aligned_fraction_holds_and_conflicts_take_the_other_colours(fraction):
  split = bias_data.make_split(_grey(20000), fraction, seed=3, stream=0)
  aligned = split['attribute'] == split['label']
  # Binomial standard error at n = 20000 is at most 0.0036: allow 4 of them.
  assert abs(aligned.mean() - fraction) < 0.015
  if fraction < 1:  # conflicting colours: the nine others, uniformly
    offsets = (split['attribute'] - split['label'])[~aligned] % K
    counts = np.bincount(offsets, minlength=K)
    assert counts[0] == 0
    assert scipy.stats.chisquare(counts[1:]).pvalue > 1e-3


def test_a_tenth_aligned_makes_the_colour_independent_of_the_label():
  split = bias_data.make_split(_grey(20000), 1 / K, seed=0, stream=1)
  table = np.zeros((K, K))
  np.add.at(table, (split['label'], split['attribute']), 1)
  assert scipy.stats.chi2_contingency(table).pvalue > 1e-3
  assert scipy.stats.chisquare(table.sum(0)).pvalue > 1e-3  # every colour equally likely


def test_the_split_is_deterministic_in_seed_and_stream():
  grey = _grey(500)
  a, b = (bias_data.make_split(grey, 0.9, 7, 0) for _ in range(2))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  for other in (bias_data.make_split(grey, 0.9, 8, 0), bias_data.make_split(grey, 0.9, 7, 1)):
    assert not np.array_equal(a['attribute'], other['attribute'])
  np.testing.assert_array_equal(a['label'], grey['label'])


def test_colourize_draws_white_strokes_on_the_attribute_colour():
  grey = np.zeros((2, 3, 3, 1), np.uint8)
  grey[:, 1, 1] = 255
  out = bias_data.colourize(grey, np.array([2, 6]))
  assert out.shape == (2, 3, 3, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, 1, 1], 255)
  for i, colour in enumerate((2, 6)):
    np.testing.assert_array_equal(out[i, 0, 0], np.round(bias_data.PALETTE[colour] * 255))


def test_group_weights_give_every_group_the_same_total():
  labels = np.array([0, 0, 0, 0, 1, 1, 2], np.int32)
  attributes = np.array([0, 0, 0, 5, 1, 3, 2], np.int32)
  w = bias_data.group_weights(labels, attributes)
  # Five groups: (0,0) x3, (0,5), (1,1), (1,3), (2,2); weight N / (5 * count).
  np.testing.assert_allclose(w, 7 / (5 * np.array([3, 3, 3, 1, 1, 1, 1])), rtol=1e-6)
  assert w.mean() == pytest.approx(1.0)


# -- Metrics -------------------------------------------------------------------------

def test_subgroup_sums_match_numpy():
  rng = np.random.default_rng(0)
  n = 50
  logits = rng.normal(size=(n, K)).astype(np.float32)
  label = rng.integers(0, K, n).astype(np.int32)
  attribute = np.where(rng.random(n) < 0.4, label, rng.integers(0, K, n)).astype(np.int32)
  mask = (np.arange(n) < 43).astype(np.float32)
  out = jax.device_get(jax.jit(bias.subgroup_sums)(logits, label, attribute, mask))
  real = mask > 0
  predicted = logits.argmax(-1)
  aligned, conflicting = real & (attribute == label), real & (attribute != label)
  expect = {
      'count': 43, 'accuracy': np.sum((predicted == label) & real),
      'aligned_accuracy': np.sum((predicted == label) & aligned),
      'count_aligned_accuracy': aligned.sum(),
      'conflicting_accuracy': np.sum((predicted == label) & conflicting),
      'count_conflicting_accuracy': conflicting.sum(),
      'follows_colour': np.sum((predicted == attribute) & conflicting),
      'count_follows_colour': conflicting.sum()}
  for key, value in expect.items():
    assert out[key] == pytest.approx(value), key
  log_p = logits - scipy.special.logsumexp(logits, -1, keepdims=True)
  assert out['loss'] == pytest.approx(-np.sum(log_p[np.arange(n), label] * mask), rel=1e-5)
  workload = create(load('bias.py:tiny'))
  means = {'eval/aligned_accuracy': 0.9, 'eval/conflicting_accuracy': 0.6}
  assert workload.derived_metrics(means)['eval/accuracy_gap'] == pytest.approx(0.3)


# -- DB-VAE ----------------------------------------------------------------------------

def _numpy_latent_weights(mu, label, bins, alpha, combine):
  """An independent reference: np.histogram per class and dimension."""
  w = np.ones(len(mu))
  for c in np.unique(label[label >= 0]):
    rows = np.flatnonzero(label == c)
    per_dim = []
    for d in range(mu.shape[1]):
      z = mu[rows, d]
      counts, edges = np.histogram(z, bins=bins, range=(z.min(), z.max()))
      which = np.clip(np.searchsorted(edges, z, side='right') - 1, 0, bins - 1)
      per_dim.append(1.0 / (counts[which] / len(rows) + alpha))
    per_dim = np.stack(per_dim, 1)
    if combine == 'product':
      raw = np.prod(per_dim, axis=1)
    else:
      raw = (per_dim / per_dim.sum(0)).max(1)
    w[rows] = raw / raw.mean()
  return w


@pytest.mark.parametrize('combine', dbvae.COMBINE)
def test_latent_weights_match_numpy_histograms(combine):
  rng = np.random.default_rng(1)
  n, d = 600, 3
  label = rng.integers(0, 4, n).astype(np.int32)
  mu = rng.normal(label[:, None], 1.0, (n, d))
  mu[:5] += 6  # a rare region: these must get the largest weights of their class
  label[-7:] = -1  # not seen yet
  out = np.asarray(jax.jit(dbvae.latent_weights, static_argnums=(2, 3, 4, 5))(
      jnp.asarray(mu, jnp.float32), label, K, 8, 1e-3, combine))
  expect = _numpy_latent_weights(mu.astype(np.float32), label, 8, 1e-3, combine)
  np.testing.assert_allclose(out, expect, rtol=2e-4, atol=1e-6)
  np.testing.assert_array_equal(out[-7:], 1.0)
  for c in range(4):
    rows = np.flatnonzero(label == c)
    assert out[rows].mean() == pytest.approx(1.0, rel=1e-4)
    rare = [i for i in range(5) if label[i] == c]
    assert all(out[i] >= np.median(out[rows]) for i in rare)


def test_kl_matches_numerical_integration_and_the_vae_loss_adds_it():
  mu = np.array([[0.3, -1.2], [0.0, 0.0]], np.float32)
  logvar = np.array([[-0.5, 0.8], [0.0, 0.0]], np.float32)
  z = np.linspace(-12, 12, 200001)
  expect = []
  for m, lv in zip(mu, logvar):
    total = 0.0
    for mi, li in zip(m, lv):
      q = scipy.stats.norm(mi, np.exp(0.5 * li))
      total += np.trapezoid(q.pdf(z) * (q.logpdf(z) - scipy.stats.norm.logpdf(z)), z)
    expect.append(total)
  kl = np.asarray(dbvae.kl_divergence(mu, logvar))
  np.testing.assert_allclose(kl, expect, rtol=1e-5, atol=1e-7)
  assert kl[1] == 0.0
  x = np.zeros((2, 2, 2, 3), np.float32)
  x_hat = np.full_like(x, 0.25)
  x_hat[1] = 0.5
  loss, reconstruction, _ = dbvae.vae_loss(x, x_hat, mu, logvar, 0.1)
  np.testing.assert_allclose(reconstruction, [0.25, 0.5])
  np.testing.assert_allclose(loss, np.array([0.25, 0.5]) + 0.1 * kl, rtol=1e-6)


# -- The workload ------------------------------------------------------------------------

@pytest.mark.parametrize('key, value, message', [
    ('method', 'fair', "unknown value 'fair'"),
    ('bias.aligned_fraction', '1.5', 'out of range'),
    ('data.name', 'cifar10', "unknown value 'cifar10'"),
    ('dbvae.alpha', '0', 'alpha'),
    ('dbvae.bins', '1', 'bins'),
    ('dbvae.combine', 'sum', "unknown value 'sum'"),
    ('dbvae.pool_factor', '0', 'pool_factor'),
    ('model.latent_dim', '0', 'latent_dim'),
])
def test_bad_values_are_one_line_usage_errors(key, value, message):
  with pytest.raises(UsageError, match=message) as info:
    create(load('bias.py:tiny', **{key: value})).validate()
  assert '\n' not in str(info.value) and key in str(info.value)


def test_the_dbvae_step_records_its_pools_and_refreshes_the_weights(fast_compile):
  workload = create(load('bias.py:tiny', method='dbvae'))
  data = workload.load_data()
  batches = workload.train_batches(data, 32, seed=0)
  state = jax.jit(workload.create_state)(jax.random.key(0), batches(0))
  step = jax.jit(workload.train_step)
  pools = []
  for s in range(4):  # tiny: pools of 2 x 32; weights from step 4
    pools.append(batches(s)['index'])
    state, _ = step(state, batches(s), jax.random.key(s))
    assert np.all(np.asarray(state.weights) == 1.0)
  seen = np.unique(np.concatenate(pools))
  label = np.asarray(state.latent_label)
  np.testing.assert_array_equal(label[seen], data['train']['label'][seen])
  assert np.all(label[np.setdiff1d(np.arange(len(label)), seen)] == -1)
  d = workload.config.dbvae
  expect = jax.jit(dbvae.latent_weights, static_argnums=(2, 3, 4, 5))(
      state.latent_mu, state.latent_label, K, d.bins, d.alpha, d.combine)
  state, metrics = step(state, batches(4), jax.random.key(4))
  np.testing.assert_allclose(state.weights, expect, rtol=1e-5)
  assert np.std(np.asarray(state.weights)[seen]) > 0
  assert np.isfinite(float(metrics['loss']))


def test_a_pool_larger_than_the_training_set_is_a_usage_error():
  with pytest.raises(UsageError, match='config.dbvae.pool_factor: pools of 512'):
    runs.prepare(load('bias.py:tiny', method='dbvae', **{'dbvae.pool_factor': 16}), '/tmp')


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_the_reweighted_loss_is_the_group_weighted_mean(fast_compile):
  workload = create(load('bias.py:tiny', method='reweight'))
  data = workload.load_data()
  batch = workload.train_batches(data, 32, seed=0)(0)
  state = jax.jit(workload.create_state)(jax.random.key(0), batch)
  _, metrics = jax.jit(workload.train_step)(state, batch, jax.random.key(0))
  logits = np.asarray(jax.jit(state.apply_fn)({'params': state.params},
                                              bias.images(batch))[0], np.float64)
  log_p = logits - scipy.special.logsumexp(logits, -1, keepdims=True)
  losses = -log_p[np.arange(32), batch['label']]
  w = bias_data.group_weights(data['train']['label'], data['train']['attribute'])
  rows = workload.train_batches(data, 32, seed=0).indices(0)
  np.testing.assert_allclose(batch['weight'], w[rows])
  assert float(metrics['loss']) == pytest.approx(np.sum(w[rows] * losses) / w[rows].sum(),
                                                 rel=1e-5)
  conflicting = batch['attribute'] != batch['label']
  assert float(metrics['conflicting_share']) == pytest.approx(
      w[rows][conflicting].sum() / w[rows].sum(), rel=1e-5)


@pytest.mark.parametrize('method', ['standard', 'dbvae'])
def test_tiny_runs_report_subgroups_and_draw_figures(tmp_path, fast_compile, monkeypatch,
                                                    method):
  if method != 'standard':  # The figures are the same code for every method.
    monkeypatch.setattr(bias.Bias, 'figures', lambda *args: [])
  workdir = str(tmp_path / method)
  summary = runs.train(load('bias.py:tiny', method=method), workdir)
  final = summary['final']
  for key in ('aligned_accuracy', 'conflicting_accuracy', 'accuracy_gap', 'follows_colour'):
    assert np.isfinite(final[f'eval/{key}']), key
  assert final['eval/accuracy_gap'] == pytest.approx(
      final['eval/aligned_accuracy'] - final['eval/conflicting_accuracy'])
  if method == 'standard':
    assert set(summary['figures']) == {'bias_examples.png', 'saliency.png',
                                       'colour_swap.png', 'subgroup_accuracy.png'}
  if method != 'dbvae':
    return
  # Resume: without its last checkpoint the run repeats steps 9-12 exactly.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '12'))
  os.remove(os.path.join(workdir, 'summary.json'))
  reference = _records(workdir)
  resumed = runs.train(load('bias.py:tiny', method=method), workdir)
  assert resumed['resumed_from_step'] == 8
  assert _records(workdir) == reference
