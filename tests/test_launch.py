"""End-to-end tests of `launch/train.py`, run as a user runs it: a subprocess.

Every run sees 8 fake CPU devices, no FRONTIERS_DATA_DIR and an empty TFDS
data dir, so nothing outside the repository and tmp folders is read. Covered:
bad input (one line, exit status 2, fast, workdir untouched), a diverging
run, and everything a finished run writes. Interrupted runs (SIGKILL, SIGTERM,
a full disk, ...) are tested for every workload in test_survive.py.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import jax
import pytest

from run_files import all_finite, checkpoint_steps, read_metrics, read_summary, restore

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST = pathlib.Path('/work/shared/data/mnist')  # The four original .gz files.
MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

GENERALIZATION = '--config=configs/generalization.py:tiny'
APPROXIMATION = '--config=configs/approximation.py:tiny'
WORKDIR = '--workdir={workdir}'


@pytest.fixture(scope='module', autouse=True)
def launch_env(tmp_path_factory):
  """8 CPU devices, no data dir from the environment, nothing prepared in TFDS."""
  with pytest.MonkeyPatch.context() as env:
    env.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
    env.setenv('JAX_PLATFORMS', 'cpu')
    env.setenv('TFDS_DATA_DIR', str(tmp_path_factory.mktemp('tfds')))
    env.delenv('FRONTIERS_DATA_DIR', raising=False)
    yield


def run_train(args, timeout=120, **env):
  """Runs the launcher to the end: (returncode, stdout, stderr, seconds)."""
  start = time.monotonic()
  done = subprocess.run([sys.executable, 'launch/train.py', *args], cwd=REPO,
                        env={**os.environ, **env}, capture_output=True,
                        text=True, timeout=timeout)
  return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.strip()]


def snapshot(directory):
  """Every path under `directory`, with the bytes of each file."""
  return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
          for p in sorted(directory.rglob('*'))}


# Bad input: exit status 2 and `error: <key or file>: <what is wrong>; <allowed>`.

# id: (arguments, '<key or file>: <what is wrong>', a part of what is allowed).
# `{workdir}` holds a sentinel and an earlier metrics.jsonl; `{empty}` and
# `{corrupt}` are data dirs (see `data_dirs`); `{file}` is a regular file.
BAD_INPUT = {
    'unknown_key': (
        [GENERALIZATION, WORKDIR, '--config.nonexistent=1'],
        'config.nonexistent: unknown key', 'known keys here: batch_size,'),
    'unknown_nested_key': (
        [GENERALIZATION, WORKDIR, '--config.optim.nope=1'],
        'config.optim.nope: unknown key', 'known keys here: b2, clip_norm,'),
    'int_not_a_number': (
        [GENERALIZATION, WORKDIR, '--config.batch_size=abc'],
        "config.batch_size: 'abc' is not an int", 'give a whole number'),
    'float_not_a_number': (
        [GENERALIZATION, WORKDIR, '--config.optim.learning_rate=fast'],
        "config.optim.learning_rate: 'fast' is not a float", 'give a number'),
    'zero_steps': (
        [GENERALIZATION, WORKDIR, '--config.num_steps=0'],
        'config.num_steps: 0 is not allowed', 'give a whole number > 0'),
    'negative_steps': (
        [GENERALIZATION, WORKDIR, '--config.num_steps=-5'],
        'config.num_steps: -5 is not allowed', 'give a whole number > 0'),
    'zero_batch_size': (
        [GENERALIZATION, WORKDIR, '--config.batch_size=0'],
        'config.batch_size: 0 is not allowed', 'give a whole number > 0'),
    'negative_learning_rate': (
        [GENERALIZATION, WORKDIR, '--config.optim.learning_rate=-0.1'],
        'config.optim.learning_rate: -0.1 is not allowed', 'learning rate > 0'),
    'zero_learning_rate': (
        [GENERALIZATION, WORKDIR, '--config.optim.learning_rate=0'],
        'config.optim.learning_rate: 0.0 is not allowed', 'learning rate > 0'),
    'batch_not_divisible_by_devices': (
        [GENERALIZATION, WORKDIR, '--config.batch_size=12'],
        'config.batch_size: 12 is not divisible by the 8 devices',
        'give a multiple of 8'),
    'fsdp_not_dividing_the_devices': (
        [GENERALIZATION, WORKDIR, '--config.mesh.fsdp=3'],
        'config.mesh.fsdp: 3 does not divide the 8 devices',
        'give 1 (data parallel) or another divisor of 8: 1, 2, 4, 8'),
    'unknown_compute_dtype': (
        ['--config=configs/diffusion.py:tiny', WORKDIR, '--config.model.dtype=float16'],
        "config.model.dtype: unknown value 'float16'", 'allowed: float32, bfloat16'),
    'unknown_dataset': (
        [GENERALIZATION, WORKDIR, '--config.data.name=imagenet'],
        "config.data.name: unknown value 'imagenet'", 'digits, mnist,'),
    'unknown_model': (
        [GENERALIZATION, WORKDIR, '--config.model.name=transformer'],
        "config.model.name: unknown value 'transformer'", 'mlp, cnn'),
    'unknown_randomization': (
        [GENERALIZATION, WORKDIR, '--config.randomization=shuffle'],
        "config.randomization: unknown value 'shuffle'", 'random_labels'),
    'corruption_above_one': (
        [GENERALIZATION, WORKDIR, '--config.corruption=1.5'],
        'config.corruption: 1.5 is out of range', '0.0 to 1.0'),
    'unknown_variant': (
        ['--config=configs/generalization.py:nope', WORKDIR],
        "config: unknown variant 'nope'", 'variants are digits,'),
    'missing_config_file': (
        ['--config=configs/missing.py', WORKDIR],
        'config: configs/missing.py does not exist', 'pass an existing'),
    'missing_workdir': (
        [GENERALIZATION], 'workdir: not given', 'pass --workdir=DIR'),
    'missing_data_files': (
        [GENERALIZATION, WORKDIR, '--config.data.name=mnist',
         '--config.data.dir={empty}'],
        'config.data.dir: mnist not found (looked for '
        '{empty}/mnist/train-images-idx3-ubyte.gz',
        'copy the four original idx .gz files to {empty}/mnist/'),
    'truncated_data_file': (
        [GENERALIZATION, WORKDIR, '--config.data.name=mnist',
         '--config.data.dir={corrupt}'],
        '{corrupt}/mnist/train-images-idx3-ubyte.gz: is not a complete gzip file',
        're-copy the original file'),
    'unwritable_workdir': (  # Root may write anywhere, but not under a file.
        [GENERALIZATION, '--workdir={file}/workdir'],
        'workdir: {file}/workdir is not writable ({file} is a file)',
        'choose a directory you can write to'),
    'unknown_approximation_target': (
        [APPROXIMATION, WORKDIR, '--config.target=cosine'],
        "config.target: unknown value 'cosine'", 'sine, abs, bumps, ripple'),
    'unknown_diffusion_objective': (
        ['--config=configs/diffusion.py:tiny', WORKDIR,
         '--config.diffusion.objective=score'],
        "config.diffusion.objective: unknown value 'score'", 'eps, x0, v'),
    'attention_level_beyond_the_unet': (
        ['--config=configs/diffusion.py:tiny', WORKDIR, '--config.model.attention_levels=2'],
        'config.model.attention_levels: (2,) is not allowed', 'give level indices in 0..1'),
    'warmup_longer_than_the_run': (
        ['--config=configs/diffusion.py:tiny', WORKDIR, '--config.optim.warmup_steps=12'],
        'config.optim.warmup_steps: 12 is not below num_steps 12',
        'give fewer warm-up steps than num_steps'),
    'widths_with_a_zero': (
        [APPROXIMATION, WORKDIR, '--config.widths=1,0,4'],
        'config.widths: (1, 0, 4) is not allowed', 'give positive whole numbers'),
}


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
  """An empty data dir, and one whose mnist/train-images file is truncated."""
  empty = tmp_path_factory.mktemp('empty_data')
  corrupt = tmp_path_factory.mktemp('corrupt_data')
  if MNIST.is_dir():
    (corrupt / 'mnist').mkdir()
    for name in MNIST_FILES:
      shutil.copy(MNIST / name, corrupt / 'mnist' / name)
    with open(MNIST / MNIST_FILES[0], 'rb') as f:
      (corrupt / 'mnist' / MNIST_FILES[0]).write_bytes(f.read(1000))
  return {'empty': str(empty), 'corrupt': str(corrupt)}


@pytest.mark.parametrize('args, problem, allowed', BAD_INPUT.values(),
                         ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_and_exit_2(args, problem, allowed, data_dirs,
                                          tmp_path):
  if '{corrupt}' in problem and not MNIST.is_dir():
    pytest.skip(f'{MNIST} (the original MNIST files) is missing')
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  (workdir / 'sentinel.txt').write_text('an earlier run was here\n')
  (workdir / 'metrics.jsonl').write_text('{"step": 4, "train/loss": 0.5}\n')
  (tmp_path / 'file').write_text('not a directory\n')
  paths = {**data_dirs, 'workdir': str(workdir), 'file': str(tmp_path / 'file')}
  before = snapshot(workdir)

  # A compile would log lines to stderr (JAX_LOG_COMPILES): the one-line
  # check below is what proves that bad input stops before any compilation.
  # (No wall-time bound: it failed only when the machine was loaded.)
  returncode, stdout, stderr, _ = run_train(
      [arg.format(**paths) for arg in args], timeout=60, JAX_LOG_COMPILES='1')

  assert returncode == 2, stderr
  assert 'Traceback' not in stdout + stderr
  assert len(error_lines(stderr)) == 1, stderr
  line = error_lines(stderr)[0]
  assert line.startswith('error: ')
  assert problem.format(**paths) in line
  assert allowed.format(**paths) in line
  assert not stdout.strip()
  assert snapshot(workdir) == before


# Divergence.


def test_diverging_run_exits_1_and_keeps_only_finite_checkpoints(tmp_path):
  # Adam moves every weight by ~1e30 in step 1 (still finite); step 2 is NaN.
  returncode, _, stderr, _ = run_train(
      [GENERALIZATION, f'--workdir={tmp_path}', '--config.checkpoint_every=1',
       '--config.optim.learning_rate=1e30'])

  assert returncode == 1, stderr
  assert 'Traceback' not in stderr
  # Progress lines come first on stderr; the error is the one last line.
  assert [line for line in error_lines(stderr) if line.startswith('error')] == [
      error_lines(stderr)[-1]], stderr
  match = re.fullmatch(r'error: step (\d+): train/\w+ is (nan|inf|-inf) .*',
                       error_lines(stderr)[-1])
  assert match, stderr
  step = int(match[1])
  kept = checkpoint_steps(tmp_path)
  assert kept and max(kept) < step
  assert all(all_finite(restore(tmp_path, s)) for s in kept)
  assert not (tmp_path / 'summary.json').exists()


def test_overflowing_learning_rate_never_saves_a_non_finite_state(tmp_path):
  # 1e39 is Inf in float32: step 1's loss is finite, its update is not.
  returncode, _, stderr, _ = run_train(
      [GENERALIZATION, f'--workdir={tmp_path}', '--config.checkpoint_every=1',
       '--config.optim.learning_rate=1e39'])

  assert returncode in (1, 2), stderr  # Diverged, or rejected as bad input.
  assert all(all_finite(restore(tmp_path, s)) for s in checkpoint_steps(tmp_path))


# A finished run.


def test_tiny_approximation_run_writes_every_output(tmp_path):
  returncode, stdout, stderr, _ = run_train([APPROXIMATION, f'--workdir={tmp_path}'])

  assert returncode == 0, stderr
  assert re.search(rf'done in [0-9.]+ s: {re.escape(str(tmp_path))}/summary.json', stdout)
  config = json.loads((tmp_path / 'config.json').read_text())
  assert (config['workload'], config['num_steps']) == ('approximation', 12)
  records = read_metrics(tmp_path)
  assert all('step' in r for r in records) and records[-1]['step'] == 12
  summary = read_summary(tmp_path)
  assert {'final', 'wall_time_s', 'steps_per_s'} <= summary.keys()
  assert summary['final'] == {k: v for r in records for k, v in r.items()
                              if k != 'step'}
  assert 'eval/mse_w16' in summary['final'] and summary['steps_per_s'] > 0
  assert summary['versions']['jax'] == jax.__version__
  assert summary['devices']['count'] == 8
  assert list((tmp_path / 'tensorboard').glob('events.*'))
  assert checkpoint_steps(tmp_path)[-1] == 12
  figures = sorted(p.name for p in (tmp_path / 'figures').glob('*.png'))
  assert figures and figures == sorted(summary['figures'])
