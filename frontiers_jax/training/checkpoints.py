"""Orbax checkpoints: save every N steps, keep K, resume from the newest good one.

A checkpoint holds the train state and the train metrics summed since the
last log step, so that a resumed run logs the same averages as an
uninterrupted one. A latest checkpoint that cannot be restored (a truncated
file, a partial write) is moved aside to `corrupt_<step>` with a warning and
the previous one is used; nothing is deleted.
"""

import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from frontiers_jax.errors import UsageError
from frontiers_jax.training.logs import is_remote


class Checkpoints:
  """A thin, restore-with-fallback wrapper over `ocp.CheckpointManager`."""

  def __init__(self, directory: str, keep: int):
    self.directory = directory if is_remote(directory) else os.path.abspath(directory)
    self.keep = keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
    return ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, item: Any) -> None:
    """Starts an asynchronous save; device buffers are copied before return."""
    self._manager.save(step, args=ocp.args.StandardSave(item))

  def wait(self) -> None:
    self._manager.wait_until_finished()

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
    self._manager.wait_until_finished()
    self._manager.close()
