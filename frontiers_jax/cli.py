"""Command-line plumbing shared by the commands in `frontiers_jax.commands`.

Each command module defines its own flags (so `frontiers train --help` lists
train's only) with the helpers below, and runs under `main`. `--config.a.b=value`
overrides are taken out of argv before absl parses the rest, so that a bad key
or value is reported as the project's one-line error (exit status 2), not as
absl's.
"""

import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from frontiers_jax import config as config_lib
from frontiers_jax import distributed
from frontiers_jax.errors import EXIT_USAGE, UsageError

FLAGS = flags.FLAGS

_overrides: list[tuple[str, str]] = []


def define_config_flag(module: str) -> None:
  flags.DEFINE_string('config', None, '<experiment>[:variant] (`frontiers configs` lists '
                      'them), or path/to/file.py[:variant]; then --config.KEY=VALUE '
                      'overrides', module_name=module)


def define_workdir_flag(module: str, help_text: str) -> None:
  flags.DEFINE_string('workdir', None, help_text, module_name=module)


def define_distributed_flags(module: str) -> None:
  flags.DEFINE_string('coordinator_address', None,
                      'multi-process jobs: host:port of process 0 (default: auto-detect '
                      'a TPU pod slice or SLURM job, else run as one process)',
                      module_name=module)
  flags.DEFINE_integer('num_processes', None, 'multi-process jobs: the number of processes',
                       module_name=module)
  flags.DEFINE_integer('process_id', None, 'multi-process jobs: this process, 0 to n - 1',
                       module_name=module)


def _parse(argv: list[str]) -> list[str]:
  rest, found = config_lib.split_override_args(argv)
  _overrides.extend(found)
  try:
    return FLAGS(rest)
  except flags.Error as e:
    raise UsageError('flags', str(e), f'run {argv[0]} --help') from None


def load_config_from_flags():
  """The config named by --config, with the --config.* overrides applied."""
  if not FLAGS.config:
    raise UsageError('config', 'not given',
                     'pass --config=<experiment>[:variant], e.g. lm:tiny '
                     '(frontiers configs lists them)')
  config = config_lib.load_config(FLAGS.config)
  config_lib.apply_overrides(config, _overrides)
  return config


def prepare_trained_run():
  """The run in --workdir with its saved config and the --config.* overrides;
  checked and loaded, nothing compiled."""
  from frontiers_jax import runs  # jax is imported after parsing.
  if not FLAGS.workdir:
    raise UsageError('workdir', 'not given', 'pass --workdir=DIR of a trained run')
  config = config_lib.load_run_config(FLAGS.workdir)
  config_lib.apply_overrides(config, _overrides)
  return runs.prepare(config, FLAGS.workdir)


def main(command: Callable[[list[str]], int]) -> None:
  """Runs `command` under absl; a `UsageError` anywhere becomes exit status 2.
  A command that defines the distributed flags joins its multi-process job
  (or the one JAX detects) first."""
  def run(argv):
    if not FLAGS['verbosity'].present:  # Orbax logs every save at INFO.
      logging.set_verbosity(logging.WARNING)
    try:
      if 'coordinator_address' in FLAGS:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
      sys.exit(command(argv))
    except UsageError as e:
      print(e.line(), file=sys.stderr)
      sys.exit(EXIT_USAGE)

  try:
    app.run(run, flags_parser=_parse)
  except UsageError as e:  # Raised while parsing flags, before `run`.
    print(e.line(), file=sys.stderr)
    sys.exit(EXIT_USAGE)
