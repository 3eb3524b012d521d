"""Sweeps: one config, one key, several values, one run each, shared figures.

  runs = run_sweep(config, 'runs/gen', 'randomization', ['none', 'random_labels'])

Run i trains in `<workdir>/<key>=<value>/` with the shared loop, so an
interrupted sweep resumes where it stopped. Every input of every run is
checked before the first one starts.
"""

import copy
import json
import os
from typing import Any, Sequence

import ml_collections

from frontiers_jax import config as config_lib
from frontiers_jax import report
from frontiers_jax import runs as runs_lib
from frontiers_jax import workloads
from frontiers_jax.errors import UsageError
from frontiers_jax.progress import Progress
from frontiers_jax.training import logs
from frontiers_jax.training import loop


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


def sweep_configs(config: ml_collections.ConfigDict, key: str,
                  values: Sequence[str]) -> list[ml_collections.ConfigDict]:
  """Copies of `config` with `key` set to each value (parsed like overrides)."""
  configs = []
  for value in values:
    c = copy.deepcopy(config)
    config_lib.apply_overrides(c, [(key, str(value))])
    configs.append(c)
  return configs


def run_sweep(config: ml_collections.ConfigDict, workdir: str, key: str,
              values: Sequence[Any]) -> dict[str, dict]:
  """Trains one run per value; returns {value: {summary, history, config, ...}}."""
  configs = sweep_configs(config, key, [str(v) for v in values])
  prepared = [runs_lib.prepare(c, os.path.join(workdir, f'{key}={v}'))
              for c, v in zip(configs, values)]
  runs = {}
  progress = Progress('sweep', len(values), 'runs done', every_s=0, enabled=not config.quiet)
  for index, (value, run) in enumerate(zip(values, prepared)):
    progress.update(index, f'next {key}={value}')
    summary = loop.run_training(run)
    runs[str(value)] = {
        'summary': summary,
        'history': logs.read_history(run.workdir),
        'config': json.loads(config_lib.to_json(run.config)),
        'workdir': run.workdir,
    }
  progress.update(len(values), f'{key}={", ".join(map(str, values))}')
  return runs


def sweep_figures(workload: str, runs: dict[str, dict], fig_dir: str) -> list[str]:
  """The figures that compare the runs (`Workload.sweep_figures`)."""
  os.makedirs(fig_dir, exist_ok=True)
  return workloads.workload_class(workload).sweep_figures(runs, fig_dir)


def run_and_report(config: ml_collections.ConfigDict, workdir: str, key: str,
                   values: Sequence[str]) -> str:
  """`run_sweep`, its figures, and `workdir/report.html` with a table of the
  final metrics of every run."""
  runs = run_sweep(config, workdir, key, values)
  figures = sweep_figures(config.workload, runs, os.path.join(workdir, 'figures'))
  metrics = sorted({k for run in runs.values() for k in run['summary']['final']
                    if k.startswith('eval')})
  table = [[key] + metrics] + [
      [value] + [run['summary']['final'].get(m) for m in metrics]
      for value, run in runs.items()]
  section = report.Section(
      title=f'{config.workload}: {key} in {", ".join(map(str, values))}',
      paragraphs=[f'One run per value, in {workdir}/{key}=<value>/.'],
      table=table, figures=figures)
  return report.write(os.path.join(workdir, 'report.html'),
                      f'frontiers_jax sweep: {config.workload}', [section])
