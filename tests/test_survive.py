"""Surviving bad luck, for every workload.

Each scenario interrupts a run and restarts it; the restarted run must end
exactly where an uninterrupted one ends: the same `metrics.jsonl` and the same
final metrics in `summary.json`, bit for bit.

  SIGKILL    at random steps (two kills per run, the steps drawn from a seed),
             mid-save included: checkpoints are written every 3 steps.
  SIGTERM    a checkpoint of the current step is written, exit status 143,
             within GRACE_S of the signal.
  disk full  the workdir on a filesystem a few checkpoints large: exit status
             74, one clear `error:` line, the checkpoints before it intact.
  read-only  the checkpoint directory turns read-only mid-run: the same.
  corrupt    the newest checkpoint truncated: a warning, the previous one used.

Runs are subprocesses of launch/train.py on 8 fake CPU devices, with each
workload's `tiny` config made a little longer (SURVIVE). The generalization
workload runs in `make test`; the others carry the `matrix` marker (`make
test-matrix`, which CI runs after `make test`).

The full disk is a small tmpfs and the read-only directory a read-only bind
mount, both inside a private mount namespace (`unshare --user
--map-root-user --mount`: no privileges needed, and root's permission bypass
does not apply to a read-only mount). Where the kernel refuses unshare these
two tests are skipped with that reason.
"""

import functools
import math
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import each_workload
from run_files import all_finite, checkpoint_steps, read_metrics, read_summary, restore

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 30
# Checkpoints every 3 steps (a save of the tiny UNet's 519 arrays takes longer
# than its step: saving at every step would make the runs the saves); logs
# every 4 steps, so that most checkpoints hold partly summed train metrics.
SURVIVE = ['--config.quiet=true', f'--config.num_steps={NUM_STEPS}',
           '--config.checkpoint_every=3', '--config.log_every=4', '--config.eval_every=10']
GRACE_S = 30  # Kubernetes' default termination grace period; GCE gives 30 s too.
EXIT_WRITE_FAILED, EXIT_PREEMPTED = 74, 143
WRITE_ERROR = re.compile(r'error: .+: (?P<reason>[^:;]+) \(errno \d+\); '
                         r'checkpoints up to step (?P<step>\d+) are intact; '
                         r'free space or fix the permissions, then rerun to resume')


@pytest.fixture(scope='module', autouse=True)
def launch_env(tmp_path_factory):
  """8 CPU devices, no data dir from the environment, nothing prepared in TFDS,
  and one persistent compilation cache, so that restarts compile less."""
  with pytest.MonkeyPatch.context() as env:
    env.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
    env.setenv('JAX_PLATFORMS', 'cpu')
    env.setenv('TFDS_DATA_DIR', str(tmp_path_factory.mktemp('tfds')))
    env.delenv('FRONTIERS_DATA_DIR', raising=False)
    env.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path_factory.mktemp('jax_cache')))
    env.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    yield


def train_args(workload, workdir, *extra):
  return ['launch/train.py', f'--config=configs/{workload}.py:tiny', *SURVIVE, *extra,
          f'--workdir={workdir}']


def run_train(workload, workdir, *extra, timeout=600):
  done = subprocess.run([sys.executable, *train_args(workload, workdir, *extra)],
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)
  return done.returncode, done.stderr


@pytest.fixture
def start_train():
  """Starts runs in the background; kills what still runs at teardown."""
  processes = []

  def start(workload, workdir, *extra):
    processes.append(subprocess.Popen(
        [sys.executable, *train_args(workload, workdir, *extra)], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return processes[-1]

  yield start
  for process in processes:
    if process.poll() is None:
      process.kill()
    process.communicate()


def wait_for_checkpoint(workdir, step, process, timeout=600):
  """Polls every 5 ms until a checkpoint of `step` or later is committed."""
  deadline = time.monotonic() + timeout
  while True:
    assert process.poll() is None, (
        f'the run ended with status {process.returncode} before checkpoint {step}: '
        f'{process.stderr.read()[-3000:]}')
    assert time.monotonic() < deadline, f'no checkpoint {step} after {timeout} s'
    try:
      if checkpoint_steps(workdir) and checkpoint_steps(workdir)[-1] >= step:
        return
    except FileNotFoundError:  # The run has not created the folder yet.
      pass
    time.sleep(0.005)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run of each workload, run once: its workdir."""
  done = {}

  def get(workload):
    if workload not in done:
      workdir = tmp_path_factory.mktemp(f'reference_{workload}')
      returncode, stderr = run_train(workload, workdir)
      assert returncode == 0, stderr
      done[workload] = workdir
    return done[workload]

  return get


def assert_resumes_to_reference(workload, workdir, reference_dir, from_step, *extra):
  """Reruns the same command in `workdir`: it must resume from `from_step`
  and end exactly as the uninterrupted run did."""
  returncode, stderr = run_train(workload, workdir, *extra)
  assert returncode == 0, stderr
  assert read_summary(workdir)['resumed_from_step'] == from_step
  assert read_metrics(workdir) == read_metrics(reference_dir)
  assert read_summary(workdir)['final'] == read_summary(reference_dir)['final']


# SIGKILL and SIGTERM.


@pytest.mark.parametrize('seed', [0, pytest.param(1, marks=pytest.mark.matrix)])
@pytest.mark.parametrize('workload', each_workload())
def test_sigkill_at_random_steps_then_resume_bit_for_bit(workload, seed, reference,
                                                         start_train, tmp_path):
  kills = sorted(random.Random(f'{workload}:{seed}').sample(range(2, NUM_STEPS - 12), 2))
  kills[1] = max(kills[1], kills[0] + 5)  # The second kill after a resume that saves.
  for step in kills:
    process = start_train(workload, tmp_path)
    wait_for_checkpoint(tmp_path, step, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, 'the run ended before the kill'
    assert not (tmp_path / 'summary.json').exists()
  latest = checkpoint_steps(tmp_path)[-1]
  assert kills[1] <= latest < NUM_STEPS
  assert_resumes_to_reference(workload, tmp_path, reference(workload), latest)


@pytest.mark.parametrize('workload', each_workload())
def test_sigterm_checkpoints_within_grace_exits_143_and_resumes(workload, reference,
                                                                start_train, tmp_path):
  process = start_train(workload, tmp_path)
  wait_for_checkpoint(tmp_path, 3, process)
  signalled = time.monotonic()
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  seconds = time.monotonic() - signalled
  assert process.returncode == EXIT_PREEMPTED, (
      f'status {process.returncode} (0: the run ended before SIGTERM): {stderr}')
  assert seconds < GRACE_S
  latest = checkpoint_steps(tmp_path)[-1]
  assert 3 <= latest < NUM_STEPS
  assert f'preempted: SIGTERM at step {latest}: checkpoint written' in stderr
  assert all_finite(restore(tmp_path, latest))
  assert_resumes_to_reference(workload, tmp_path, reference(workload), latest)


# A full disk and a read-only checkpoint directory.


@functools.cache
def namespaces_refused() -> str:
  """Why a private mount namespace with a tmpfs cannot be made here ('' if it can)."""
  probe = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
                          'mount -t tmpfs -o size=64k tmpfs /tmp'],
                         capture_output=True, text=True)
  return '' if probe.returncode == 0 else f'unshare refused: {probe.stderr.strip()}'


def in_namespace(script, timeout=600):
  """Runs `script` (sh) in a private user and mount namespace."""
  if namespaces_refused():
    pytest.skip(namespaces_refused())
  return subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
                         script], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def disk_kib(path):
  """Kibibytes `path` (a file or a folder) takes on tmpfs: every file rounded
  up to 4 KiB pages."""
  path = pathlib.Path(path)
  files = [path] if path.is_file() else [p for p in path.rglob('*') if p.is_file()]
  return sum(4 * math.ceil(p.stat().st_size / 4096) for p in files)


def assert_one_write_error(stderr, reason):
  """Exactly one `error:` line, naming `reason`; the intact step it states.

  Orbax's threads print their tracebacks concurrently, so the line is looked
  for anywhere in a line (the launcher starts it on a new line, but a thread
  can still write between the two).
  """
  matches = [m for line in stderr.splitlines() for m in [WRITE_ERROR.search(line)] if m]
  assert len(matches) == 1, stderr[-3000:]
  assert matches[0]['reason'] == reason, matches[0][0]
  # Orbax's threads log their own failures; the loop prints no traceback.
  assert not re.search(r'File ".*frontiers_jax', stderr), stderr[-3000:]
  return int(matches[0]['step'])


def assert_intact(workdir, step):
  assert checkpoint_steps(workdir)[-1] == step
  assert all_finite(restore(workdir, step))


@pytest.mark.parametrize('workload', each_workload())
def test_full_disk_stops_with_one_line_and_loses_nothing(workload, reference, tmp_path):
  ref = reference(workload)
  one_checkpoint = disk_kib(ref / 'checkpoints' / str(checkpoint_steps(ref)[-1]))
  # Room for the logs and about three checkpoints, never deleted (keep 1000);
  # not for the figures, which TensorBoard gets in a file of their own.
  scalars = [p for p in (ref / 'tensorboard').iterdir() if not p.name.endswith('.figures')]
  size_kib = 64 + sum(disk_kib(p) for p in scalars) + 3.5 * one_checkpoint
  mount, saved = tmp_path / 'tmpfs', tmp_path / 'saved'
  mount.mkdir()
  args = ' '.join(train_args(workload, mount / 'run', '--config.keep_checkpoints=1000'))
  done = in_namespace(
      f'mount -t tmpfs -o size={int(size_kib)}k tmpfs {mount} || exit 99; '
      f'{sys.executable} {args}; status=$?; cp -a {mount}/run {saved}; exit $status')

  assert done.returncode == EXIT_WRITE_FAILED, done.stderr[-3000:]
  step = assert_one_write_error(done.stderr, 'No space left on device')
  assert not (saved / 'summary.json').exists()
  assert_intact(saved, step)
  assert_resumes_to_reference(workload, saved, ref, step, '--config.keep_checkpoints=1000')


@pytest.mark.parametrize('workload', each_workload())
def test_read_only_checkpoints_stop_with_one_line_and_lose_nothing(workload, reference,
                                                                  tmp_path):
  ref, checkpoints = reference(workload), tmp_path / 'checkpoints'
  done = in_namespace(
      f'{sys.executable} {" ".join(train_args(workload, tmp_path))} & run=$!; '
      f'until [ -d {checkpoints}/3 ]; do kill -0 $run || exit 99; sleep 0.005; done; '
      f'mount --bind {checkpoints} {checkpoints} || exit 98; '
      # Refused (busy) while Orbax holds a file of the new mount open for writing.
      f'tries=0; until mount -o remount,bind,ro {checkpoints} 2>/dev/null; do '
      f'tries=$((tries + 1)); [ $tries -lt 1000 ] || exit 98; sleep 0.002; done; '
      f'wait $run')

  assert done.returncode == EXIT_WRITE_FAILED, done.stderr[-3000:]
  step = assert_one_write_error(done.stderr, 'Read-only file system')
  assert step >= 3
  assert_intact(tmp_path, step)
  assert_resumes_to_reference(workload, tmp_path, ref, step)


# A corrupt newest checkpoint.


@pytest.mark.parametrize('workload', each_workload())
def test_corrupt_latest_checkpoint_falls_back_with_a_warning(workload, reference, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference(workload), workdir)
  newest, previous = checkpoint_steps(workdir)[-1], checkpoint_steps(workdir)[-2]
  data_files = [p for p in (workdir / 'checkpoints' / str(newest)).rglob('*')
                if p.is_file() and p.parent.name == 'd']
  assert data_files
  for path in data_files:  # Truncated, as by a crash mid-write.
    with open(path, 'r+b') as f:
      f.truncate(3)
  (workdir / 'summary.json').unlink()

  returncode, stderr = run_train(workload, workdir)

  assert returncode == 0, stderr
  assert re.search(rf'checkpoint {newest} in \S+ is unreadable', stderr)
  assert (workdir / 'checkpoints' / f'corrupt_{newest}').is_dir()  # set aside, kept
  assert read_summary(workdir)['resumed_from_step'] == previous
  assert read_metrics(workdir) == read_metrics(reference(workload))
  assert read_summary(workdir)['final'] == read_summary(reference(workload))['final']
