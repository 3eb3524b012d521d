"""Evaluates a trained run with the saved config, by its workload.

  python launch/evaluate.py --workdir=D [--config.robustness.eps=0.1,0.3 ...]

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


if __name__ == '__main__':
  cli.main(cli.evaluate)
