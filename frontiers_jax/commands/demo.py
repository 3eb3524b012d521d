"""The lecture tour on bundled data, written to one HTML report.

  frontiers demo [--workdir=runs/demo] [--quick]
"""

import os

from absl import flags

from frontiers_jax import cli

cli.define_workdir_flag(__name__, 'where the runs and report.html go (default: runs/demo)')
flags.DEFINE_bool('quick', False, 'tiny configs: a smoke test in seconds')
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  del argv
  from frontiers_jax import config as config_lib
  from frontiers_jax import tour  # jax is imported after parsing.
  path = tour.run_tour(FLAGS.workdir or 'runs/demo', config_lib.CONFIGS_DIR, quick=FLAGS.quick)
  print(f'report: {os.path.abspath(path)}')
  return 0


def run() -> None:
  cli.main(main)
