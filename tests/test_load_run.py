"""`frontiers_jax.load_run` and `frontiers export`: a trained run comes back,
and goes out, without any training data.

Every workload's tiny run is trained once (generalization and lm in `make
test`, the others in `make test-matrix`), then read back with data loading
made to fail: the model must equal the one training built and the parameters
the ones `loop.restore_trained` restores with the data at hand.
"""

import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import frontiers_jax as fj
from frontiers_jax import config as config_lib
from frontiers_jax import runs
from frontiers_jax import workloads
from frontiers_jax.data import registry
from frontiers_jax.errors import UsageError
from frontiers_jax.training import loop
from conftest import REPO, each_workload, load


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """name -> workdir of its trained tiny run (trained on first use)."""
  done = {}

  def get(name):
    if name not in done:
      workdir = str(tmp_path_factory.mktemp(name) / 'run')
      runs.train(load(f'{name}.py:tiny'), workdir)
      done[name] = workdir
    return done[name]
  return get


def forbid_data(monkeypatch, tmp_path, name):
  def no_data(*args, **kwargs):
    raise AssertionError('load_run read training data')
  empty = tmp_path / 'empty'
  empty.mkdir(exist_ok=True)
  monkeypatch.setenv('FRONTIERS_DATA_DIR', str(empty))
  monkeypatch.setattr(workloads.workload_class(name), 'load_data', no_data)
  monkeypatch.setattr(registry, 'load', no_data)


@pytest.mark.parametrize('name', each_workload(in_make_test=('generalization', 'lm')))
def test_load_run_gives_the_trained_model_without_data(name, trained, tmp_path, monkeypatch):
  workdir = trained(name)
  prepared = runs.prepare(config_lib.load_run_config(workdir), workdir)
  state = jax.device_get(loop.restore_trained(prepared))
  forbid_data(monkeypatch, tmp_path, name)

  run = fj.load_run(workdir)
  assert run.step == prepared.config.num_steps
  assert run.config.to_dict() == prepared.config.to_dict()
  assert run.model == state.apply_fn.__self__  # the module training built, field for field
  chex.assert_trees_all_equal(
      jax.device_get(run.params), state.ema_params if name == 'diffusion' else state.params)
  if name == 'lm':
    assert run.tokenizer.to_dict() == prepared.workload.tokenizer.to_dict()
    tokens = prepared.data['test']['tokens'][:2, :-1]
    np.testing.assert_array_equal(run.model.apply({'params': run.params}, tokens),
                                  state.apply_fn({'params': state.params}, tokens))
  older = fj.load_run(workdir, step=8)
  assert older.step == 8
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(older.params),
                                                      jax.tree.leaves(run.params)))


def test_load_run_reports_what_is_missing(trained, tmp_path):
  with pytest.raises(UsageError, match='config.json does not exist'):
    fj.load_run(str(tmp_path))
  workdir = trained('lm')
  with pytest.raises(UsageError, match=r'no checkpoint of step 5 in .*; steps there: 8, 12'):
    fj.load_run(workdir, step=5)


def test_export_command_writes_safetensors_and_bad_input_is_one_line(trained, tmp_path):
  workdir = trained('lm')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}

  def frontiers(*args):
    return subprocess.run([sys.executable, '-m', 'frontiers_jax', 'export', *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  done = frontiers(workdir, f'--out={tmp_path / "e"}', '--step=8')
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == f'wrote {tmp_path / "e" / "model.safetensors"} (step 8)'
  assert load_file(str(tmp_path / 'e' / 'model.safetensors'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
  for args, line in [
      ((workdir, '--format=onnx'),
       "error: format: unknown format 'onnx'; allowed: safetensors, torch, hf"),
      ((), 'error: export: 0 workdirs given; give one: frontiers export WORKDIR '
           '[--format=safetensors|torch|hf]'),
      ((workdir, '--step=3'), f'error: step: no checkpoint of step 3 in {workdir}/checkpoints; '
                              'steps there: 8, 12'),
      ((str(tmp_path / 'none'),), f'error: workdir: {tmp_path / "none"}/config.json does not '
                                  'exist; pass the workdir of a run made by frontiers train')]:
    bad = frontiers(*args)
    assert bad.returncode == 2 and bad.stderr.splitlines() == [line], bad.stderr
