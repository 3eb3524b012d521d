"""Command-line plumbing shared by the launchers in `launch/`.

The launchers hold flags only. `--config.a.b=value` overrides are taken out of
argv before absl parses the rest, so that a bad key or value is reported as
the project's one-line error (exit status 2), not as absl's.
"""

import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from frontiers_jax import config as config_lib
from frontiers_jax import distributed
from frontiers_jax.errors import EXIT_USAGE, UsageError

FLAGS = flags.FLAGS
flags.DEFINE_string('config', None, 'configs/<experiment>.py[:variant]')
flags.DEFINE_string('workdir', None, 'directory for checkpoints, logs, figures')
flags.DEFINE_string('coordinator_address', None,
                    'multi-process jobs: host:port of process 0 (default: auto-detect '
                    'a TPU pod slice or SLURM job, else run as one process)')
flags.DEFINE_integer('num_processes', None, 'multi-process jobs: the number of processes')
flags.DEFINE_integer('process_id', None, 'multi-process jobs: this process, 0 to n - 1')

_overrides: list[tuple[str, str]] = []


def _parse(argv: list[str]) -> list[str]:
  rest, overrides = config_lib.split_override_args(argv)
  _overrides.extend(overrides)
  try:
    return FLAGS(rest)
  except flags.Error as e:
    raise UsageError('flags', str(e), f'run {argv[0]} --helpfull') from None


def load_config_from_flags():
  """The config named by --config, with the --config.* overrides applied."""
  if not FLAGS.config:
    raise UsageError('config', 'not given', 'pass --config=configs/<experiment>.py[:variant]')
  config = config_lib.load_config(FLAGS.config)
  config_lib.apply_overrides(config, _overrides)
  return config


def train(argv: list[str]) -> int:
  del argv
  from frontiers_jax.training import logs, loop  # jax is imported after parsing.
  config = load_config_from_flags()
  try:
    summary = loop.train_and_evaluate(config, FLAGS.workdir)
  except loop.Diverged as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except loop.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr)
    return loop.EXIT_PREEMPTED
  except loop.WriteFailed as e:
    # On a line of its own: Orbax's threads may have left one unfinished.
    print(f'\nerror: {e}; free space or fix the permissions, then rerun to resume',
          file=sys.stderr, flush=True)
    # Orbax's threads of the failed save can wait minutes for signals that
    # never come (seen: 5 min), holding the exit; nothing is left to write.
    sys.stdout.flush()
    os._exit(loop.EXIT_WRITE_FAILED)
  logs.console(f'done in {summary["wall_time_s"]:.1f} s: {FLAGS.workdir}/summary.json')
  return 0


def _prepare_trained_run():
  """The run in --workdir with its saved config and the --config.* overrides;
  checked and loaded, nothing compiled."""
  from frontiers_jax.training import loop  # jax is imported after parsing.
  if not FLAGS.workdir:
    raise UsageError('workdir', 'not given', 'pass --workdir=DIR of a trained run')
  config = config_lib.load_run_config(FLAGS.workdir)
  config_lib.apply_overrides(config, _overrides)
  return loop.prepare(config, FLAGS.workdir)


def evaluate(argv: list[str]) -> int:
  """Evaluates the newest checkpoint in --workdir with its saved config:
  robustness (adversarial), generation (diffusion) or uncertainty."""
  del argv
  from frontiers_jax.training import loop  # jax is imported after parsing.
  run = _prepare_trained_run()
  config = run.config
  if hasattr(run.workload, 'evaluate_generation'):
    state = loop.restore_trained(run)
    run.workload.evaluate_generation(state, run.data, FLAGS.workdir)
    print(f'done: {os.path.join(FLAGS.workdir, "generation.json")}')
    return 0
  if hasattr(run.workload, 'evaluate_uncertainty'):
    state = loop.restore_trained(run)
    scores = run.workload.final_metrics(state, run.data)
    fig_dir = os.path.join(FLAGS.workdir, 'figures')
    os.makedirs(fig_dir, exist_ok=True)
    # figures() writes the whole result, figures/uncertainty.json, beside them.
    figures = run.workload.figures(state, run.data, [], fig_dir)
    for name, value in scores.items():
      print(f'{name:<28} {value:.4f}')
    print(f'done: {fig_dir}: {", ".join(os.path.basename(p) for p in figures)}')
    return 0
  if not hasattr(run.workload, 'evaluate_robustness'):
    raise UsageError('config.workload', f'{config.workload} has no evaluation',
                     'evaluate an adversarial, diffusion or uncertainty run')
  state = loop.restore_trained(run)
  results = run.workload.evaluate_robustness(state, run.data, FLAGS.workdir, run.mesh)
  for norm, result in results.items():
    if norm == 'eot':
      print(f'EOT vs PGD at eps {result["eps"]:g}: still adversarial under fresh random '
            f'transformations {result["survival_eot"]:.1%} (EOT) vs '
            f'{result["survival_pgd"]:.1%} (PGD) of the time; clean images are '
            f'misclassified {result["survival_clean"]:.1%} of the time')
      continue
    print(f'{norm}: clean accuracy {result["clean_accuracy"]:.4f} on '
          f'{result["num_examples"]} test examples')
    names = list(result['accuracy']) + ['worst case']
    print('  eps      ' + ''.join(f'{n:>12}' for n in names))
    for i, eps in enumerate(result['eps']):
      row = [result['accuracy'][n][i] for n in result['accuracy']] + [result['worst_case'][i]]
      print(f'  {eps:<8.4g} ' + ''.join(f'{v:>12.4f}' for v in row))
    for warning in result['warnings']:
      print(f'WARNING: possible gradient masking: {warning}', file=sys.stderr)
  print(f'done: {os.path.join(FLAGS.workdir, "robustness.json")}')
  return 0


def sample(argv: list[str]) -> int:
  """Samples from the newest checkpoint in --workdir (flags in launch/sample.py)."""
  del argv
  from frontiers_jax.training import loop  # jax is imported after parsing.
  run = _prepare_trained_run()
  config = run.config
  if not hasattr(run.workload, 'sampling_request'):
    raise UsageError('config.workload', f'{config.workload} cannot sample',
                     'sample from a diffusion or lm run')
  request = run.workload.sampling_request(FLAGS)  # checks the flags it uses
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'samples',
                                  f'{request["name"]}_seed{FLAGS.seed}')
  state = loop.restore_trained(run)
  for path in run.workload.sample_to_files(state, run.data, request, FLAGS.seed, out):
    print(f'wrote {path}')
  return 0


def sweep_spec(flag: str | None, config) -> tuple[str, list[str]]:
  """The key and values of --sweep=KEY=V1,V2,..., else of the config's own
  `sweep` entry (configs/emergence.py names its model sizes)."""
  spec = flag or config.get('sweep', '')
  key, _, values = spec.partition('=')
  values = [v for v in values.split(',') if v]
  if not key or not values:
    raise UsageError('sweep', f'{spec!r} names no key and values',
                     'pass --sweep=KEY=V1,V2,... e.g. --sweep=randomization=none,random_labels')
  return key, values


def sweep(argv: list[str]) -> int:
  del argv
  from frontiers_jax import sweep as sweep_lib  # jax is imported after parsing.
  config = load_config_from_flags()
  key, values = sweep_spec(FLAGS.sweep, config)
  workdir = FLAGS.workdir
  if not workdir:
    raise UsageError('workdir', 'not given', 'pass --workdir=DIR')
  path = sweep_lib.run_and_report(config, workdir, key, values)
  print(f'report: {os.path.abspath(path)}')
  return 0


def demo(argv: list[str]) -> int:
  del argv
  from frontiers_jax import tour  # jax is imported after parsing.
  configs_dir = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'configs')
  path = tour.run_tour(FLAGS.workdir or 'runs/demo', configs_dir, quick=FLAGS.quick)
  print(f'report: {os.path.abspath(path)}')
  return 0


def main(command: Callable[[list[str]], int]) -> None:
  """Runs `command` under absl; a `UsageError` anywhere becomes exit status 2."""
  def run(argv):
    if not FLAGS['verbosity'].present:  # Orbax logs every save at INFO.
      logging.set_verbosity(logging.WARNING)
    try:
      distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                             FLAGS.process_id)
      sys.exit(command(argv))
    except UsageError as e:
      print(e.line(), file=sys.stderr)
      sys.exit(EXIT_USAGE)

  try:
    app.run(run, flags_parser=_parse)
  except UsageError as e:  # Raised while parsing flags, before `run`.
    print(e.line(), file=sys.stderr)
    sys.exit(EXIT_USAGE)
