"""The `frontiers` command line: its help, the packaged configs it resolves,
and the import structure that keeps each command light.

Each test runs `python -m frontiers_jax` as a subprocess, as a user runs it.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from frontiers_jax import commands
from frontiers_jax import config as config_lib
from frontiers_jax.errors import UsageError

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu'}


def frontiers(*args, cwd=REPO, timeout=60):
  return subprocess.run([sys.executable, '-m', 'frontiers_jax', *args], cwd=cwd, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command_with_one_line():
  done = frontiers('--help')
  assert done.returncode == 0, done.stderr
  listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith('  ')]
  assert listed == list(commands.COMMANDS)
  nothing = frontiers()
  assert nothing.returncode == 2 and 'commands:' in nothing.stdout


# command -> flags its --help must list, and flags of other commands it must not.
OWN_FLAGS = {
    'train': ({'config', 'workdir', 'coordinator_address'}, {'sampler', 'quick', 'sweep'}),
    'sample': ({'workdir', 'sampler', 'prompt', 'num_tokens'}, {'config', 'sweep', 'quick'}),
    'evaluate': ({'workdir'}, {'config', 'sampler', 'quick'}),
    'sweep': ({'config', 'workdir', 'sweep'}, {'sampler', 'quick'}),
    'configs': ({'experiment'}, {'workdir', 'config'}),
    'demo': ({'workdir', 'quick'}, {'config', 'sampler'}),
    'cluster': ({'num_processes', 'devices_per_process', 'program'}, {'workdir', 'config'}),
    'tpu': ({'name', 'zone', 'accelerator_type', 'dry_run'}, {'workdir', 'config'}),
}


@pytest.mark.parametrize('command', list(OWN_FLAGS))
def test_each_command_help_lists_its_own_flags_only(command):
  done = frontiers(command, '--help')
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith(f'frontiers {command}: {commands.COMMANDS[command]}')
  listed = {line.split(':')[0].strip()[2:] for line in done.stdout.splitlines()
            if line.startswith('  --')}
  own, others = OWN_FLAGS[command]
  assert own <= listed, listed
  assert not others & listed, listed
  assert 'verbosity' not in listed  # absl's own: --helpfull lists them


def test_unknown_command_is_one_line_and_exit_2():
  done = frontiers('trian', '--config=lm:tiny')
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
      "error: command: unknown command 'trian'; commands are "
      f"{', '.join(commands.COMMANDS)} (frontiers --help)"]


def test_configs_lists_every_variant_once_and_each_loads():
  done = frontiers('configs')
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  experiments = [line.split()[0] for line in lines if not line.startswith(' ')]
  assert experiments == config_lib.experiments()
  assert {'lm', 'diffusion', 'adversarial', 'approximation'} <= set(experiments)
  specs = [line.split()[0] for line in lines if line.startswith('  ')]
  assert len(specs) == len(set(specs))
  for name in experiments:
    variants = [s.split(':')[1] for s in specs if s.startswith(name + ':')]
    assert variants, name
    default = [line.split()[0] for line in lines if line.endswith('(default)')
               and line.split()[0].startswith(name + ':')]
    assert default == [f'{name}:{variants[0]}']
    # No variant named is the default variant, key for key.
    assert (config_lib.load_config(name).to_dict()
            == config_lib.load_config(f'{name}:{variants[0]}').to_dict())
    for variant in variants:
      assert config_lib.load_config(f'{name}:{variant}').workload


def test_configs_of_one_experiment_and_a_closed_pipe():
  done = frontiers('configs', '--experiment=lm')
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[0].startswith('lm ')
  assert all(line.startswith('  lm:') for line in done.stdout.splitlines()[1:])
  bad = frontiers('configs', '--experiment=lmm')
  assert bad.returncode == 2 and bad.stderr.startswith("error: experiment: unknown experiment")
  # `frontiers configs | head -1`: the reader goes away; no traceback.
  piped = subprocess.run(f'{sys.executable} -m frontiers_jax configs | head -1', shell=True,
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
  assert piped.stdout.count('\n') == 1 and piped.stderr == ''


def test_a_packaged_name_and_a_path_name_the_same_config(tmp_path):
  packaged = config_lib.load_config('lm:tiny')
  by_path = config_lib.load_config(str(REPO / 'configs' / 'lm.py') + ':tiny')
  assert packaged.to_dict() == by_path.to_dict()
  mine = tmp_path / 'mine.py'
  mine.write_text('from frontiers_jax.configs import lm\n\n'
                  'def get_config(arg=None):\n'
                  '  c = lm.get_config("tiny")\n  c.seed = 7\n  return c\n')
  assert config_lib.load_config(str(mine)).seed == 7
  with pytest.raises(UsageError, match="unknown experiment 'lmm'; experiments are "):
    config_lib.load_config('lmm:tiny')
  with pytest.raises(UsageError, match=f'{tmp_path} is a directory'):
    config_lib.load_config(str(tmp_path))


def test_train_and_sample_run_from_any_directory(tmp_path):
  """`--config=lm:tiny` needs no clone: the command runs outside the repo."""
  done = frontiers('train', '--config=lm:tiny', '--workdir=r', '--config.quiet=true',
                   cwd=tmp_path, timeout=300)
  assert done.returncode == 0, done.stderr
  assert json.loads((tmp_path / 'r' / 'summary.json').read_text())['num_steps'] == 12
  done = frontiers('sample', '--workdir=r', '--prompt=1+2=', '--num_tokens=3',
                   '--temperature=0', cwd=tmp_path, timeout=300)
  assert done.returncode == 0, done.stderr
  assert (tmp_path / 'r' / 'samples' / 'lm_seed0.txt').read_text().splitlines()[1].startswith(
      '1+2=')
  nothing = frontiers('evaluate', '--workdir=r', cwd=tmp_path, timeout=300)
  assert nothing.returncode == 2
  assert nothing.stderr.splitlines() == [
      'error: config.workload: lm has no evaluation; '
      'evaluate an adversarial, diffusion or uncertainty run']


def test_the_training_loop_imports_no_workload():
  """The loop knows the workload contract, not the workloads."""
  code = ('import sys, frontiers_jax.training.loop; '
          'print(sorted(m for m in sys.modules if m.startswith("frontiers_jax.")))')
  done = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  loaded = set(eval(done.stdout))  # noqa: S307 (a list of names printed above)
  from frontiers_jax import workloads
  assert 'frontiers_jax.workloads.base' in loaded
  assert not {f'frontiers_jax.workloads.{name}' for name in workloads.WORKLOADS} & loaded
  assert not {m for m in loaded if m.startswith(('frontiers_jax.diffusion',
                                                 'frontiers_jax.lm'))}
