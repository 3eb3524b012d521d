"""The cluster launchers: launch/tpu_vm.py (its command list, dry and run
against a stand-in gcloud) and launch/slurm.sbatch (run under a stand-in srun
that starts its tasks on this machine, so JAX's own SLURM detection joins them).
"""

import json
import os
import pathlib
import random
import shlex
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

TRAIN_ARGS = ['--config=configs/generalization.py:mnist', '--workdir=gs://bkt/runs/mnist',
              '--config.model.hidden=256,256', '--config.data.name=it has spaces']


def tpu_vm(*flags, env=None):
  return subprocess.run([sys.executable, 'launch/tpu_vm.py', *flags, '--', *TRAIN_ARGS],
                        cwd=REPO, capture_output=True, text=True, timeout=60,
                        env={**os.environ, **(env or {})})


def test_dry_run_prints_the_exact_commands():
  done = tpu_vm('--name=fj-pod', '--zone=us-central2-b', '--project=proj',
                '--accelerator_type=v5litepod-16', '--spot', '--data_dir=gs://bkt/data/',
                '--delete', '--dry_run')
  assert done.returncode == 0, done.stderr
  tarball = f'{tempfile.gettempdir()}/frontiers_jax-fj-pod.tar.gz'
  where = '--zone=us-central2-b --project=proj'
  ssh = f'gcloud compute tpus tpu-vm ssh fj-pod {where} --worker=all --command='
  pip = 'python3 -m pip install --user --quiet'
  assert done.stdout.splitlines() == [
      f'gcloud compute tpus tpu-vm describe fj-pod {where} --format="value(state)" '
      f'>/dev/null 2>&1 || gcloud compute tpus tpu-vm create fj-pod {where} '
      '--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite --spot',
      f'git -C {REPO} archive --format=tar.gz -o {tarball} HEAD',
      f'gcloud compute tpus tpu-vm scp {tarball} fj-pod:frontiers_jax.tar.gz {where} '
      '--worker=all',
      ssh + shlex.quote('rm -rf frontiers_jax && mkdir frontiers_jax && tar -xzf '
                        f'frontiers_jax.tar.gz -C frontiers_jax && {pip} --upgrade pip && '
                        f'{pip} -e "frontiers_jax[tpu]" gcsfs google-cloud-storage'),
      ssh + shlex.quote('mkdir -p frontiers_data && gcloud storage cp --recursive '
                        'gs://bkt/data/* frontiers_data/'),
      ssh + shlex.quote('cd frontiers_jax && FRONTIERS_DATA_DIR=$HOME/frontiers_data '
                        'python3 launch/train.py ' + shlex.join(TRAIN_ARGS)),
      f'gcloud compute tpus tpu-vm delete fj-pod {where} --quiet',
  ]
  # Each line is valid shell, and every worker gets the train.py arguments intact.
  for line in done.stdout.splitlines():
    assert subprocess.run(['bash', '-n', '-c', line]).returncode == 0, line
  remote = shlex.split(shlex.split(done.stdout.splitlines()[-2])[-1].split('=', 1)[1])
  assert remote[-len(TRAIN_ARGS):] == TRAIN_ARGS


def fake_gcloud(tmp_path, fail_on: str = 'describe', status: int = 1) -> pathlib.Path:
  """A `gcloud` on PATH that records its arguments and fails `fail_on`."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  script = bin_dir / 'gcloud'
  script.write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/calls\n'
                    f'[[ "$*" == *" {fail_on} "* ]] && exit {status}\nexit 0\n')
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  return bin_dir


def test_run_creates_a_missing_vm_ships_the_code_and_trains(tmp_path):
  path = f'{fake_gcloud(tmp_path)}:{os.environ["PATH"]}'
  done = tpu_vm('--name=fj', '--zone=europe-west4-a', '--accelerator_type=v4-16',
                env={'PATH': path, 'TMPDIR': str(tmp_path)})
  assert done.returncode == 0, done.stderr
  calls = (tmp_path / 'calls').read_text().splitlines()
  assert [c.split()[3] for c in calls] == ['describe', 'create', 'scp', 'ssh', 'ssh']
  assert '--accelerator-type=v4-16 --version=tpu-ubuntu2204-base' in calls[1]
  assert calls[-1].endswith('python3 launch/train.py ' + shlex.join(TRAIN_ARGS))
  with tarfile.open(tmp_path / 'frontiers_jax-fj.tar.gz') as tar:
    assert {'launch/train.py', 'setup.cfg', 'frontiers_jax/distributed.py'} <= set(
        tar.getnames())


def test_run_stops_at_the_first_failing_command(tmp_path):
  path = f'{fake_gcloud(tmp_path, fail_on="scp", status=7)}:{os.environ["PATH"]}'
  done = tpu_vm('--name=fj', '--zone=europe-west4-a', env={'PATH': path,
                                                            'TMPDIR': str(tmp_path)})
  assert done.returncode == 7
  calls = (tmp_path / 'calls').read_text().splitlines()
  assert [c.split()[3] for c in calls] == ['describe', 'scp']  # the VM exists: reused


def test_dry_run_runs_nothing_and_bad_input_is_one_line(tmp_path):
  path = f'{fake_gcloud(tmp_path)}:{os.environ["PATH"]}'
  done = tpu_vm('--name=fj', '--zone=europe-west4-a', '--dry_run', env={'PATH': path})
  assert done.returncode == 0 and not (tmp_path / 'calls').exists()
  done = tpu_vm('--name=fj', '--zone=europe-west4-a', '--accelerator_type=v9-8', '--dry_run')
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
      "error: accelerator_type: 'v9-8' is not a known TPU type; give "
      "<generation>-<cores or chips> with a generation in ['v2', 'v3', 'v4', 'v5litepod', "
      "'v5p', 'v6e'], e.g. v4-16, or pass --version"]


# Starts one copy of the command per task with the variables srun sets.
FAKE_SRUN = '''#!{python}
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith('--'):
  args.pop(0)
tasks = int(os.environ['FAKE_SLURM_NTASKS'])
env = dict(os.environ, SLURM_NTASKS=str(tasks), SLURM_STEP_NODELIST='localhost',
           SLURM_STEP_NUM_NODES=str(tasks), SLURM_LOCALID='0')
children = [subprocess.Popen(args, env=dict(env, SLURM_PROCID=str(i))) for i in range(tasks)]
sys.exit(max(child.wait() for child in children))
'''


def slurm_job_id() -> int:
  """A job id whose coordinator port (JAX: 61440 + id % 4096) is free."""
  for port in random.sample(range(61440, 65536), 200):
    with socket.socket() as s:
      try:
        s.bind(('', port))
      except OSError:
        continue
    return port - 61440
  raise AssertionError('no free port in 61440-65535')


def test_sbatch_template_runs_one_process_per_task(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  srun = bin_dir / 'srun'
  srun.write_text(FAKE_SRUN.format(python=sys.executable))
  srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
  workdir = tmp_path / 'run'
  env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'FAKE_SLURM_NTASKS': '2',
         'SLURM_JOB_ID': str(slurm_job_id()), 'SLURM_SUBMIT_DIR': str(REPO),
         'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  done = subprocess.run(['bash', str(REPO / 'launch/slurm.sbatch'),
                         '--config=configs/approximation.py:tiny', f'--workdir={workdir}'],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
  assert done.returncode == 0, done.stderr
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['devices']['process_count'] == 2 and summary['devices']['count'] == 4
  assert summary['final']['train/loss'] > 0
