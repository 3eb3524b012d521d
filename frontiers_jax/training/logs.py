"""What a run writes: metrics.jsonl, TensorBoard events, the console line.

`metrics.jsonl` holds one JSON object per logged step, `{"step": s, "train/loss":
..., "eval/accuracy": ...}`, and nothing that depends on timing, so that a
resumed run reproduces it exactly. Speeds go to TensorBoard and the console.
Only process 0 writes.
"""

import datetime
import json
import math
import os
import sys
from typing import Any

import jax


class MetricsLog:
  """Appends per-step metric records; rewinds to a checkpoint on resume."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.writes = jax.process_index() == 0
    self._tensorboard = None
    if self.writes:
      # Imported here: tensorboardX pulls in protobuf, needed by writers only.
      from tensorboardX import SummaryWriter
      self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def rewind(self, step: int) -> None:
    """Drops records after `step`: they are written again by the resumed run."""
    if not self.writes or not os.path.exists(self.path):
      return
    kept = [r for r in self.history() if r['step'] <= step]
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      for record in kept:
        f.write(json.dumps(record) + '\n')
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict[str, float],
            speeds: dict[str, float] | None = None) -> None:
    if not self.writes:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    for key, value in {**metrics, **(speeds or {})}.items():
      self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def history(self) -> list[dict[str, Any]]:
    return read_history(os.path.dirname(self.path))

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def read_history(workdir: str) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl`, oldest first."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def progress_line(name: str, step: int, num_steps: int, metrics: dict[str, float],
                  speeds: dict[str, float], eta_s: float | None) -> str:
  """`[name] step 500/5000  train/loss 2.3011  ...  1,234 ex/s  ETA 0:03:12`,
  with `79,000 tok/s  MFU 31.2%` after ex/s when `speeds` has them."""
  width = len(str(num_steps))
  parts = [f'[{name}] step {step:>{width}}/{num_steps}']
  parts += [f'{k} {_short(v)}' for k, v in metrics.items()]
  if 'perf/examples_per_s' in speeds:
    parts.append(f'{speeds["perf/examples_per_s"]:,.0f} ex/s')
  if 'perf/tokens_per_s' in speeds:
    parts.append(f'{speeds["perf/tokens_per_s"]:,.0f} tok/s')
  if 'perf/mfu' in speeds:
    parts.append(f'MFU {speeds["perf/mfu"]:.1%}')
  if eta_s is not None:
    parts.append('ETA ' + str(datetime.timedelta(seconds=round(eta_s))))
  return '  '.join(parts)


def _short(value: float) -> str:
  if value != 0 and math.isfinite(value) and abs(value) < 1e-3:
    return f'{value:.3e}'
  return f'{value:.4f}'


def console(line: str) -> None:
  if jax.process_index() == 0:
    print(line, file=sys.stdout, flush=True)
