"""The workload registry: `config.workload` names one of these."""

import ml_collections

from frontiers_jax.errors import check
from frontiers_jax.workloads.base import Workload
from frontiers_jax.workloads import adversarial
from frontiers_jax.workloads import approximation
from frontiers_jax.workloads import bias
from frontiers_jax.workloads import diffusion
from frontiers_jax.workloads import generalization
from frontiers_jax.workloads import lm
from frontiers_jax.workloads import uncertainty

WORKLOADS: dict[str, type[Workload]] = {
    'adversarial': adversarial.Adversarial,
    'approximation': approximation.Approximation,
    'bias': bias.Bias,
    'diffusion': diffusion.Diffusion,
    'generalization': generalization.Generalization,
    'lm': lm.LanguageModel,
    'uncertainty': uncertainty.Uncertainty,
}


def create(config: ml_collections.ConfigDict) -> Workload:
  check(config.workload in WORKLOADS, 'config.workload',
        f'unknown workload {config.workload!r}',
        f'allowed: {", ".join(WORKLOADS)}')
  return WORKLOADS[config.workload](config)
