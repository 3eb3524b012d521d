"""Trains, evaluates and plots one experiment from a config.

  frontiers train --config=lm:tiny --workdir=D [--config.seed=1 ...]

Bad input exits with status 2 and one line `error: <key or file>: <what is
wrong>; <what is allowed>`, before anything is compiled or written. A run
that diverges (NaN/Inf) exits with 1; one stopped by SIGTERM exits with 143
after writing a checkpoint; one that cannot write its workdir exits with 74.
Running the same command again resumes.
"""

import os
import sys

from frontiers_jax import cli

cli.define_config_flag(__name__)
cli.define_workdir_flag(__name__, 'directory for checkpoints, logs, figures')
cli.define_distributed_flags(__name__)
FLAGS = cli.FLAGS


def main(argv: list[str]) -> int:
  del argv
  import jax  # noqa: PLC0415 (imported after parsing: a second)

  from frontiers_jax import runs
  from frontiers_jax.training import loop
  config = cli.load_config_from_flags()
  try:
    summary = runs.train(config, FLAGS.workdir)
  except loop.Diverged as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except loop.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr)
    return loop.EXIT_PREEMPTED
  except loop.WriteFailed as e:
    # On a line of its own: Orbax's threads may have left one unfinished.
    print(f'\nerror: {e}; free space or fix the permissions, then rerun to resume',
          file=sys.stderr, flush=True)
    # Orbax's threads of the failed save can wait minutes for signals that
    # never come (seen: 5 min), holding the exit; nothing is left to write.
    sys.stdout.flush()
    os._exit(loop.EXIT_WRITE_FAILED)
  if jax.process_index() == 0:
    print(f'done in {summary["wall_time_s"]:.1f} s: {FLAGS.workdir}/summary.json', flush=True)
  return 0


def run() -> None:
  cli.main(main)
