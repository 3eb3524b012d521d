"""The gcloud commands that train on a Cloud TPU VM or pod slice.

`commands(...)` lists them, one shell line each, in order:

  1. reuse the TPU VM if `describe` finds it, else create it;
  2. pack the committed code (`git archive HEAD`) and copy it to every worker;
  3. unpack it and install the project with jax[tpu] (the `tpu` extra),
     gcsfs (Orbax and etils.epath reach gs:// with it) and google-cloud-storage
     (TensorBoard events) for the user on every worker;
  4. optionally copy a data folder from a bucket to every worker;
  5. run the same launch/train.py command on every worker at once;
  6. optionally delete the TPU VM.

Every worker is one JAX process; they find each other from the TPU metadata
(`frontiers_jax.distributed`). The workdir must be a bucket (gs://...): every
process writes its part of each checkpoint there.
"""

import re
import shlex
import subprocess
import sys
import tempfile

from frontiers_jax.errors import check

# The TPU software version (VM image) for each TPU generation, from
# https://cloud.google.com/tpu/docs/runtimes
RUNTIMES = {'v6e': 'v2-alpha-tpuv6e', 'v5p': 'v2-alpha-tpuv5',
            'v5litepod': 'v2-alpha-tpuv5-lite', 'v4': 'tpu-ubuntu2204-base',
            'v3': 'tpu-ubuntu2204-base', 'v2': 'tpu-ubuntu2204-base'}
REMOTE_DATA = 'frontiers_data'  # on each worker, under the home folder


def runtime_for(accelerator_type: str) -> str | None:
  """The VM image for `v5litepod-16`, `v4-32`, ...; None for an unknown one."""
  return RUNTIMES.get(accelerator_type.rsplit('-', 1)[0])


def _flag(args: list[str], name: str) -> str | None:
  """The value of the last `--name=value` in `args`."""
  values = [a.split('=', 1)[1] for a in args if a.startswith(f'--{name}=')]
  return values[-1] if values else None


def check_args(name: str, zone: str, accelerator_type: str, version: str,
               train_args: list[str], data_dir: str) -> None:
  """Raises `UsageError` on bad input, before any command runs."""
  check(re.fullmatch(r'[a-z]([-a-z0-9]*[a-z0-9])?', name or '') is not None, 'name',
        f'{name!r} is not a TPU VM name', 'give lowercase letters, digits and dashes, '
        'starting with a letter, e.g. --name=frontiers-v4')
  check(re.fullmatch(r'[a-z]+-[a-z]+[0-9]+-[a-z]', zone or '') is not None, 'zone',
        f'{zone!r} is not a zone', 'give a TPU zone, e.g. --zone=us-central2-b')
  check(bool(version) or runtime_for(accelerator_type) is not None, 'accelerator_type',
        f'{accelerator_type!r} is not a known TPU type',
        f'give <generation>-<cores or chips> with a generation in {sorted(RUNTIMES)}, '
        'e.g. v4-16, or pass --version')
  check(_flag(train_args, 'config') is not None, 'args', 'no --config=... after --',
        'end with -- --config=configs/<experiment>.py[:variant] --workdir=gs://...')
  workdir = _flag(train_args, 'workdir') or ''
  check(workdir.startswith('gs://'), 'args', f'--workdir={workdir} is not in a bucket',
        'give --workdir=gs://BUCKET/RUN: every worker writes its part of each checkpoint')
  check(not data_dir or data_dir.startswith('gs://'), 'data_dir',
        f'{data_dir} is not in a bucket', 'give gs://BUCKET/FOLDER or leave it out')


def commands(name: str, zone: str, accelerator_type: str, train_args: list[str],
             project: str = '', version: str = '', spot: bool = False,
             python: str = 'python3', data_dir: str = '', delete: bool = False,
             repo: str = '.') -> list[str]:
  """The shell lines that create or reuse `name`, ship, install and train."""
  check_args(name, zone, accelerator_type, version, train_args, data_dir)
  where = f'--zone={zone}' + (f' --project={project}' if project else '')
  tpu = 'gcloud compute tpus tpu-vm'
  on_all = f'{where} --worker=all --command='
  tarball = f'{tempfile.gettempdir()}/frontiers_jax-{name}.tar.gz'
  create = (f'{tpu} create {name} {where} --accelerator-type={accelerator_type} '
            f'--version={version or runtime_for(accelerator_type)}' + (' --spot' if spot else ''))
  pip = f'{python} -m pip install --user --quiet'
  install = ('rm -rf frontiers_jax && mkdir frontiers_jax && '
             'tar -xzf frontiers_jax.tar.gz -C frontiers_jax && '
             f'{pip} --upgrade pip && '
             f'{pip} -e "frontiers_jax[tpu]" gcsfs google-cloud-storage')
  train = 'cd frontiers_jax && '
  if data_dir:
    train += f'FRONTIERS_DATA_DIR=$HOME/{REMOTE_DATA} '
  train += f'{python} launch/train.py ' + shlex.join(train_args)
  lines = [
      f'{tpu} describe {name} {where} --format="value(state)" >/dev/null 2>&1 || {create}',
      f'git -C {shlex.quote(repo)} archive --format=tar.gz -o {tarball} HEAD',
      f'{tpu} scp {tarball} {name}:frontiers_jax.tar.gz {where} --worker=all',
      f'{tpu} ssh {name} {on_all}{shlex.quote(install)}',
  ]
  if data_dir:
    copy = (f'mkdir -p {REMOTE_DATA} && '
            f'gcloud storage cp --recursive {data_dir.rstrip("/")}/* {REMOTE_DATA}/')
    lines.append(f'{tpu} ssh {name} {on_all}{shlex.quote(copy)}')
  lines.append(f'{tpu} ssh {name} {on_all}{shlex.quote(train)}')
  if delete:
    lines.append(f'{tpu} delete {name} {where} --quiet')
  return lines


def run(lines: list[str]) -> int:
  """Runs the lines in order with bash; stops at the first that fails."""
  for line in lines:
    print(f'+ {line}', file=sys.stderr, flush=True)
    status = subprocess.run(['bash', '-c', line]).returncode
    if status != 0:
      print(f'error: exit status {status}: {line}', file=sys.stderr)
      return status
  return 0
