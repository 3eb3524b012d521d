"""Configs as code: `<experiment>[:<variant>]` files, overrides, checks.

A config file defines `get_config(arg)` returning an `ml_collections.ConfigDict`
built on `base_config()`, and `VARIANTS`. `--config=lm:tiny` names a packaged
file (`frontiers_jax/configs/lm.py`), `--config=path/to/exp.py:tiny` any other.
The launcher loads it with `load_config`, applies
`--config.a.b=value` overrides with `apply_overrides` (the config is locked: an
unknown key fails) and checks the shared keys with `validate_common`. Every
failure is a one-line `UsageError`, raised before anything is compiled.
"""

import ast
import importlib.util
import json
import os
import sys
from typing import Any, Iterable, Sequence

import ml_collections

from frontiers_jax.errors import UsageError, check

OPTIMIZERS = ('adam', 'adamw', 'sgd', 'momentum')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')
# `model.dtype`, the compute precision; parameters and optimizer state stay float32.
DTYPES = ('float32', 'bfloat16')
# The packaged experiments (`configs/` in a clone links here).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def base_config() -> ml_collections.ConfigDict:
  """Keys that every workload shares; experiment files add their own."""
  c = ml_collections.ConfigDict()
  c.workload = ''
  c.seed = 0
  c.num_steps = 1000
  c.batch_size = 128          # global batch, split over all devices
  c.eval_batch_size = 1000    # global; the last batch is padded and masked
  c.log_every = 100           # train metrics are averaged over this many steps
  c.eval_every = 500          # 0: evaluate only at the end
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.num_devices = 0           # 0: all devices; n: the first n (one process)
  c.quiet = False             # no progress lines on the console
  c.init_from = ''            # a trained run's workdir or an exported .safetensors file:
                              # start from its parameters (fine-tuning)
  c.profile_steps = ()        # (a, b): a profiler trace of steps a to b - 1 in
                              # workdir/profile (TensorBoard's profile plugin, Perfetto)

  # The devices form a data x fsdp mesh (frontiers_jax.training.sharding).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = 1             # fsdp axis size: parameters and optimizer state
                              # split over it; 1: pure data parallel
  c.mesh.fsdp_min_size = 1024  # arrays with fewer elements stay replicated

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'
  c.optim.learning_rate = 1e-3
  c.optim.schedule = 'constant'
  c.optim.warmup_steps = 0
  c.optim.momentum = 0.9      # sgd with momentum; adam's b1 stays 0.9
  c.optim.b2 = 0.999          # adam and adamw: decay of the squared-gradient average
  c.optim.weight_decay = 0.0  # adamw only; matrices only (not biases, norms)
  c.optim.final_learning_rate = 0.0  # cosine schedules decay to this floor
  c.optim.clip_norm = 0.0     # 0: no global-norm clipping

  c.data = ml_collections.ConfigDict()
  c.data.name = 'digits'
  c.data.dir = ''             # '' -> $FRONTIERS_DATA_DIR -> TFDS
  return c


def set_tiny_schedule(c: ml_collections.ConfigDict, batch_size: int = 32,
                      eval_batch_size: int = 120) -> None:
  """The schedule of every `tiny` variant: 12 steps, a log line every 3, an
  evaluation every 6, a checkpoint every 4 (so resume paths are exercised)."""
  c.num_steps = 12
  c.batch_size = batch_size
  c.eval_batch_size = eval_batch_size
  c.log_every = 3
  c.eval_every = 6
  c.checkpoint_every = 4


def classifier_config(name: str = 'mlp') -> ml_collections.ConfigDict:
  """Keys of `frontiers_jax.models.create_classifier`, for every model kind."""
  m = ml_collections.ConfigDict()
  m.name = name              # mlp, cnn or resnet
  m.hidden = (512, 512)      # mlp
  m.features = (32, 64)      # cnn
  m.dense = 256              # cnn
  m.stage_sizes = (2, 2, 2)  # resnet
  m.width = 32               # resnet
  m.dtype = 'float32'        # compute dtype; 'bfloat16' keeps float32 parameters
  return m


def variant(arg: str | None, names: Sequence[str], default: str | None = None) -> str:
  """Checks the variant named in `file.py:name`; none named is `default`, else
  the first of `names` (a config's `VARIANTS` lists its default first)."""
  name = arg or default or next(iter(names))
  check(name in names, 'config', f'unknown variant {name!r}',
        f'variants are {", ".join(names)}')
  return name


def experiments() -> list[str]:
  """The names of the packaged experiments (`frontiers configs` lists them)."""
  return sorted(name[:-3] for name in os.listdir(CONFIGS_DIR)
                if name.endswith('.py') and not name.startswith('_'))


def config_path(name: str) -> str:
  """The file of `name`: a packaged experiment (`lm`) or a path (`my/exp.py`)."""
  check(bool(name), 'config', 'no config file given',
        'pass --config=<experiment>[:variant], e.g. lm:tiny (frontiers configs lists them)')
  if not name.endswith('.py') and os.sep not in name and '/' not in name:
    check(name in experiments(), 'config', f'unknown experiment {name!r}',
          f'experiments are {", ".join(experiments())}; or give a path/to/file.py')
    return os.path.join(CONFIGS_DIR, name + '.py')
  check(not os.path.isdir(name), 'config', f'{name} is a directory',
        'pass a .py file: path/to/file.py[:variant]')
  check(os.path.isfile(name), 'config', f'{name} does not exist',
        'pass an existing path/to/file.py[:variant] or a packaged experiment like lm:tiny')
  check(name.endswith('.py'), 'config', f'{name} is not a .py file',
        'pass path/to/file.py[:variant]')
  return name


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `experiment[:arg]` or `path/to/file.py[:arg]`, calls its
  `get_config(arg)` and locks it."""
  name, _, arg = spec.partition(':')
  path = config_path(name)
  module = _load_module(path)
  check(hasattr(module, 'get_config'), 'config',
        f'{path} defines no get_config(arg)', 'define get_config(arg)')
  config = module.get_config(arg or None)
  config.lock()
  return config


def describe_experiments() -> list[tuple[str, str, dict[str, str]]]:
  """(name, the first line of its docstring, {variant: one line}) of each
  packaged experiment; the first variant is the default."""
  out = []
  for name in experiments():
    module = _load_module(config_path(name))
    summary = (module.__doc__ or '').strip().splitlines()[:1]
    out.append((name, summary[0] if summary else '', dict(getattr(module, 'VARIANTS', {}))))
  return out


def _load_module(path: str):
  module_spec = importlib.util.spec_from_file_location('_frontiers_config', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except UsageError:
    raise
  except Exception as e:  # A broken config file is still one line.
    raise UsageError('config', f'{path} failed to load ({type(e).__name__}: '
                     f'{e})', 'fix the file') from e
  return module


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The locked config a run saved in `workdir/config.json`.

  Keys added to the configs since the run was made take their current
  defaults (from `base_config` and the default variant of
  `configs/<workload>.py`), and a note names them: a new key's default keeps
  the behaviour the run had.
  """
  path = os.path.join(workdir, 'config.json')
  check(os.path.isfile(path), 'workdir', f'{path} does not exist',
        'pass the workdir of a run made by frontiers train')
  with open(path) as f:
    try:
      values = json.load(f)
    except json.JSONDecodeError as e:
      raise UsageError(path, f'is not valid JSON ({e})', 'restore the file') from None
  check(isinstance(values, dict), path, 'is not a JSON object', 'restore the file')
  values = _tuples(values)
  added = _fill_missing(values, _current_defaults(values.get('workload', '')))
  if added:
    print(f'note: {path} predates the keys {", ".join(added)}; '
          'using their current defaults', file=sys.stderr)
  config = ml_collections.ConfigDict(values)
  config.lock()
  return config


def _current_defaults(workload: str) -> dict:
  """Today's default values of a workload's keys, for runs saved before some existed."""
  defaults = base_config().to_dict()
  path = os.path.join(CONFIGS_DIR, f'{workload}.py')
  if workload and os.path.isfile(path):
    try:
      defaults = load_config(path).to_dict()
    except UsageError:
      pass  # A config file that no longer loads leaves the shared defaults.
  return defaults


def _fill_missing(values: dict, defaults: dict, prefix: str = '') -> list[str]:
  """Adds to `values` (in place) the keys of `defaults` it lacks; returns their names."""
  added = []
  for key, default in defaults.items():
    if key not in values:
      values[key] = default
      added.append(prefix + key)
    elif isinstance(default, dict) and isinstance(values[key], dict):
      added += _fill_missing(values[key], default, f'{prefix}{key}.')
  return added


def _tuples(value):
  """JSON lists back to the tuples the config files use."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def split_override_args(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Separates `--config.a.b=v` arguments from the others.

  `--config.a.b v` (value as the next argument) is accepted too. Arguments
  after `--` are left as they are: they are for another program (`frontiers
  cluster` and `frontiers tpu` pass them to train).
  """
  rest, overrides = [], []
  args = list(argv)
  while args:
    arg = args.pop(0)
    if arg == '--':
      return rest + [arg] + args, overrides
    if arg.startswith('--config.'):
      key, eq, value = arg[len('--config.'):].partition('=')
      if not eq:
        check(bool(args) and not args[0].startswith('--'), f'config.{key}',
              'no value given', f'write --config.{key}=VALUE')
        value = args.pop(0)
      overrides.append((key, value))
    else:
      rest.append(arg)
  return rest, overrides


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[tuple[str, str]]) -> None:
  """Sets each dotted key to its value, parsed to the type the key has."""
  for key, text in overrides:
    parent, leaf = _parent_of(config, key)
    kind = parent.get_type(leaf)
    value = _parse(text, kind, f'config.{key}', parent[leaf])
    try:
      parent[leaf] = value
    except (TypeError, ValueError) as e:
      raise UsageError(f'config.{key}', f'{text!r} is not a {kind.__name__}',
                       f'give a {kind.__name__}') from e


def _parent_of(config: ml_collections.ConfigDict, key: str):
  node = config
  parts = key.split('.')
  for depth, part in enumerate(parts):
    where = 'config.' + '.'.join(parts[:depth + 1])
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise UsageError(where, 'unknown key',
                       'known keys here: ' + ', '.join(known) if known else
                       f'{where.rsplit(".", 1)[0]} has no sub-keys')
    if depth == len(parts) - 1:
      if isinstance(node[part], ml_collections.ConfigDict):
        raise UsageError(where, 'is a group of keys, not a value',
                         'set one of ' + ', '.join(sorted(node[part].keys())))
      return node, part
    node = node[part]


def _parse(text: str, kind: type, where: str, current: Any = None) -> Any:
  """Parses a command-line string as `kind` (the type the key already has).

  Tuples of strings (`current` holds strings) take bare words: a,b,c.
  """
  if kind is bool:
    lowered = text.strip().lower()
    check(lowered in ('true', 'false', '1', '0', 'yes', 'no'), where,
          f'{text!r} is not a bool', 'give true or false')
    return lowered in ('true', '1', 'yes')
  if kind is int:
    try:
      return int(text)
    except ValueError:
      raise UsageError(where, f'{text!r} is not an int',
                       'give a whole number like 128') from None
  if kind is float:
    try:
      return float(text)
    except ValueError:
      raise UsageError(where, f'{text!r} is not a float',
                       'give a number like 0.001') from None
  if kind in (tuple, list) and current and all(isinstance(v, str) for v in current):
    words = text.strip().strip('()[]').split(',')
    return kind(w.strip().strip('\'"') for w in words if w.strip())
  if kind in (tuple, list):
    try:
      value = ast.literal_eval(text if text.strip().startswith(('(', '['))
                               else f'({text},)')
    except (ValueError, SyntaxError):
      raise UsageError(where, f'{text!r} is not a {kind.__name__}',
                       'give comma-separated values like 1,2,4') from None
    return kind(value if isinstance(value, (tuple, list)) else (value,))
  return text


# -- Checks of the shared keys ------------------------------------------------

def _positive_int(config, key: str) -> None:
  value = _get(config, key)
  check(isinstance(value, int) and value > 0, f'config.{key}',
        f'{value} is not allowed', 'give a whole number > 0')


def _get(config, key: str) -> Any:
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def check_choice(config, key: str, allowed: Sequence[str]) -> None:
  """Raises a `UsageError` unless `config.<key>` is one of `allowed`."""
  value = _get(config, key)
  check(value in allowed, f'config.{key}', f'unknown value {value!r}',
        f'allowed: {", ".join(allowed)}')


def check_dtype(config) -> None:
  """`config.model.dtype` must name a compute dtype (absent in the configs
  of runs saved before the key existed: float32)."""
  value = config.model.get('dtype', 'float32')
  check(value in DTYPES, 'config.model.dtype', f'unknown value {value!r}',
        f'allowed: {", ".join(DTYPES)}')


def check_range(config, key: str, low: float, high: float) -> None:
  value = _get(config, key)
  check(low <= value <= high, f'config.{key}', f'{value} is out of range',
        f'allowed: {low} to {high}')


def validate_common(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks the keys of `base_config()`; `num_devices` is the mesh size."""
  for key in ('num_steps', 'batch_size', 'eval_batch_size', 'log_every',
              'checkpoint_every', 'keep_checkpoints'):
    _positive_int(config, key)
  check(config.eval_every >= 0, 'config.eval_every',
        f'{config.eval_every} is not allowed', 'give 0 (only at the end) or more')
  check(config.num_devices >= 0, 'config.num_devices',
        f'{config.num_devices} is not allowed', 'give 0 (all devices) or more')
  for key in ('batch_size', 'eval_batch_size'):
    value = config[key]
    check(value % num_devices == 0, f'config.{key}',
          f'{value} is not divisible by the {num_devices} devices',
          f'give a multiple of {num_devices}')
  check_choice(config, 'optim.name', OPTIMIZERS)
  check_choice(config, 'optim.schedule', SCHEDULES)
  lr = config.optim.learning_rate
  check(0 < lr < float('inf'), 'config.optim.learning_rate', f'{lr} is not allowed',
        'give a finite learning rate > 0')
  check(config.optim.warmup_steps >= 0, 'config.optim.warmup_steps',
        f'{config.optim.warmup_steps} is not allowed', 'give 0 or more')
  check(config.optim.schedule != 'warmup_cosine'
        or config.optim.warmup_steps < config.num_steps, 'config.optim.warmup_steps',
        f'{config.optim.warmup_steps} is not below num_steps {config.num_steps}',
        'give fewer warm-up steps than num_steps')
  fsdp_min_size = config.mesh.fsdp_min_size if 'mesh' in config else 0
  check(fsdp_min_size >= 0, 'config.mesh.fsdp_min_size', f'{fsdp_min_size} is not allowed',
        'give 0 (split every array that divides) or more')
  for key in ('weight_decay', 'clip_norm'):
    value = config.optim[key]
    check(value >= 0, f'config.optim.{key}', f'{value} is not allowed',
          'give 0 (off) or more')
  check(0 <= config.optim.b2 < 1, 'config.optim.b2', f'{config.optim.b2} is not allowed',
        'give a number in [0, 1), e.g. 0.999')
  final = config.optim.final_learning_rate
  check(0 <= final <= lr, 'config.optim.final_learning_rate', f'{final} is not allowed',
        f'give 0 to the learning rate {lr}')
  # Empty (no trace), or two steps a < b within the run: a trace of nothing,
  # or one that never stops, would be found out only after training.
  steps = config.get('profile_steps', ())
  ints = all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
  check(not steps or (len(steps) == 2 and ints and 0 <= steps[0] < steps[1] <= config.num_steps),
        'config.profile_steps', f'{",".join(map(str, steps))} is not allowed',
        f'give two steps a,b with 0 <= a < b <= num_steps ({config.num_steps}), '
        'or () for none')


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
