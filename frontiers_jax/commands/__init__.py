"""`frontiers <command> [flags]`: the project's command line.

Each command is a module here with its own flags, imported only when it runs,
so `frontiers train --help` lists train's flags and nothing else. The same
commands run as `python -m frontiers_jax <command>` and, in a clone, as
`python launch/<command>.py`.
"""

import importlib
import os
import sys

from absl import flags

from frontiers_jax.errors import EXIT_USAGE

# name -> what it does, in the order `frontiers --help` lists them.
COMMANDS = {
    'train': 'train, evaluate and plot one experiment from a config',
    'sample': 'draw images or text from a trained run',
    'evaluate': 'evaluate a trained run: robustness, generation or uncertainty',
    'sweep': 'train one config over several values of one key, and compare',
    'export': "write a trained run's parameters for other tools (safetensors, ...)",
    'configs': 'list the packaged experiments and their variants',
    'bench': 'JAX against PyTorch on the same models, same weights',
    'demo': 'the lecture tour on bundled data, as one HTML report',
    'cluster': 'run N processes of a command on this machine, as a multi-host job',
    'tpu': 'train on a Cloud TPU VM or pod slice',
}
_HELP = ('-h', '--help', '-?', '--helpshort')


def usage() -> str:
  lines = ['usage: frontiers <command> [flags]   (frontiers <command> --help for its flags)',
           '', 'commands:']
  lines += [f'  {name:<10} {about}' for name, about in COMMANDS.items()]
  return '\n'.join(lines)


def command_help(name: str, module) -> str:
  """The command's docstring and the flags it defines (absl's own, such as
  --verbosity, are listed by --helpfull)."""
  text = [f'frontiers {name}: {COMMANDS[name]}', '', (module.__doc__ or '').strip(), '']
  own = flags.FLAGS.get_flags_for_module(module.__name__)
  if own:
    text.append('flags:')
    for flag in sorted(own, key=lambda f: f.name):
      default = '' if flag.default in (None, '', []) else f' (default: {flag.default!r})'
      text.append(f'  --{flag.name}: {flag.help}{default}')
  return '\n'.join(text).rstrip() + '\n'


def run(name: str, argv: list[str]) -> None:
  """Runs command `name` with the arguments after it; exits."""
  module = importlib.import_module(f'{__name__}.{name}')
  before_separator = argv[:argv.index('--')] if '--' in argv else argv
  if any(arg in _HELP for arg in before_separator):
    print(command_help(name, module), end='')
    sys.exit(0)
  sys.argv = [f'frontiers {name}', *argv]
  try:
    module.run()
  except BrokenPipeError:  # `frontiers configs | head`: the reader has gone.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
  """The `frontiers` console script and `python -m frontiers_jax`."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in _HELP + ('help',):
    print(usage())
    sys.exit(0 if argv else EXIT_USAGE)
  name = argv[0]
  if name not in COMMANDS:
    print(f'error: command: unknown command {name!r}; commands are '
          f'{", ".join(COMMANDS)} (frontiers --help)', file=sys.stderr)
    sys.exit(EXIT_USAGE)
  run(name, argv[1:])
