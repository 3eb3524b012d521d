"""Robustness of a trained adversarial run: every attack at every eps.

  python launch/evaluate.py --workdir=D [--config.robustness.eps=0.1,0.3 ...]

Reads D/config.json and the newest checkpoint in D/checkpoints; writes
D/robustness.json and D/figures/robustness_<norm>.png; prints the table and a
WARNING line for each sign of gradient masking.
"""

from frontiers_jax import cli


if __name__ == '__main__':
  cli.main(cli.evaluate)
