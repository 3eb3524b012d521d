"""Test session setup: 8 fake CPU devices, so every test exercises sharding.

Set before jax is imported anywhere. Subprocess tests pass the same variables.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'configs')


@pytest.fixture(scope='session', autouse=True)
def eight_devices():
  assert jax.device_count() == 8, 'tests expect 8 fake CPU devices'


def load(spec: str, **overrides):
  """A locked config from configs/<spec>, quiet, with keyword overrides."""
  from frontiers_jax import config as config_lib
  config = config_lib.load_config(os.path.join(CONFIGS, spec))
  config.quiet = True
  config_lib.apply_overrides(config, [(k, str(v)) for k, v in overrides.items()])
  return config


@pytest.fixture(scope='module')
def fast_compile():
  """Tiny programs: compiling dominates, so skip most of XLA's optimizations
  for the rest of the module that asks for this."""
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)


def each_workload(in_make_test=('generalization',)):
  """Every registered workload as a pytest param; all but `in_make_test` are
  marked `matrix` (`make test-matrix`). Under `--dist loadgroup` one worker
  takes all tests of a workload, so a module fixture runs once per workload."""
  from frontiers_jax import workloads
  return [pytest.param(name, marks=[pytest.mark.xdist_group(name)] +
                       ([] if name in in_make_test else [pytest.mark.matrix]))
          for name in workloads.WORKLOADS]
