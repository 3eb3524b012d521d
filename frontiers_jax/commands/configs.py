"""Lists the packaged experiments and their variants, one line each.

  frontiers configs [--experiment=lm]

Pass one to `--config=<experiment>[:variant]`, e.g. `--config=lm:tiny`; no
variant means the one marked (default).
"""

from absl import flags

from frontiers_jax import cli

flags.DEFINE_string('experiment', None, 'list this experiment only')
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  del argv
  from frontiers_jax import config as config_lib
  from frontiers_jax.errors import check
  found = config_lib.describe_experiments()
  if FLAGS.experiment:
    names = [name for name, _, _ in found]
    check(FLAGS.experiment in names, 'experiment', f'unknown experiment {FLAGS.experiment!r}',
          f'experiments are {", ".join(names)}')
  for name, summary, variants in found:
    if FLAGS.experiment and name != FLAGS.experiment:
      continue
    print(f'{name:<16} {summary}')
    for i, (variant, about) in enumerate(variants.items()):
      spec = f'{name}:{variant}'
      print(f'  {spec:<30} {about}{" (default)" if i == 0 else ""}')
  return 0


def run() -> None:
  cli.main(main)
