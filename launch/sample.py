"""`frontiers sample` from a clone: `python launch/sample.py --help` lists its flags."""

import sys

from frontiers_jax import commands

if __name__ == '__main__':
  commands.run('sample', sys.argv[1:])
