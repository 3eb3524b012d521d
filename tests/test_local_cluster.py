"""`launch/local_cluster.py`: N processes on 127.0.0.1, and what the training
loop does with several processes.

The launcher's own behaviour (prefixes, flags and environment of each process,
the first failure stops the rest, SIGTERM, the time bound) is tested with a
stand-in program that needs no JAX; the last test runs launch/train.py on
2 processes x 2 CPU devices, as a 2-host job would run.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

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


def test_two_processes_match_one_process_and_resume(tmp_path):
  """2 processes x 2 CPU devices train `generalization.py:tiny` as 1 process x
  4 devices does: the same 4-way data-parallel program, each process feeding
  its half of every batch.

  Tolerance: relative 1e-5 on every logged metric. The two runs differ only in
  how the gradient all-reduce adds the 4 devices' partial sums (across two
  processes over gloo, or inside one), so float32 results may differ in the
  last bits; observed up to 1.5e-7 relative over the 12 steps. A batch row in
  the wrong process or a wrong eval mask changes the loss by more than 1e-3.

  Then the 2-process run resumes from its step-8 checkpoint (both processes
  restore it) and must log the same records, bit for bit.
  """
  args = ['--config=configs/generalization.py:tiny']
  one, two = tmp_path / 'one', tmp_path / 'two'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  done = subprocess.run([sys.executable, 'launch/train.py', *args, f'--workdir={one}'],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr

  cluster = [sys.executable, 'launch/local_cluster.py', '--num_processes=2',
             '--devices_per_process=2', '--timeout_s=120', '--', *args, f'--workdir={two}']
  done = subprocess.run(cluster, cwd=REPO, capture_output=True, text=True, timeout=150)
  assert done.returncode == 0, done.stderr
  # Process 0 alone reports (gloo, the CPU collectives library, prints in both).
  assert '[0] [generalization] step 12/12' in done.stdout
  assert not [line for line in done.stdout.splitlines()
              if line.startswith('[1]') and '[Gloo]' not in line]
  summary = json.loads((two / 'summary.json').read_text())
  assert summary['devices']['process_count'] == 2 and summary['devices']['count'] == 4

  expected, got = metrics(one), metrics(two)
  assert [r['step'] for r in got] == [r['step'] for r in expected] == [3, 6, 9, 12]
  for want, have in zip(expected, got):
    assert have.keys() == want.keys()
    for key in want:
      np.testing.assert_allclose(have[key], want[key], rtol=1e-5, atol=1e-7, err_msg=key)

  shutil.rmtree(two / 'checkpoints' / '12')
  done = subprocess.run(cluster, cwd=REPO, capture_output=True, text=True, timeout=150)
  assert done.returncode == 0, done.stderr
  assert 'resumed from step 8' in done.stdout
  assert metrics(two) == got
