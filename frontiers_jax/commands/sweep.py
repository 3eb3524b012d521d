"""Trains one config over several values of one key; draws the comparisons.

  frontiers sweep --config=generalization:mnist --workdir=D \\
      --sweep=randomization=none,partial,random_labels,shuffled_pixels,random_pixels,gaussian

Run i trains in `D/<key>=<value>/` (rerunning resumes); the figures that
compare the runs go to `D/figures/`, and `D/report.html` gathers them. A
config may name its own sweep (emergence: the model widths).
"""

import os

from absl import flags

from frontiers_jax import cli
from frontiers_jax.errors import UsageError

cli.define_config_flag(__name__)
cli.define_workdir_flag(__name__, 'directory of the runs, figures and report.html')
cli.define_distributed_flags(__name__)
flags.DEFINE_string('sweep', None, "KEY=V1,V2,...: the config key and its values "
                    "(default: the config's `sweep` entry)")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  del argv
  from frontiers_jax import sweep as sweep_lib  # jax is imported after parsing.
  config = cli.load_config_from_flags()
  key, values = sweep_lib.sweep_spec(FLAGS.sweep, config)
  if not FLAGS.workdir:
    raise UsageError('workdir', 'not given', 'pass --workdir=DIR')
  path = sweep_lib.run_and_report(config, FLAGS.workdir, key, values)
  print(f'report: {os.path.abspath(path)}')
  return 0


def run() -> None:
  cli.main(main)
