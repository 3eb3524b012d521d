"""Progress lines: what is being done, how much, and the time left."""

import io

from frontiers_jax.progress import Progress


def test_lines_are_throttled_and_the_last_always_printed(monkeypatch):
  clock = iter([0.0, 1.0, 2.0, 12.0, 20.0])
  monkeypatch.setattr('time.monotonic', lambda: next(clock))
  out = io.StringIO()
  progress = Progress('evaluate', total=400, unit='images', every_s=10, stream=out)  # t=0
  progress.update(100, 'eps 0.1, pgd')   # t=1: the first line
  progress.update(200, 'eps 0.1, pgd')   # t=2: too soon
  progress.update(300, 'eps 0.3, pgd')   # t=12: due
  progress.update(400, 'eps 0.3, pgd')   # t=20: the last, never throttled
  assert out.getvalue().splitlines() == [
      '[evaluate] eps 0.1, pgd: 100/400 images (25.0%)  ETA 0:00:03',
      '[evaluate] eps 0.3, pgd: 300/400 images (75.0%)  ETA 0:00:04',
      '[evaluate] eps 0.3, pgd: 400/400 images (100.0%)  in 0:00:20']


def test_disabled_progress_prints_nothing():
  out = io.StringIO()
  progress = Progress('sample', total=2, unit='images', stream=out, enabled=False)
  progress.update(2)
  assert out.getvalue() == ''
