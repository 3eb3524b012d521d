"""`frontiers cluster` from a clone: `python launch/local_cluster.py --help` lists its flags."""

import sys

from frontiers_jax import commands

if __name__ == '__main__':
  commands.run('cluster', sys.argv[1:])
