"""The lecture tour on bundled data, written to one HTML report.

  python launch/demo.py [--workdir=runs/demo] [--quick]
"""

from absl import flags

from frontiers_jax import cli

flags.DEFINE_bool('quick', False, 'tiny configs: a smoke test in seconds')


if __name__ == '__main__':
  cli.main(cli.demo)
