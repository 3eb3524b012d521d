"""Trains on a Cloud TPU VM or pod slice: creates or reuses it, ships the
committed code of this clone, installs jax[tpu] and the project on every
worker, and runs the same train command on all of them.

  frontiers tpu --name=frontiers-v4 --zone=us-central2-b \\
      --accelerator_type=v4-16 [--dry_run] -- \\
      --config=generalization:mnist --workdir=gs://BUCKET/runs/mnist

`--dry_run` prints the commands, one per line, and runs nothing. Otherwise they
run in order and the first failure stops the rest (its exit status is ours).
Needs gcloud, authenticated, with the TPU API enabled, and a git clone of the
project (`git archive HEAD` is what the workers get).
"""

import os
import subprocess
import sys

from absl import flags

from frontiers_jax import cli
from frontiers_jax.errors import check

# The clone this package runs from (an installed package has no .git).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_string('name', None, 'the TPU VM (created when it does not exist)')
flags.DEFINE_string('zone', None, 'its zone, e.g. us-central2-b')
flags.DEFINE_string('project', '', 'the Google Cloud project (default: gcloud\'s)')
flags.DEFINE_string('accelerator_type', 'v4-8', 'TPU type and size, e.g. v4-16, v5litepod-16')
flags.DEFINE_string('version', '', 'TPU software version (default: the one for the type)')
flags.DEFINE_bool('spot', False, 'create a Spot TPU VM (cheaper, can be preempted)')
flags.DEFINE_string('python', 'python3', 'the Python on the workers')
flags.DEFINE_string('data_dir', '', 'gs:// folder copied to every worker as FRONTIERS_DATA_DIR')
flags.DEFINE_bool('delete', False, 'delete the TPU VM after training')
flags.DEFINE_bool('dry_run', False, 'print the commands, one per line, and run nothing')
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  from frontiers_jax import tpu_vm
  lines = tpu_vm.commands(FLAGS.name, FLAGS.zone, FLAGS.accelerator_type, argv[1:],
                          project=FLAGS.project, version=FLAGS.version, spot=FLAGS.spot,
                          python=FLAGS.python, data_dir=FLAGS.data_dir,
                          delete=FLAGS.delete, repo=REPO)
  if FLAGS.dry_run:
    print('\n'.join(lines))
    return 0
  check(os.path.isdir(os.path.join(REPO, '.git')), 'tpu', f'{REPO} is not a git clone',
        'run frontiers tpu from a clone of the project: its committed code is shipped')
  if subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no'],
                    capture_output=True, text=True).stdout.strip():
    print('warning: uncommitted changes are not shipped (git archive HEAD)',
          file=sys.stderr)
  return tpu_vm.run(lines)


def run() -> None:
  cli.main(main)
