"""JAX against PyTorch on the project's models: same weights, same batch.

  python launch/bench.py [--workloads=cnn_train,pgd10,...] [--quick] --out=bench.json

For each row, the JAX step (jit), its PyTorch twin in eager mode and under
torch.compile run interleaved in this one process; prints a markdown table and
writes `--out` (rows, versions, device, threads). Needs torch
(`pip install -e .[bench]`). See `frontiers_jax/bench/harness.py`.
"""

import os

from absl import flags

from frontiers_jax import cli
from frontiers_jax.bench import ROWS

flags.DEFINE_list('workloads', list(ROWS), f'rows to run, of: {", ".join(ROWS)}')
flags.DEFINE_bool('quick', False, 'fewer timed rounds (make bench)')
flags.DEFINE_string('out', 'bench.json', 'where to write the results')


def main(argv) -> int:
  del argv
  from frontiers_jax.bench import run  # jax and torch are imported after parsing.
  configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'configs')
  run.main(flags.FLAGS.workloads, flags.FLAGS.quick, flags.FLAGS.out, configs)
  return 0


if __name__ == '__main__':
  cli.main(main)
