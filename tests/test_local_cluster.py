"""`launch/local_cluster.py`: N processes on 127.0.0.1, and what the training
loop does with several processes.

The launcher's own behaviour (prefixes, flags and environment of each process,
the first failure stops the rest, SIGTERM, the time bound) is tested with a
stand-in program that needs no JAX; the last test runs launch/train.py on
2 processes x 2 CPU devices, as a 2-host job would run, for each workload
(generalization in `make test`, the others with `make test-matrix`).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import each_workload

REPO = pathlib.Path(__file__).resolve().parents[1]

# Prints its process id, flags and device flags, then behaves as argv[1] says.
PROGRAM = '''
import os, sys, time
flags = dict(a[2:].split('=', 1) for a in sys.argv[2:] if a.startswith('--'))
pid = int(flags['process_id'])
print(f"pid {os.getpid()} {flags['coordinator_address']} {flags['num_processes']} "
      f"{os.environ['JAX_PLATFORMS']} {os.environ['XLA_FLAGS']}", flush=True)
print('to stderr', file=sys.stderr, flush=True)
mode = sys.argv[1]
if mode == 'fail' and pid == 1:
  time.sleep(0.5)
  sys.exit(3)
if mode in ('fail', 'hang'):
  time.sleep(600)
'''


def launcher(program, *args):
  return [sys.executable, 'launch/local_cluster.py', f'--program={program}', *args]


def run_launcher(tmp_path, mode, *flags, timeout=60):
  program = tmp_path / 'program.py'
  program.write_text(PROGRAM)
  start = time.monotonic()
  done = subprocess.run(launcher(program, *flags, '--', mode), cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)
  return done, time.monotonic() - start


def child_pids(stdout: str) -> list[int]:
  return [int(line.split()[2]) for line in stdout.splitlines() if ' pid ' in line]


def assert_gone(pids):
  for pid in pids:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      continue
    raise AssertionError(f'process {pid} still runs')


def test_each_process_gets_its_flags_devices_and_prefix(tmp_path):
  done, _ = run_launcher(tmp_path, 'ok', '--num_processes=3', '--devices_per_process=2',
                         '--port=23456')
  assert done.returncode == 0, done.stderr
  lines = sorted(line for line in done.stdout.splitlines() if ' pid ' in line)
  assert [line[:4] for line in lines] == ['[0] ', '[1] ', '[2] ']
  for line in lines:
    assert line.endswith('127.0.0.1:23456 3 cpu --xla_force_host_platform_device_count=2')
  assert sorted(done.stderr.splitlines()) == ['[0] to stderr', '[1] to stderr',
                                              '[2] to stderr']


def test_first_failure_stops_the_others_with_its_status(tmp_path):
  done, seconds = run_launcher(tmp_path, 'fail')
  assert done.returncode == 3, done.stderr
  assert 'process 1 exited with status 3; stopping the others' in done.stderr
  assert seconds < 30  # process 0 would sleep 600 s
  assert len(child_pids(done.stdout)) == 2
  assert_gone(child_pids(done.stdout))


def test_time_bound_kills_everything_with_124(tmp_path):
  done, seconds = run_launcher(tmp_path, 'hang', '--timeout_s=2')
  assert done.returncode == 124
  assert 'timed out after 2 s' in done.stderr
  assert seconds < 30
  assert_gone(child_pids(done.stdout))


def test_sigterm_stops_every_process(tmp_path):
  program = tmp_path / 'program.py'
  program.write_text(PROGRAM)
  process = subprocess.Popen(launcher(program, '--', 'hang'), cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  try:
    pids = [int(process.stdout.readline().split()[2]) for _ in range(2)]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
  finally:
    process.kill()
    process.communicate()
  assert_gone(pids)


def test_bad_flags_give_one_line(tmp_path):
  done, _ = run_launcher(tmp_path, 'ok', '--devices_per_process=0')
  assert done.returncode == 2
  assert done.stderr.splitlines() == [
      'error: devices_per_process: 0 is not allowed; give at least 1']


def metrics(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def child_of(workdir, process_id: int) -> int:
  """The pid of process `process_id` of the local cluster training in `workdir`."""
  for entry in pathlib.Path('/proc').iterdir():
    try:
      argv = (entry / 'cmdline').read_bytes().split(b'\0')
    except (OSError, ValueError):
      continue
    if (f'--workdir={workdir}'.encode() in argv
        and f'--process_id={process_id}'.encode() in argv):
      return int(entry.name)
  raise AssertionError(f'no process {process_id} training in {workdir}')


def wait_for_checkpoint(workdir, step, process, timeout=300):
  deadline = time.monotonic() + timeout
  folder = workdir / 'checkpoints'
  while not (folder.is_dir() and any(p.name.isdigit() and int(p.name) >= step
                                     for p in folder.iterdir())):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline, f'no checkpoint {step} after {timeout} s'
    time.sleep(0.01)


@pytest.mark.parametrize('workload', each_workload())
def test_two_processes_match_one_and_survive_sigterm_on_one_host(workload, tmp_path):
  """2 processes x 2 CPU devices train a workload's tiny config as 1 process x
  4 devices does: the same 4-way data-parallel program, each process feeding
  its half of every batch. Midway, SIGTERM reaches process 1 alone, as a
  preemption notice reaches one host: both processes save the same step and
  exit 143; the rerun resumes there.

  Tolerance: relative 1e-5 on every logged metric. The runs differ only in how
  the gradient all-reduce adds the 4 devices' partial sums (across two
  processes over gloo, or inside one), so float32 results may differ in the
  last bits; observed up to 1.5e-7 relative on generalization. A batch row in
  the wrong process, a wrong eval mask or a wrong resume step changes the loss
  by far more.
  """
  args = [f'--config=configs/{workload}.py:tiny', '--config.num_steps=24',
          '--config.checkpoint_every=4', '--config.log_every=4', '--config.eval_every=12']
  one, two = tmp_path / 'one', tmp_path / 'two'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  done = subprocess.run([sys.executable, 'launch/train.py', *args, f'--workdir={one}'],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr

  cluster = [sys.executable, 'launch/local_cluster.py', '--num_processes=2',
             '--devices_per_process=2', '--timeout_s=600', '--', *args, f'--workdir={two}']
  process = subprocess.Popen(cluster, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  try:
    wait_for_checkpoint(two, 4, process)
    os.kill(child_of(two, 1), signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.communicate()
  assert process.returncode == 143, stderr[-3000:]
  steps = {line[:4]: int(line.split('at step ')[1].split(':')[0])
           for line in stderr.splitlines() if 'preempted: SIGTERM at step' in line}
  assert set(steps) == {'[0] ', '[1] '} and len(set(steps.values())) == 1, stderr[-3000:]
  saved = steps['[0] ']
  assert 4 <= saved < 24
  assert not (two / 'summary.json').exists()

  done = subprocess.run(cluster, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'[0] [{workload}] resumed from step {saved}' in done.stderr
  # Process 0 alone reports: progress (stderr) and the final line (stdout).
  # (Gloo, the CPU collectives library, prints in both, its lines at times
  # cut in pieces.)
  for stream, report in ((done.stderr, f'[{workload}]'), (done.stdout, 'done in ')):
    assert [line for line in stream.splitlines()
            if line.startswith('[0]') and report in line]
    assert not [line for line in stream.splitlines()
                if line.startswith('[1]') and report in line]
  summary = json.loads((two / 'summary.json').read_text())
  assert summary['devices']['process_count'] == 2 and summary['devices']['count'] == 4

  expected, got = metrics(one), metrics(two)
  assert [r['step'] for r in got] == [r['step'] for r in expected]
  for want, have in zip(expected, got):
    assert have.keys() == want.keys()
    for key in want:
      np.testing.assert_allclose(have[key], want[key], rtol=1e-5, atol=1e-7, err_msg=key)
