"""`frontiers train` from a clone: `python launch/train.py --help` lists its flags."""

import sys

from frontiers_jax import commands

if __name__ == '__main__':
  commands.run('train', sys.argv[1:])
