"""Runs from configs: what a user script or notebook calls.

  import frontiers_jax as fj
  summary = fj.train(fj.load_config('lm:tiny'), 'runs/lm')
  run = fj.load_run('runs/lm')   # config, model, parameters, tokenizer

`train` is `frontiers train` without the command line; `prepare` checks a
config and loads its data without training (the loop's `Run`).
"""

import ml_collections

from frontiers_jax import workloads
from frontiers_jax.training import loop


def prepare(config: ml_collections.ConfigDict, workdir: str) -> loop.Run:
  """The workload `config` names, checked, with its data loaded; writes nothing."""
  return loop.prepare(workloads.create(config), workdir)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and evaluates `config` in `workdir` (resuming what is there);
  returns the summary that `workdir/summary.json` holds."""
  return loop.run_training(prepare(config, workdir))
