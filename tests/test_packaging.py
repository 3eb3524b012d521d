"""The package as a user installs it: one source of dependencies, pinned as
CI tested them, and a wheel that works with no clone at hand.
"""

import configparser
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest
from packaging.requirements import Requirement

from frontiers_jax.errors import UsageError

REPO = pathlib.Path(__file__).resolve().parents[1]


def declared() -> list[Requirement]:
  """setup.cfg's install_requires, then its `test` extra."""
  setup = configparser.ConfigParser()
  setup.read(REPO / 'setup.cfg')
  lines = (setup['options']['install_requires'].splitlines()
           + setup['options.extras_require']['test'].splitlines())
  return [Requirement(line) for line in lines if line.strip()]


def test_requirements_txt_is_setup_cfg_runtime_and_test_needs():
  listed = [Requirement(line) for line in (REPO / 'requirements.txt').read_text().splitlines()
            if line.strip() and not line.startswith('#')]
  assert [str(r) for r in listed] == [str(r) for r in declared()]


def test_every_requirement_has_a_range_and_a_pin_inside_it():
  pins = {}
  for line in (REPO / 'constraints.txt').read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      name, _, version = line.partition('==')
      pins[name.lower().replace('_', '-')] = version
  for requirement in declared():
    name = requirement.name.lower().replace('_', '-')
    assert any(s.operator in ('<', '<=', '~=', '==') for s in requirement.specifier), (
        f'{requirement} has no upper bound')
    assert name in pins, f'{requirement.name} is not pinned in constraints.txt'
    assert requirement.specifier.contains(pins[name]), (requirement, pins[name])


def test_every_third_party_import_is_declared():
  """Top-level imports of the package (not tests) against setup.cfg; torch is
  the `bench` extra and tensorflow_datasets the `tfds` one, both imported only
  where they are needed."""
  import_names = {'absl': 'absl-py', 'sklearn': 'scikit-learn', 'tensorboardX': 'tensorboardX',
                  'orbax': 'orbax-checkpoint', 'ml_collections': 'ml-collections',
                  'tensorflow_datasets': 'tensorflow-datasets'}
  optional = {'torch', 'tensorflow_datasets'}
  found = set()
  for path in (REPO / 'frontiers_jax').rglob('*.py'):
    for line in path.read_text().splitlines():
      words = line.split()
      if len(words) >= 2 and words[0] in ('import', 'from'):
        found.add(words[1].split('.')[0])
  stdlib = set(sys.stdlib_module_names)
  third_party = {m for m in found if m not in stdlib and m != 'frontiers_jax'} - optional
  names = {Requirement(line).name.lower().replace('_', '-') for line in runtime_requirements()}
  missing = {m for m in third_party
             if import_names.get(m, m).lower().replace('_', '-') not in names}
  assert not missing, missing


def runtime_requirements() -> list[str]:
  setup = configparser.ConfigParser()
  setup.read(REPO / 'setup.cfg')
  return [line for line in setup['options']['install_requires'].splitlines() if line.strip()]


def copy_checkout(target: pathlib.Path) -> None:
  """The tracked files of the checkout (the build reads no untracked ones)."""
  files = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True,
                         check=True).stdout.decode().split('\0')
  for name in filter(None, files):
    source, dest = REPO / name, target / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
      os.symlink(os.readlink(source), dest)
    else:
      shutil.copy2(source, dest)


def test_the_wheel_installs_and_runs_with_no_clone(tmp_path):
  """Build the wheel, install it into a fresh venv (its dependencies found in
  this environment, nothing downloaded), then from an empty directory train,
  sample and export the tiny language model."""
  source = tmp_path / 'source'
  copy_checkout(source)
  done = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w',
                         str(tmp_path / 'dist'), str(source)],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  wheel, = (tmp_path / 'dist').glob('frontiers_jax-*.whl')

  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  python = venv / 'bin' / 'python'
  site = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()'
                         '["purelib"])'], capture_output=True, text=True, check=True).stdout
  # The dependencies: this environment's site-packages, after the venv's own.
  pathlib.Path(site.strip(), 'deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
  done = subprocess.run([str(python), '-m', 'pip', 'install', '--no-index', '-q', str(wheel)],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr

  work = tmp_path / 'empty'
  work.mkdir()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ''}
  frontiers = str(venv / 'bin' / 'frontiers')

  def run(*args):
    out = subprocess.run([frontiers, *args], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout

  where = subprocess.run([str(python), '-c', 'import frontiers_jax; print(frontiers_jax.__file__)'],
                         cwd=work, env=env, capture_output=True, text=True, check=True).stdout
  assert where.startswith(site.strip()), where  # the wheel's copy, not the clone
  run('train', '--config=lm:tiny', '--workdir=r', '--config.quiet=true')
  assert 'wrote r/samples/lm_seed0.txt' in run('sample', '--workdir=r', '--num_tokens=4')
  assert 'wrote r/export/model.safetensors (step 12)' in run('export', 'r',
                                                              '--format=safetensors')
  assert 'lm:tiny' in run('configs')


def test_without_tensorflow_datasets_the_data_error_names_the_extra(monkeypatch, tmp_path):
  from frontiers_jax.data import registry  # noqa: PLC0415 (imports jax)
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *args: (
      None if name == 'tensorflow_datasets' else find_spec(name, *args)))
  monkeypatch.setattr(registry, '_tfds_sources', lambda name, tfds_dir: None)
  with pytest.raises(UsageError, match=r'mnist not found \(.*; tensorflow-datasets is not '
                     r'installed\); .* pip install "frontiers_jax\[tfds\]"'):
    registry.load('mnist', str(tmp_path))
