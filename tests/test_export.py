"""Parameters out of the project and back in: safetensors (checked against the
safetensors library), the PyTorch twins' state_dict and a Hugging Face GPT-2
(checked against torch and transformers), and `config.init_from`.

The torch and transformers checks need the `bench` extra (`pip install -e
.[bench] transformers`) and skip without it, like the twin tests.
"""

import json
import os
import subprocess
import sys

import chex
import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors
from safetensors.numpy import load_file, save_file

import frontiers_jax as fj
from frontiers_jax import export
from frontiers_jax import params_io
from frontiers_jax import runs
from frontiers_jax.errors import UsageError
from frontiers_jax.training import loop
from conftest import REPO, load

ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu'}


@pytest.fixture(scope='module')
def lm_run(tmp_path_factory):
  """A trained lm:tiny: a GPT with learned positions on 1-digit additions."""
  workdir = str(tmp_path_factory.mktemp('lm') / 'run')
  runs.train(load('lm.py:tiny'), workdir)
  return workdir


def frontiers(*args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', 'frontiers_jax', *args], cwd=cwd, env=ENV,
                        capture_output=True, text=True, timeout=300)


# -- safetensors ---------------------------------------------------------------------


def test_safetensors_written_here_read_by_the_library_and_back(tmp_path):
  tensors = {'a.b': np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16),
             'c': np.array([-1, 2], np.int32), 'd': np.zeros((0, 3), np.float32),
             'e.f.g': np.linspace(-1, 1, 7, dtype=np.float64), 'h': np.array(True)}
  path = params_io.write_safetensors(str(tmp_path / 'x.safetensors'), tensors, {'k': 'v'})
  with safetensors.safe_open(path, framework='numpy') as f:
    assert f.metadata() == {'k': 'v'}
    assert set(f.keys()) == set(tensors)
    for name in ('c', 'd', 'e.f.g', 'h'):
      np.testing.assert_array_equal(f.get_tensor(name), tensors[name])
  back, metadata = params_io.read_safetensors(path)
  assert metadata == {'k': 'v'} and back.keys() == tensors.keys()
  for name, value in tensors.items():
    assert back[name].dtype == value.dtype and back[name].shape == value.shape
    np.testing.assert_array_equal(back[name], value)
  # A file the library wrote reads here the same.
  save_file({'w': np.eye(3, dtype=np.float32)}, str(tmp_path / 'lib.safetensors'),
            metadata={'m': '1'})
  assert params_io.read_safetensors(str(tmp_path / 'lib.safetensors'))[1] == {'m': '1'}
  np.testing.assert_array_equal(
      params_io.read_safetensors(str(tmp_path / 'lib.safetensors'))[0]['w'], np.eye(3))


@pytest.mark.parametrize('content, what', [
    (b'abc', 'shorter than 8 bytes'), (b'\xff' * 8 + b'{}', 'a header of'),
    ((4).to_bytes(8, 'little') + b'nope', 'the header is not JSON')])
def test_a_file_that_is_not_safetensors_is_one_line(tmp_path, content, what):
  path = tmp_path / 'bad.safetensors'
  path.write_bytes(content)
  with pytest.raises(UsageError, match=f'is not a safetensors file \\({what}'):
    params_io.read_safetensors(str(path))


def test_safetensors_export_holds_every_parameter_and_the_run(lm_run, tmp_path):
  run = fj.load_run(lm_run)
  path, = export.export(run, 'safetensors', str(tmp_path / 'out'))
  tensors = load_file(path)
  flat = params_io.flatten(jax.device_get(run.params))
  assert tensors.keys() == flat.keys()
  assert 'block_0.attention.query.kernel' in tensors
  for key, value in flat.items():
    assert tensors[key].dtype == value.dtype
    np.testing.assert_array_equal(tensors[key], value)
  _, metadata = params_io.read_safetensors(path)
  assert metadata['workload'] == 'lm' and metadata['step'] == '12'
  assert json.loads(metadata['config'])['model']['width'] == run.config.model.width
  assert json.loads(metadata['tokenizer']) == run.tokenizer.to_dict()


# -- PyTorch and Hugging Face ----------------------------------------------------------


def test_torch_export_is_the_twins_state_dict(lm_run, tmp_path):
  torch = pytest.importorskip('torch')
  from frontiers_jax.bench import torch_gpt  # noqa: PLC0415 (needs torch)
  run = fj.load_run(lm_run)
  path, = export.export(run, 'torch', str(tmp_path / 'out'))
  twin = torch_gpt.TorchGPT.from_module(run.model)
  twin.load_state_dict(torch.load(path))
  tokens = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], np.int32) % run.model.vocab_size
  want = np.asarray(run.model.apply({'params': run.params}, tokens))
  with torch.no_grad():
    got = twin.eval()(torch.from_numpy(tokens).long()).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_hf_export_loads_in_transformers_and_decodes_as_frontiers_sample(lm_run, tmp_path):
  """The exported GPT-2 gives the JAX logits within 1e-4 and greedy-decodes the
  tokens `frontiers sample --temperature=0` prints."""
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  run = fj.load_run(lm_run)
  done = frontiers('export', lm_run, '--format=hf', f'--out={tmp_path / "hf"}')
  assert done.returncode == 0, done.stderr
  model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / 'hf')).eval()
  tokens = np.array([[1, 2, 3, 4, 5], [0, 6, 7, 8, 9]], np.int32) % run.model.vocab_size
  with torch.no_grad():
    logits = model(torch.from_numpy(tokens).long()).logits.numpy()
  np.testing.assert_allclose(logits, run.model.apply({'params': run.params}, tokens),
                             rtol=1e-4, atol=1e-4)

  prompt, new = '1+', run.model.context - 2  # GPT-2 stops at its position table
  done = frontiers('sample', f'--workdir={lm_run}', f'--prompt={prompt}', '--temperature=0',
                   f'--num_tokens={new}', f'--out={tmp_path / "greedy"}')
  assert done.returncode == 0, done.stderr
  ours = (tmp_path / 'greedy.txt').read_text().splitlines()[1]
  ids = torch.tensor(run.tokenizer.encode(prompt)[None].astype(np.int64))
  with torch.no_grad():
    out = model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=0)
  assert run.tokenizer.decode(out[0].numpy()) == ours
  tokenizer = json.loads((tmp_path / 'hf' / 'frontiers_tokenizer.json').read_text())
  assert tokenizer == run.tokenizer.to_dict()


def test_formats_a_model_lacks_are_one_line_errors(lm_run, tmp_path):
  rotary = str(tmp_path / 'rotary')
  runs.train(load('lm.py:tiny', **{'model.positions': 'rotary', 'num_steps': 4}), rotary)
  done = frontiers('export', rotary, '--format=hf')
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
      'error: format: GPT-2 has learned positions, this model rotary ones; export '
      '--format=safetensors, or train with --config.model.positions=learned']
  approximation = str(tmp_path / 'approximation')
  runs.train(load('approximation.py:tiny', num_steps=4), approximation)
  for fmt, line in (('torch', 'error: format: the approximation model (WidthBank) has no '
                              'PyTorch twin; export --format=safetensors; twins exist for lm, '
                              'diffusion and the cnn classifier'),
                    ('hf', 'error: format: hf is for language models, not approximation; '
                           'export --format=safetensors')):
    done = frontiers('export', approximation, f'--format={fmt}')
    assert done.returncode == 2 and done.stderr.splitlines() == [line], done.stderr
  assert not os.path.exists(os.path.join(approximation, 'export'))


# -- init_from ---------------------------------------------------------------------


def test_init_from_a_workdir_or_an_export_starts_from_its_parameters(lm_run, tmp_path):
  source = fj.load_run(lm_run)
  exported, = export.export(source, 'safetensors', str(tmp_path / 'export'))
  for name, init_from in (('from_run', lm_run), ('from_file', exported)):
    run = runs.prepare(load('lm.py:tiny', init_from=init_from), str(tmp_path / name))
    _, state, _, _ = loop._fresh_state(run)
    assert int(state.step) == 0
    chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(source.params))
    moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, 'ndim', 0) > 0]
    assert moments and all(not np.any(np.asarray(m)) for m in moments)  # a fresh optimizer


@pytest.mark.parametrize('overrides, message', [
    ({'model.width': 32}, r'block_0\.attention\.key\.kernel is \(16, 16\) in .*, \(32, 32\) '
                          'here; give the parameters of a model of this config'),
    ({'model.num_layers': 2}, 'has no parameter block_1.attention.key.kernel'),
])
def test_init_from_parameters_of_another_model_is_one_line(lm_run, overrides, message):
  config = load('lm.py:tiny', init_from=lm_run, **overrides)
  run = runs.prepare(config, '/nonexistent/never')
  with pytest.raises(UsageError, match=message):
    loop._fresh_state(run)


def test_init_from_what_is_not_a_run_is_one_line(tmp_path):
  (tmp_path / 'w.npz').write_bytes(b'')
  for source, message in ((tmp_path / 'none', 'does not exist'),
                          (tmp_path, 'is a directory but not a run'),
                          (tmp_path / 'w.npz', 'is not a .safetensors file')):
    with pytest.raises(UsageError, match=f'config.init_from: {source} {message}'):
      runs.prepare(load('lm.py:tiny', init_from=str(source)), str(tmp_path / 'run'))


def test_fine_tuning_from_a_run_starts_where_it_ended_and_resumes_its_own(lm_run, tmp_path):
  workdir = tmp_path / 'tuned'
  args = ('train', '--config=lm:tiny', f'--config.init_from={lm_run}', f'--workdir={workdir}',
          '--config.quiet=true')
  done = frontiers(*args)
  assert done.returncode == 0, done.stderr
  first = lambda w: json.loads(open(os.path.join(w, 'metrics.jsonl')).readline())
  assert first(workdir)['train/loss'] < first(lm_run)['train/loss'] - 0.1
  # A rerun resumes from its own checkpoint, even with the source gone.
  done = frontiers(*args[:3], '--config.init_from=/gone', *args[3:], '--config.num_steps=16')
  assert done.returncode == 0, done.stderr
  assert json.loads((workdir / 'summary.json').read_text())['resumed_from_step'] == 12
