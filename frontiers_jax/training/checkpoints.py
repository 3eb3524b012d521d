"""Orbax checkpoints: save every N steps, keep K, resume from the newest good one.

A checkpoint holds the train state and the train metrics summed since the
last log step, so that a resumed run logs the same averages as an
uninterrupted one. A latest checkpoint that cannot be restored (a truncated
file, a partial write) is moved aside to `corrupt_<step>` with a warning and
the previous one is used; nothing is deleted.

Saves are asynchronous: a failed write (disk full, permissions, a file in the
way) surfaces at the next `save`, `wait` or `close` as `WriteFailed`, naming
the step that was not written. Orbax writes each step into a temporary folder
and renames it when complete, so the checkpoints before it stay intact.
"""

import contextlib
import logging
import os
import sys
import re
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from frontiers_jax.errors import UsageError, check
from frontiers_jax.training.logs import is_remote


class WriteFailed(RuntimeError):
  """A checkpoint (or another output) could not be written; the checkpoints
  committed before it are intact, and rerunning resumes from the newest."""


def root_cause(error: BaseException) -> str:
  """The innermost OS error of a chain ('No space left on device'), else the
  first line of `error` itself."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return f'{os.strerror(seen.errno)} (errno {seen.errno})'
    # Tensorstore (Orbax's array writer) reports the OS error inside a message.
    code = re.search(r"os_error_code='(\d+)'", str(seen))
    if code:
      return f'{os.strerror(int(code[1]))} (errno {code[1]})'
    seen = seen.__cause__ or seen.__context__
  first_line = (str(error).splitlines() or [''])[0]
  return f'{type(error).__name__}: {first_line[:200]}'


class Checkpoints:
  """A thin, restore-with-fallback wrapper over `ocp.CheckpointManager`."""

  def __init__(self, directory: str, keep: int):
    self.directory = directory if is_remote(directory) else os.path.abspath(directory)
    self.keep = keep
    self._manager = self._open()
    self._saving = None    # the step whose asynchronous write may still run
    self._failed = False   # a write failed and was reported

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
    return ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, item: Any) -> None:
    """Starts an asynchronous save; device buffers are copied before return.

    Raises `WriteFailed` when this save, or the previous one still running,
    cannot be written.
    """
    self.wait()
    with self._reporting(step):
      self._manager.save(step, args=ocp.args.StandardSave(item))
    self._saving = step

  def wait(self) -> None:
    """Waits for the running save; raises `WriteFailed` if it failed."""
    with self._reporting(self._saving):
      self._manager.wait_until_finished()
    self._saving = None

  @contextlib.contextmanager
  def _reporting(self, step):
    try:
      yield
    except Exception as e:  # Orbax and tensorstore raise many types.
      self._failed = True
      raise WriteFailed(f'checkpoint {step} could not be written to {self.directory}: '
                        f'{root_cause(e)}; {self.intact()}') from e

  def intact(self) -> str:
    """'checkpoints up to step N are intact': read from the directory, where
    only complete checkpoints carry a plain step number as their name."""
    try:
      committed = [int(p.name) for p in epath.Path(self.directory).iterdir()
                   if p.name.isdigit()]
    except OSError:
      committed = []
    if not committed:
      return 'no earlier checkpoint was written'
    return f'checkpoints up to step {max(committed)} are intact'

  def restore_latest(self, like: Any) -> tuple[int, Any] | None:
    """Restores the newest checkpoint that loads into the structure of `like`.

    Returns (step, item), or None when there is no checkpoint. Checkpoints that
    fail to load are moved aside and the next older one is tried.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    failed = []
    for step in reversed(self.steps()):
      try:
        item = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # Orbax raises many types for damaged files.
        warnings.warn(f'checkpoint {step} in {self.directory} is unreadable '
                      f'({type(e).__name__}: {str(e)[:200]}); trying an older one',
                      stacklevel=2)
        failed.append(step)
        continue
      self._set_aside(failed)
      return step, item
    if failed:
      raise UsageError(self.directory, 'no checkpoint could be restored '
                       f'(steps {failed} are unreadable)',
                       'move the directory away to start afresh')
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable steps so that new saves can reuse their numbers."""
    if not steps or jax.process_index() != 0:
      return
    root = epath.Path(self.directory)
    for step in steps:
      target = root / f'corrupt_{step}'
      suffix = 0
      while target.exists():
        suffix += 1
        target = root / f'corrupt_{step}.{suffix}'
      (root / str(step)).rename(target)
    self._manager.reload()

  def close(self) -> None:
    """Waits for the running save and closes; after a reported failure, closes
    without raising again (the first error is the one that matters)."""
    if self._failed:
      with contextlib.suppress(Exception):
        self._manager.close()
      return
    try:
      self.wait()
    finally:
      with contextlib.suppress(Exception):
        self._manager.close()


def read_state(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, the train state as nested dicts of arrays) of a checkpoint,
  restored without a template, read-only."""
  directory = os.path.join(workdir, 'checkpoints')
  if not is_remote(directory):
    directory = os.path.abspath(directory)  # Orbax takes absolute paths only.
  check(epath.Path(directory).is_dir(), 'workdir', f'no checkpoints in {workdir}',
        f'train first: frontiers train --workdir={workdir}')
  with _quiet_orbax():
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
      steps = sorted(manager.all_steps())
      check(bool(steps), 'workdir', f'no checkpoint in {directory}',
            f'train first: frontiers train --workdir={workdir}')
      if step is not None:
        check(step in steps, 'step', f'no checkpoint of step {step} in {directory}',
              f'steps there: {", ".join(map(str, steps))}')
      tried = []
      for candidate in ([step] if step is not None else reversed(steps)):
        try:
          item = manager.restore(candidate, args=ocp.args.StandardRestore())
        except Exception as e:  # Orbax raises many types for damaged files.
          first_line = (str(e).splitlines() or [''])[0][:160]
          tried.append(f'{candidate} ({type(e).__name__}: {first_line})')
          continue
        if tried:
          print(f'warning: checkpoints {", ".join(tried)} in {directory} are unreadable; '
                f'using step {candidate}', file=sys.stderr)
        return candidate, item['state']
    finally:
      manager.close()
  raise UsageError(directory, f'no checkpoint could be read (tried {", ".join(tried)})',
                   'retrain, or restore the checkpoints from a copy')


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs a WARNING for every read-only manager it opens."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)
