"""Writes a trained run's parameters in a format other tools read.

  frontiers export WORKDIR [--format=safetensors|torch|hf] [--out=DIR] [--step=N]

into DIR (default WORKDIR/export):
  safetensors  model.safetensors: every parameter under its dotted path, with
               the run's config, step and (language models) tokenizer in its
               metadata; any workload
  torch        model.pt: the state_dict of the model's PyTorch twin
               (frontiers_jax.bench: the GPT, the UNet, the small CNN)
  hf           a Hugging Face GPT2LMHeadModel folder (a GPT with learned
               positions), with the project's tokenizer beside it
Reads the newest readable checkpoint (or --step) and never changes the run.
"""

import os

from absl import flags

from frontiers_jax import cli
from frontiers_jax.errors import UsageError

flags.DEFINE_string('format', 'safetensors', 'safetensors, torch or hf')
flags.DEFINE_string('out', '', 'the folder to write (default: WORKDIR/export)')
flags.DEFINE_integer('step', None, 'the checkpoint to export (default: the newest)')
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    raise UsageError('export', f'{len(argv) - 1} workdirs given',
                     'give one: frontiers export WORKDIR [--format=safetensors|torch|hf]')
  workdir = argv[1]
  from frontiers_jax import export, runs  # jax is imported after parsing.
  if FLAGS.format not in export.FORMATS:
    raise UsageError('format', f'unknown format {FLAGS.format!r}',
                     f'allowed: {", ".join(export.FORMATS)}')
  run = runs.load_run(workdir, FLAGS.step)
  for path in export.export(run, FLAGS.format, FLAGS.out or os.path.join(workdir, 'export')):
    print(f'wrote {path} (step {run.step})')
  return 0


def run() -> None:
  cli.main(main)
