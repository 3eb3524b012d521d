"""Runs from configs, and trained runs back from their workdirs: what a user
script or notebook calls.

  import frontiers_jax as fj
  summary = fj.train(fj.load_config('lm:tiny'), 'runs/lm')
  run = fj.load_run('runs/lm')    # config, model, parameters, tokenizer
  logits = run.model.apply({'params': run.params}, tokens)

`train` is `frontiers train` without the command line; `prepare` checks a
config and loads its data without training (the loop's `Run`); `load_run`
reads a trained run without any training data.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from frontiers_jax import config as config_lib
from frontiers_jax import workloads
from frontiers_jax.training import checkpoints
from frontiers_jax.training import loop
from frontiers_jax.workloads.base import Workload


def prepare(config: ml_collections.ConfigDict, workdir: str) -> loop.Run:
  """The workload `config` names, checked, with its data loaded; writes nothing."""
  return loop.prepare(workloads.create(config), workdir)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and evaluates `config` in `workdir` (resuming what is there);
  returns the summary that `workdir/summary.json` holds."""
  return loop.run_training(prepare(config, workdir))


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A trained model as `load_run` reads it from a workdir."""
  config: ml_collections.ConfigDict
  workload: Workload
  model: nn.Module         # flax module: model.apply({'params': params}, ...)
  params: Any              # the parameters the workload samples and evaluates with
  step: int                # the checkpoint's step
  tokenizer: Any = None    # language models: `frontiers_jax.lm.tokenizers.Tokenizer`


def load_run(workdir: str, step: int | None = None) -> TrainedRun:
  """The config, model and parameters of the run in `workdir`, and for a
  language model its tokenizer, without reading any training data.

  `step` None takes the newest checkpoint that can be read (an unreadable one
  is skipped with a warning, never moved or changed); a step names one.
  The parameters are the EMA's where the workload keeps one (diffusion).
  """
  config = config_lib.load_run_config(workdir)
  workload = workloads.create(config)
  workload.load_artifacts(workdir)
  step, state = checkpoints.read_state(workdir, step)
  return TrainedRun(config=config, workload=workload, model=workload.build_model(),
                    params=workload.inference_params(state), step=step,
                    tokenizer=getattr(workload, 'tokenizer', None))
