"""Batches from in-memory arrays, deterministic in (seed, step).

Training batch `step` is a pure function of the seed and the step: epoch
`e = step // steps_per_epoch` visits the examples in the order of a
permutation drawn from `(seed, e)`, dropping the remainder. Nothing about the
data order needs saving: a resumed run continues with the same batches. Each
process gathers only its rows of the global batch.
"""

import numpy as np

from frontiers_jax.errors import check

Arrays = dict[str, np.ndarray]


def num_examples(arrays: Arrays) -> int:
  sizes = {len(v) for v in arrays.values()}
  assert len(sizes) == 1, f'arrays of different lengths: {sizes}'
  return sizes.pop()


class TrainBatches:
  """`batches(step)` -> this process's rows of global batch `step`."""

  def __init__(self, arrays: Arrays, global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self.arrays = arrays
    self.size = num_examples(arrays)
    check(global_batch <= self.size, 'config.batch_size',
          f'{global_batch} exceeds the {self.size} training examples',
          f'give at most {self.size}')
    self.global_batch = global_batch
    self.steps_per_epoch = self.size // global_batch
    self.seed = seed
    per_process = global_batch // process_count
    self._rows = slice(process_index * per_process, (process_index + 1) * per_process)
    self._epoch, self._order = None, None

  def order(self, epoch: int) -> np.ndarray:
    """The permutation of epoch `epoch` (the latest one is kept)."""
    if self._epoch != epoch:
      self._order = np.random.default_rng((self.seed, epoch)).permutation(self.size)
      self._epoch = epoch
    return self._order

  def indices(self, step: int) -> np.ndarray:
    """Indices of the whole global batch `step`, in batch order."""
    epoch, position = divmod(step, self.steps_per_epoch)
    start = position * self.global_batch
    return self.order(epoch)[start:start + self.global_batch]

  def __call__(self, step: int) -> Arrays:
    rows = self.indices(step)[self._rows]
    return {k: v[rows] for k, v in self.arrays.items()}


def eval_batches(arrays: Arrays, global_batch: int, process_index: int = 0,
                 process_count: int = 1):
  """Yields this process's rows of each global batch, in order, with a `mask`.

  The last batch is padded (by repeating row 0) to the full size so that one
  compiled eval step serves every batch; `mask` is 1 for real rows, 0 for
  padding, and eval steps weight their sums by it.
  """
  size = num_examples(arrays)
  per_process = global_batch // process_count
  for start in range(0, size, global_batch):
    index = np.arange(start, start + global_batch)
    mask = (index < size).astype(np.float32)
    index = np.where(index < size, index, 0)
    rows = slice(process_index * per_process, (process_index + 1) * per_process)
    batch = {k: v[index[rows]] for k, v in arrays.items()}
    batch['mask'] = mask[rows]
    yield batch


class RandomWindows:
  """`batches(step)` -> this process's rows of `{'tokens': [B, length]}`:
  windows of one long token stream starting at positions drawn from
  (seed, step), so batch `step` is a pure function of the two (the
  language-model counterpart of `TrainBatches`; nanoGPT draws the same way)."""

  def __init__(self, tokens: np.ndarray, length: int, global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    check(len(tokens) > length, 'config.model.context',
          f'windows of {length} tokens do not fit in the {len(tokens)} training tokens',
          f'give a context below {len(tokens) - 1}')
    self.tokens, self.length = tokens, length
    self.global_batch, self.seed = global_batch, seed
    per_process = global_batch // process_count
    self._rows = slice(process_index * per_process, (process_index + 1) * per_process)

  def starts(self, step: int) -> np.ndarray:
    """Start positions of the whole global batch `step`."""
    rng = np.random.default_rng((self.seed, step))
    return rng.integers(0, len(self.tokens) - self.length + 1, self.global_batch)

  def __call__(self, step: int) -> Arrays:
    starts = self.starts(step)[self._rows]
    return {'tokens': self.tokens[starts[:, None] + np.arange(self.length)]}


def covering_windows(tokens: np.ndarray, context: int) -> Arrays:
  """Cuts a token stream into windows that predict every token but the first
  exactly once: `tokens` [N, context + 1] (inputs are [:, :-1], targets
  [:, 1:]) and `weights` [N, context], 0 where a target was already counted.

  Windows overlap by one token (the last target of one is the first input of
  the next); the last window is aligned to the end of the stream and weights
  only the targets that no earlier window covered. Averaging a loss over the
  weighted targets gives the loss of the whole split.
  """
  n = len(tokens)
  check(n > context, 'config.model.context',
        f'windows of {context + 1} tokens do not fit in the {n} evaluation tokens',
        f'give a context below {n - 1}')
  starts = list(range(0, n - context, context))
  covered_to = starts[-1] + context  # last target index covered so far
  weights = np.ones((len(starts), context), np.float32)
  if covered_to < n - 1:  # an end-aligned window for the rest
    start = n - 1 - context
    starts.append(start)
    tail = np.zeros((1, context), np.float32)
    tail[0, covered_to - start:] = 1  # targets start + 1 + j > covered_to
    weights = np.concatenate([weights, tail])
  starts = np.asarray(starts)
  return {'tokens': tokens[starts[:, None] + np.arange(context + 1)], 'weights': weights}
