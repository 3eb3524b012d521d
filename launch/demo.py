"""`frontiers demo` from a clone: `python launch/demo.py --help` lists its flags."""

import sys

from frontiers_jax import commands

if __name__ == '__main__':
  commands.run('demo', sys.argv[1:])
