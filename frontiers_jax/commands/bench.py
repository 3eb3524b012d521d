"""JAX against PyTorch on the project's models: same weights, same batch.

  frontiers bench [--workloads=cnn_train,pgd10,...] [--quick] --out=bench.json

For each row, the JAX step (jit), its PyTorch twin in eager mode and under
torch.compile run interleaved in this one process; prints a markdown table and
writes `--out` (rows, versions, device, threads). Needs torch
(`pip install 'frontiers_jax[bench]'`). See `frontiers_jax/bench/harness.py`.
"""

from absl import flags

from frontiers_jax import cli
from frontiers_jax.bench import ROWS

flags.DEFINE_list('workloads', list(ROWS), f'rows to run, of: {", ".join(ROWS)}')
flags.DEFINE_bool('quick', False, 'fewer timed rounds (make bench)')
flags.DEFINE_string('out', 'bench.json', 'where to write the results')
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  del argv
  from frontiers_jax import config as config_lib
  from frontiers_jax.bench import run as run_lib  # jax and torch are imported after parsing.
  run_lib.main(FLAGS.workloads, FLAGS.quick, FLAGS.out, config_lib.CONFIGS_DIR)
  return 0


def run() -> None:
  cli.main(main)
