"""`frontiers sweep` from a clone: `python launch/sweep.py --help` lists its flags."""

import sys

from frontiers_jax import commands

if __name__ == '__main__':
  commands.run('sweep', sys.argv[1:])
