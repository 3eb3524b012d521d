"""What a run writes: metrics.jsonl, TensorBoard events, the console line.

`metrics.jsonl` holds one JSON object per logged step, `{"step": s, "train/loss":
..., "eval/accuracy": ...}`, and nothing that depends on timing, so that a
resumed run reproduces it exactly. Speeds go to TensorBoard and the console.
TensorBoard also gets the config (hyperparameters and JSON text) and, when
training ends, the figures as images and the text files beside them (the
language model's samples) as text. Only process 0 writes. A workdir may be a
bucket (gs://...): files go through `etils.epath` (with gcsfs), as Orbax's do.
"""

import datetime
import json
import math
import os
import sys
from typing import Any

import jax
import numpy as np
from etils import epath

from frontiers_jax import config as config_lib


def is_remote(path) -> bool:
  """A URL such as gs://bucket/run rather than a local path."""
  return '://' in os.fspath(path)


class MetricsLog:
  """Appends per-step metric records; rewinds to a checkpoint on resume.

  `resume_step`: the checkpoint step a resumed run starts from. Records after
  it are dropped, and TensorBoard is told to drop its events after it too (a
  purge step), since the resumed run writes them again.
  """

  def __init__(self, workdir: str, resume_step: int | None = None):
    self.path = epath.Path(workdir) / 'metrics.jsonl'
    self.tensorboard_dir = os.path.join(workdir, 'tensorboard')
    self.writes = jax.process_index() == 0
    self._tensorboard = None
    if self.writes:
      # Imported here: tensorboardX pulls in protobuf, needed by writers only.
      from tensorboardX import SummaryWriter
      purge = {} if resume_step is None else {'purge_step': resume_step + 1}
      self._tensorboard = SummaryWriter(self.tensorboard_dir, **purge)
    if resume_step is not None:
      self.rewind(resume_step)

  def write_config(self, config) -> None:
    """The config as hyperparameters (TensorBoard's HParams tab, one dotted
    key per leaf) and as JSON text, so runs can be compared by what they ran."""
    if not self.writes:
      return
    from tensorboardX.summary import hparams
    for summary in hparams(flat_hparams(config.to_dict()), {}):
      self._tensorboard.file_writer.add_summary(summary)
    _add_text(self._tensorboard, 'config', _code_block(config_lib.to_json(config), 'json'), 0)
    self._tensorboard.flush()

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

  def write_figures(self, step: int, paths: list[str], fig_dir: str) -> None:
    """Each PNG of `paths` as an image and each .txt file of `fig_dir` as
    text, tagged `figures/<file stem>`, at `step`.

    Written after training, when the run's writer is closed: through a writer
    of their own, in a file of their own (event files are named by the second
    they were opened in, and a second writer of the same name would truncate
    the first).
    """
    if not self.writes:
      return
    from tensorboardX import SummaryWriter
    texts = sorted(epath.Path(fig_dir).glob('*.txt')) if epath.Path(fig_dir).is_dir() else []
    with SummaryWriter(self.tensorboard_dir, filename_suffix='.figures') as writer:
      for path in paths:
        if path.endswith('.png'):
          writer.add_image(f'figures/{_stem(path)}', _read_png(path), step,
                           dataformats='HWC')
      for path in texts:
        _add_text(writer, f'figures/{path.stem}', _code_block(path.read_text()), step)


def flat_hparams(values: dict, prefix: str = '') -> dict[str, bool | int | float | str]:
  """A nested config dict as `{'optim.learning_rate': 0.001, ...}`: the
  scalar types TensorBoard's HParams plugin takes; others (tuples) as text."""
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(flat_hparams(value, f'{prefix}{key}.'))
    elif isinstance(value, (bool, int, float, str)):
      flat[prefix + key] = value
    else:
      flat[prefix + key] = str(value)
  return flat


def _code_block(text: str, language: str = '') -> str:
  """`text` verbatim in TensorBoard's text tab, which renders markdown."""
  fence = '```'
  while fence in text:
    fence += '`'
  return f'{fence}{language}\n{text.rstrip()}\n{fence}'


def _add_text(writer, tag: str, text: str, step: int) -> None:
  """`writer.add_text`, under `tag` itself rather than `tag/text_summary`."""
  from tensorboardX.summary import text as text_summary
  summary = text_summary(tag, text)
  summary.value[0].tag = tag
  writer.file_writer.add_summary(summary, step)


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _read_png(path: str) -> np.ndarray:
  """[H, W, 3] floats in [0, 1]: an alpha channel is dropped (matplotlib's
  figures are opaque) and gray is repeated, as TensorBoard's images take RGB."""
  from matplotlib import image
  with epath.Path(path).open('rb') as f:
    pixels = image.imread(f, format='png')
  if pixels.ndim == 2:  # grayscale
    pixels = np.stack([pixels] * 3, axis=-1)
  return pixels[..., :3]


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
  """A progress line, from process 0, on stderr: stdout keeps what a command
  gives as its result (the final line, samples, tables)."""
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)
