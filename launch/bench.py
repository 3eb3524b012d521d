"""`frontiers bench` from a clone: `python launch/bench.py --help` lists its flags."""

import sys

from frontiers_jax import commands

if __name__ == '__main__':
  commands.run('bench', sys.argv[1:])
