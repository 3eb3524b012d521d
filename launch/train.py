"""Trains, evaluates and plots one experiment from a config file.

  python launch/train.py --config=configs/generalization.py:mnist --workdir=D \
      [--config.randomization=random_labels ...]

Bad input exits with status 2 and one line `error: <key or file>: <what is
wrong>; <what is allowed>`, before anything is compiled or written. A run
that diverges (NaN/Inf) exits with 1; one stopped by SIGTERM exits with 143
after writing a checkpoint. Running the same command again resumes.
"""

from frontiers_jax import cli


if __name__ == '__main__':
  cli.main(cli.train)
