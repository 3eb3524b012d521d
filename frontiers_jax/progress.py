"""Progress of a long computation on the console: what it is doing, how much
is done, and the time left, on stderr so that it never mixes with what a
command prints for programs to read.

  progress = Progress('evaluate', total=60_000, unit='attacked images')
  progress.update(10_000, 'eps 0.3, pgd')
  # [evaluate] eps 0.3, pgd: 10,000/60,000 attacked images (16.7%)  ETA 0:04:10

A line is printed at most every `every_s` seconds, and always for the last
unit of work; the ETA assumes the remaining work goes at the mean rate so far.
"""

import datetime
import sys
import time
from typing import IO


class Progress:
  """Throttled progress lines for `total` units of work."""

  def __init__(self, name: str, total: int, unit: str, every_s: float = 10.0,
               stream: IO[str] | None = None, enabled: bool = True):
    self.name, self.total, self.unit = name, max(int(total), 1), unit
    self.every_s, self.enabled = every_s, enabled
    self.stream = stream
    self.start = time.monotonic()
    self.last_print = None

  def line(self, done: int, what: str = '', now: float | None = None) -> str:
    elapsed = (time.monotonic() if now is None else now) - self.start
    parts = [f'[{self.name}] ' + (f'{what}: ' if what else '')
             + f'{done:,}/{self.total:,} {self.unit} ({done / self.total:.1%})']
    if 0 < done < self.total:
      eta = elapsed / done * (self.total - done)
      parts.append('ETA ' + str(datetime.timedelta(seconds=round(eta))))
    elif done >= self.total:
      parts.append('in ' + str(datetime.timedelta(seconds=round(elapsed))))
    return '  '.join(parts)

  def update(self, done: int, what: str = '') -> None:
    """Reports `done` units finished (a line if due)."""
    if not self.enabled:
      return
    now = time.monotonic()
    due = self.last_print is None or now - self.last_print >= self.every_s
    if due or done >= self.total:
      print(self.line(done, what, now), file=self.stream or sys.stderr, flush=True)
      self.last_print = now
