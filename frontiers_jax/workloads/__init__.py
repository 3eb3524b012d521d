"""The workload registry: `config.workload` names one of these.

Each is imported when a config names it, not with this package: the training
loop imports the contract (`workloads.base`) alone, and a command that trains
a language model never imports the diffusion code.
"""

import importlib

import ml_collections

from frontiers_jax.errors import check
from frontiers_jax.workloads.base import Workload

# name -> 'module:Class', the module under frontiers_jax.workloads.
WORKLOADS: dict[str, str] = {
    'adversarial': 'adversarial:Adversarial',
    'approximation': 'approximation:Approximation',
    'bias': 'bias:Bias',
    'diffusion': 'diffusion:Diffusion',
    'generalization': 'generalization:Generalization',
    'lm': 'lm:LanguageModel',
    'uncertainty': 'uncertainty:Uncertainty',
}


def workload_class(name: str) -> type[Workload]:
  """The class registered as `name`, imported now."""
  check(name in WORKLOADS, 'config.workload', f'unknown workload {name!r}',
        f'allowed: {", ".join(WORKLOADS)}')
  module, _, cls = WORKLOADS[name].partition(':')
  return getattr(importlib.import_module(f'{__name__}.{module}'), cls)


def create(config: ml_collections.ConfigDict) -> Workload:
  return workload_class(config.workload)(config)
