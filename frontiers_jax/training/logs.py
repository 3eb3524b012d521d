"""What a run writes: metrics.jsonl, TensorBoard events, the console line.

`metrics.jsonl` holds one JSON object per logged step, `{"step": s, "train/loss":
..., "eval/accuracy": ...}`, and nothing that depends on timing, so that a
resumed run reproduces it exactly. Speeds go to TensorBoard and the console.
Only process 0 writes. A workdir may be a bucket (gs://...): files go through
`etils.epath` (with gcsfs), as Orbax's do.
"""

import datetime
import json
import math
import os
import sys
from typing import Any

import jax
from etils import epath


def is_remote(path) -> bool:
  """A URL such as gs://bucket/run rather than a local path."""
  return '://' in os.fspath(path)


class MetricsLog:
  """Appends per-step metric records; rewinds to a checkpoint on resume."""

  def __init__(self, workdir: str):
    self.path = epath.Path(workdir) / 'metrics.jsonl'
    self.writes = jax.process_index() == 0
    self._tensorboard = None
    if self.writes:
      # Imported here: tensorboardX pulls in protobuf, needed by writers only.
      from tensorboardX import SummaryWriter
      self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def rewind(self, step: int) -> None:
    """Drops records after `step`: they are written again by the resumed run."""
    if not self.writes or not self.path.exists():
      return
    kept = [r for r in self.history() if r['step'] <= step]
    tmp = self.path.with_name(self.path.name + '.tmp')
    tmp.write_text(''.join(json.dumps(record) + '\n' for record in kept))
    tmp.replace(self.path)

  def write(self, step: int, metrics: dict[str, float],
            speeds: dict[str, float] | None = None) -> None:
    if not self.writes:
      return
    line = json.dumps({'step': step, **metrics}) + '\n'
    if is_remote(self.path):  # A cloud object cannot be appended to: rewrite it.
      self.path.write_text((self.path.read_text() if self.path.exists() else '') + line)
    else:
      with open(self.path, 'a') as f:
        f.write(line)
    for key, value in {**metrics, **(speeds or {})}.items():
      self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def history(self) -> list[dict[str, Any]]:
    return read_history(self.path.parent)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def read_history(workdir) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl`, oldest first. A last line cut
  short (the run died, or the disk filled, while appending it) is left out:
  the resumed run writes that record again."""
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = [json.loads(line) for line in lines[:-1]]
  try:
    records += [json.loads(line) for line in lines[-1:]]
  except json.JSONDecodeError:
    pass
  return records


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
