"""`frontiers evaluate` from a clone: `python launch/evaluate.py --help` lists its flags."""

import sys

from frontiers_jax import commands

if __name__ == '__main__':
  commands.run('evaluate', sys.argv[1:])
