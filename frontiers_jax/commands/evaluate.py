"""Evaluates a trained run with its saved config, by its workload.

  frontiers evaluate --workdir=D [--config.robustness.eps=0.1,0.3 ...]

Reads D/config.json and the newest checkpoint in D/checkpoints, and writes:
  adversarial  D/robustness.json and D/figures/robustness_<norm>.png; prints
               the table and a WARNING line for each sign of gradient masking
  diffusion    D/generation.json (FID per sampler and steps next to the real
               floor, accuracy of guided samples, bits/dim) and
               D/figures/fid_vs_steps.png; the feature classifier in
               D/classifier (trained on the first call)
  uncertainty  D/figures/uncertainty.json and the figures beside it
"""

from frontiers_jax import cli
from frontiers_jax.errors import UsageError

cli.define_workdir_flag(__name__, 'the trained run')
cli.define_distributed_flags(__name__)
FLAGS = cli.FLAGS


def main(argv: list[str]) -> int:
  del argv
  from frontiers_jax.training import loop  # jax is imported after parsing.
  run = cli.prepare_trained_run()
  if not run.workload.supports('evaluate'):
    raise UsageError('config.workload', f'{run.config.workload} has no evaluation',
                     'evaluate an adversarial, diffusion or uncertainty run')
  state = loop.restore_trained(run)
  path = run.workload.evaluate(state, run.data, FLAGS.workdir, run.mesh)
  print(f'done: {path}')
  return 0


def run() -> None:
  cli.main(main)
