"""frontiers_jax: the systems of MIT 6.S191's "New Frontiers" lecture, in JAX.

  import frontiers_jax as fj
  config = fj.load_config('lm:tiny')     # a packaged experiment, or path/to/file.py:variant
  summary = fj.train(config, 'runs/lm')  # what `frontiers train` runs
  run = fj.load_run('runs/lm')           # config, model, parameters, tokenizer

The names below are imported on first use, so `import frontiers_jax` stays
light (the command line imports JAX only after its flags are checked).
"""

__version__ = '0.1.0'

_API = {'load_config': 'config', 'train': 'runs', 'prepare': 'runs', 'load_run': 'runs',
        'TrainedRun': 'runs'}


def __getattr__(name: str):
  if name in _API:
    import importlib  # noqa: PLC0415
    return getattr(importlib.import_module(f'{__name__}.{_API[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  return sorted(list(globals()) + list(_API))
