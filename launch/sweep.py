"""Trains one config over several values of one key; draws the comparisons.

  python launch/sweep.py --config=configs/generalization.py:mnist --workdir=D \
      --sweep=randomization=none,partial,random_labels,shuffled_pixels,random_pixels,gaussian

Run i trains in `D/<key>=<value>/` (rerunning resumes); the figures that
compare the runs go to `D/figures/`, and `D/report.html` gathers them.
"""

from absl import flags

from frontiers_jax import cli

flags.DEFINE_string('sweep', None, 'KEY=V1,V2,...: the config key and its values')


if __name__ == '__main__':
  cli.main(cli.sweep)
