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

import contextlib
import dataclasses
import logging
import os
import sys
from typing import Any

import flax.linen as nn
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from frontiers_jax import config as config_lib
from frontiers_jax import workloads
from frontiers_jax.errors import UsageError, check
from frontiers_jax.training import logs
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
  step, state = restore_state(workdir, step)
  return TrainedRun(config=config, workload=workload, model=workload.build_model(),
                    params=workload.inference_params(state), step=step,
                    tokenizer=getattr(workload, 'tokenizer', None))


def restore_state(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, the train state as nested dicts of arrays) of a checkpoint,
  restored without a template, read-only."""
  directory = os.path.join(workdir, 'checkpoints')
  if not logs.is_remote(directory):
    directory = os.path.abspath(directory)  # Orbax takes absolute paths only.
  check(epath.Path(directory).is_dir(), 'workdir', f'no checkpoints in {workdir}',
        f'train first: frontiers train --workdir={workdir}')
  with _quiet_orbax():
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
      steps = sorted(manager.all_steps())
      check(bool(steps), 'workdir', f'no checkpoint in {directory}',
            f'train first: frontiers train --workdir={workdir}')
      if step is not None:
        check(step in steps, 'step', f'no checkpoint of step {step} in {directory}',
              f'steps there: {", ".join(map(str, steps))}')
      tried = []
      for candidate in ([step] if step is not None else reversed(steps)):
        try:
          item = manager.restore(candidate, args=ocp.args.StandardRestore())
        except Exception as e:  # Orbax raises many types for damaged files.
          first_line = (str(e).splitlines() or [''])[0][:160]
          tried.append(f'{candidate} ({type(e).__name__}: {first_line})')
          continue
        if tried:
          print(f'warning: checkpoints {", ".join(tried)} in {directory} are unreadable; '
                f'using step {candidate}', file=sys.stderr)
        return candidate, item['state']
    finally:
      manager.close()
  raise UsageError(directory, f'no checkpoint could be read (tried {", ".join(tried)})',
                   'retrain, or restore the checkpoints from a copy')


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs a WARNING for every read-only manager it opens."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)
