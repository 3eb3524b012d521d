"""`frontiers tpu` from a clone: `python launch/tpu_vm.py --help` lists its flags."""

import sys

from frontiers_jax import commands

if __name__ == '__main__':
  commands.run('tpu', sys.argv[1:])
