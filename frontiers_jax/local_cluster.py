"""N JAX processes on this machine, to test multi-process code without a cluster.

`run(...)` starts N copies of a program (`frontiers train` by default) on
127.0.0.1, each with `--coordinator_address`, `--num_processes` and
`--process_id` added to its arguments and `devices_per_process` fake CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count`). They find each
other through JAX's distributed runtime and run collectives over gloo, as
processes on different hosts do over the network.

Each output line is prefixed with its process id (`[1] ...`). The first
process to fail stops the others (SIGKILL: they are usually waiting for it in a
collective) and its exit status is returned, except that a process preempted
by SIGTERM (status 143) leaves the others `grace_s` to save the same
checkpoint and stop by themselves; SIGINT or SIGTERM to this
launcher sends SIGTERM to every process, waits `grace_s`, then kills what is
left; after `timeout_s` everything is killed and 124 is returned.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

from frontiers_jax.errors import check

EXIT_TIMEOUT = 124  # As timeout(1).
EXIT_PREEMPTED = 143  # A train.py process that saved a checkpoint after SIGTERM.
DISTRIBUTED_FLAGS = ('--coordinator_address', '--num_processes', '--process_id')


def free_port() -> int:
  """A TCP port free on 127.0.0.1 now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def check_args(program: str, args: list[str], num_processes: int,
               devices_per_process: int, port: int, timeout_s: float) -> None:
  """Raises `UsageError` on a bad launcher flag, before anything starts."""
  check(num_processes >= 1, 'num_processes', f'{num_processes} is not allowed',
        'give at least 1')
  check(devices_per_process >= 1, 'devices_per_process',
        f'{devices_per_process} is not allowed', 'give at least 1')
  check(0 <= port < 65536, 'port', f'{port} is not allowed',
        'give 0 (a free port) or 1 to 65535')
  check(timeout_s > 0, 'timeout_s', f'{timeout_s} is not allowed', 'give seconds > 0')
  check(not program or os.path.isfile(program), 'program', f'{program} does not exist',
        'give a Python file, or leave --program out (frontiers train)')
  for arg in args:
    check(not arg.startswith(DISTRIBUTED_FLAGS), 'args', f'{arg} is set by the launcher',
          'leave out --coordinator_address, --num_processes and --process_id')


def child_env(devices_per_process: int, base: dict[str, str]) -> dict[str, str]:
  """`base` with CPU as the platform and `devices_per_process` CPU devices."""
  xla_flags = re.sub(r'--xla_force_host_platform_device_count=\S*', '',
                     base.get('XLA_FLAGS', ''))
  xla_flags = f'{xla_flags} --xla_force_host_platform_device_count={devices_per_process}'
  return {**base, 'XLA_FLAGS': xla_flags.strip(), 'JAX_PLATFORMS': 'cpu',
          'PYTHONUNBUFFERED': '1'}


def child_command(program: str, args: list[str], address: str, num_processes: int,
                  process_id: int) -> list[str]:
  """The command line of process `process_id`; no `program`: `frontiers train`."""
  head = [program] if program else ['-m', 'frontiers_jax', 'train']
  return [sys.executable, *head, *args, f'--coordinator_address={address}',
          f'--num_processes={num_processes}', f'--process_id={process_id}']


def _forward(source: IO[bytes], sink: IO[bytes], prefix: bytes, lock: threading.Lock):
  """Copies `source` to `sink` line by line, each line after `prefix`."""
  for line in iter(source.readline, b''):
    with lock:
      sink.write(prefix + line)
      sink.flush()
  source.close()


def _status(returncode: int) -> int:
  """A shell's exit status for a child's return code (killed by N: 128 + N)."""
  return 128 - returncode if returncode < 0 else returncode


def run(program: str, args: list[str], num_processes: int, devices_per_process: int,
        port: int = 0, timeout_s: float = 3600, grace_s: float = 10) -> int:
  """Runs the processes to the end; returns the launcher's exit status."""
  check_args(program, args, num_processes, devices_per_process, port, timeout_s)
  address = f'127.0.0.1:{port or free_port()}'
  env = child_env(devices_per_process, dict(os.environ))
  lock = threading.Lock()
  stopped = []  # The signal that asked us to stop, if one did.
  if threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signum, lambda signum, frame: stopped.append(signum))

  children, forwarders = [], []
  try:
    for i in range(num_processes):
      child = subprocess.Popen(child_command(program, args, address, num_processes, i),
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)  # Ctrl-C reaches us only.
      children.append(child)
      prefix = f'[{i}] '.encode()
      for source, sink in ((child.stdout, sys.stdout.buffer),
                           (child.stderr, sys.stderr.buffer)):
        forwarders.append(threading.Thread(target=_forward, daemon=True,
                                           args=(source, sink, prefix, lock)))
        forwarders[-1].start()

    deadline = time.monotonic() + timeout_s
    while True:
      codes = [child.poll() for child in children]
      failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
      if failed:
        status = _status(codes[failed[0]])
        if status == EXIT_PREEMPTED:  # The others save the same step and stop too.
          _wait(children, grace_s)
        elif len(failed) < num_processes:
          _say(lock, f'local_cluster: process {failed[0]} exited with status {status}; '
               'stopping the others')
        break
      if all(code == 0 for code in codes):
        status = 0
        break
      if stopped:
        _terminate(children, grace_s)
        status = 128 + stopped[0]
        break
      if time.monotonic() > deadline:
        _say(lock, f'local_cluster: timed out after {timeout_s:g} s; stopping all processes')
        status = EXIT_TIMEOUT
        break
      time.sleep(0.05)
  finally:
    for child in children:  # Whatever still runs after a failure or a timeout.
      if child.poll() is None:
        child.kill()
      child.wait()
    for thread in forwarders:
      thread.join(timeout=5)
  return status


def _terminate(children: list[subprocess.Popen], grace_s: float) -> None:
  """SIGTERM to every child (a train.py run saves a checkpoint), then up to
  `grace_s` for them to end."""
  for child in children:
    if child.poll() is None:
      child.terminate()
  _wait(children, grace_s)


def _wait(children: list[subprocess.Popen], grace_s: float) -> None:
  """Up to `grace_s` for every child to end by itself."""
  deadline = time.monotonic() + grace_s
  while time.monotonic() < deadline and any(c.poll() is None for c in children):
    time.sleep(0.05)


def _say(lock: threading.Lock, line: str) -> None:
  with lock:
    sys.stderr.buffer.write(line.encode() + b'\n')
    sys.stderr.buffer.flush()
