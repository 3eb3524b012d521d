"""What checkpointing costs a training step: none, asynchronous, synchronous.

Trains one config for the same steps in three ways, alternating, `--repeats`
times each:
  none   one checkpoint, after the last step (outside the timed intervals);
  async  a checkpoint every `--every` steps, as the loop saves: the step's
         arrays are copied to host memory, then written by Orbax's threads
         while training goes on;
  sync   the same checkpoints, each waited for before the next step.
The time per step is the loop's own, `summary.json`'s steps_per_s: the median
over log intervals after the first (log_every = every, so that each interval
holds exactly one save). Prints the median over repeats and the overhead
against `none`.

  FRONTIERS_DATA_DIR=../shared/data python benchmarks/checkpoint_overhead.py \\
      [--config=configs/lm.py:shakespeare_char_cpu] [--steps=400] [--every=50] \\
      [--repeats=3] [--workdir=/tmp/checkpoint_overhead]
"""

import os
import shutil
import statistics
import sys

from absl import app, flags, logging

sys.path.insert(0, '.')
from frontiers_jax import config as config_lib  # noqa: E402
from frontiers_jax import runs as runs_lib  # noqa: E402
from frontiers_jax.training import checkpoints as checkpoints_lib  # noqa: E402

flags.DEFINE_string('config', 'configs/lm.py:shakespeare_char_cpu', 'the config to train')
flags.DEFINE_integer('steps', 400, 'training steps per run')
flags.DEFINE_integer('every', 50, 'steps between checkpoints (and between log lines)')
flags.DEFINE_integer('repeats', 3, 'runs of each mode')
flags.DEFINE_string('workdir', '/tmp/checkpoint_overhead', 'scratch folder (emptied)')
FLAGS = flags.FLAGS

MODES = ('none', 'async', 'sync')


def run(mode: str, workdir: str) -> float:
  """Seconds per step of one run in `mode`."""
  config = config_lib.load_config(FLAGS.config)
  every = FLAGS.steps if mode == 'none' else FLAGS.every
  config_lib.apply_overrides(config, [
      ('num_steps', str(FLAGS.steps)), ('log_every', str(FLAGS.every)),
      ('eval_every', '0'), ('checkpoint_every', str(every)), ('quiet', 'True')])
  shutil.rmtree(workdir, ignore_errors=True)
  save = checkpoints_lib.Checkpoints.save
  if mode == 'sync':
    def save_and_wait(self, step, item):
      save(self, step, item)
      self.wait()
    checkpoints_lib.Checkpoints.save = save_and_wait
  try:
    summary = runs_lib.train(config, workdir)
  finally:
    checkpoints_lib.Checkpoints.save = save
  return 1 / summary['steps_per_s']


def checkpoint_mib(workdir: str) -> float:
  folder = os.path.join(workdir, 'checkpoints', str(FLAGS.steps))
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(folder) for name in names) / 2**20


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  times = {mode: [] for mode in MODES}
  for repeat in range(FLAGS.repeats):
    for mode in MODES:
      times[mode].append(run(mode, FLAGS.workdir))
      print(f'repeat {repeat + 1}/{FLAGS.repeats} {mode:>5}: '
            f'{1000 * times[mode][-1]:.2f} ms/step', flush=True)
  size = checkpoint_mib(FLAGS.workdir)
  base = statistics.median(times['none'])
  print(f'\n{FLAGS.config}: {FLAGS.steps} steps, a checkpoint every {FLAGS.every} '
        f'({size:.1f} MiB each), median of {FLAGS.repeats} runs\n')
  print('| checkpoints | ms/step (median) | runs | overhead vs none |')
  print('|---|---|---|---|')
  for mode in MODES:
    median = statistics.median(times[mode])
    runs = ', '.join(f'{1000 * t:.2f}' for t in times[mode])
    print(f'| {mode} | {1000 * median:.2f} | {runs} | {100 * (median / base - 1):+.1f} % |')


if __name__ == '__main__':
  app.run(main)
