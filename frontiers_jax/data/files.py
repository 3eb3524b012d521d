"""Readers for data sets in their original published file formats.

Each reader validates what it reads and turns any damage (a truncated gzip, a
wrong magic number, a short payload, a wrong record count, out-of-range
labels) into a one-line `UsageError` naming the file, so that a bad copy is
reported before training starts rather than as a reshape error deep inside.

Arrays come back as numpy, C-contiguous: images uint8 NHWC, labels int32.
"""

import gzip
import os
import zlib

import numpy as np

from frontiers_jax.errors import UsageError

NUM_CLASSES = 10

# idx (MNIST, Fashion-MNIST): a big-endian header of uint32s, then uint8s.
IDX_IMAGES_MAGIC = 2051  # header: magic, count, rows, cols
IDX_LABELS_MAGIC = 2049  # header: magic, count

# CIFAR-10 binary version: each record is 1 label byte, then a 32x32 image as
# three row-major planes (R, G, B) of 1024 bytes each. Every file holds 10000
# records; tests monkeypatch this to write small files.
CIFAR_SIDE = 32
CIFAR_RECORD_BYTES = 1 + 3 * CIFAR_SIDE * CIFAR_SIDE  # 3073
CIFAR_RECORDS_PER_FILE = 10000


def _corrupt(path: str, problem: str, origin: str = 'the original file'):
  return UsageError(path, problem, f're-copy {origin} (it looks damaged)')


def _gunzip(path: str) -> bytes:
  """The decompressed contents of a .gz file; damage is a UsageError."""
  with open(path, 'rb') as f:
    compressed = f.read()
  try:
    return gzip.decompress(compressed)
  # A truncated file raises EOFError; a bad header BadGzipFile (an OSError);
  # flipped bytes in the stream zlib.error.
  except (EOFError, OSError, zlib.error) as e:
    raise _corrupt(path, f'is not a complete gzip file ({e})') from e


def _idx_header(path: str, data: bytes, magic: int, num_dims: int) -> list[int]:
  """Checks the magic number and returns the `num_dims` header dimensions."""
  header_bytes = 4 * (1 + num_dims)
  # The magic first: it tells a label file from an image file.
  found = int.from_bytes(data[:4], 'big') if len(data) >= 4 else None
  if found is not None and found != magic:
    raise _corrupt(path, f'has idx magic number {found}, expected {magic}')
  if len(data) < header_bytes:
    raise _corrupt(path, f'has {len(data)} bytes, too few for an idx header')
  header = np.frombuffer(data, dtype='>u4', count=1 + num_dims)
  dims = [int(d) for d in header[1:]]
  payload = len(data) - header_bytes
  if payload != np.prod(dims):
    shape = 'x'.join(map(str, dims))
    raise _corrupt(path, f'has {payload} payload bytes but its header says '
                   f'{shape} = {np.prod(dims)}')
  return dims


def check_labels(labels: np.ndarray, where: str) -> None:
  """Raises a UsageError naming `where` unless all labels are in 0..9."""
  bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
  if bad.size:
    raise _corrupt(where, f'has label {labels[bad[0]]} at index {bad[0]}, '
                   f'outside 0..{NUM_CLASSES - 1}')


def read_idx_images(path: str, count: int, side: int = 28) -> np.ndarray:
  """Reads a gzipped idx3 image file: uint8 [count, side, side, 1]."""
  data = _gunzip(path)
  n, rows, cols = _idx_header(path, data, IDX_IMAGES_MAGIC, num_dims=3)
  if (n, rows, cols) != (count, side, side):
    raise _corrupt(path, f'holds {n} images of {rows}x{cols}, '
                   f'expected {count} of {side}x{side}')
  # A view into the immutable bytes: read-only and C-contiguous, no copy.
  return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols, 1)


def read_idx_labels(path: str, count: int) -> np.ndarray:
  """Reads a gzipped idx1 label file: int32 [count], each in 0..9."""
  data = _gunzip(path)
  (n,) = _idx_header(path, data, IDX_LABELS_MAGIC, num_dims=1)
  if n != count:
    raise _corrupt(path, f'holds {n} labels, expected {count}')
  labels = np.frombuffer(data, np.uint8, offset=8).astype(np.int32)
  check_labels(labels, path)
  return labels


def read_cifar_batch(path: str,
                     records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads one CIFAR-10 binary batch: (uint8 [N, 32, 32, 3], int32 [N]).

  Args:
    path: a `data_batch_<i>.bin` or `test_batch.bin`.
    records: the expected number of records; `CIFAR_RECORDS_PER_FILE` if None.
  """
  records = CIFAR_RECORDS_PER_FILE if records is None else records
  size = os.path.getsize(path)
  if size != records * CIFAR_RECORD_BYTES:
    raise _corrupt(path, f'has {size} bytes, expected {records} records x '
                   f'{CIFAR_RECORD_BYTES} = {records * CIFAR_RECORD_BYTES}',
                   origin='it from the CIFAR-10 binary version')
  rows = np.fromfile(path, np.uint8).reshape(records, CIFAR_RECORD_BYTES)
  labels = rows[:, 0].astype(np.int32)
  check_labels(labels, path)
  planes = rows[:, 1:].reshape(records, 3, CIFAR_SIDE, CIFAR_SIDE)  # NCHW
  images = np.ascontiguousarray(planes.transpose(0, 2, 3, 1))  # NHWC
  return images, labels


def read_text(path: str) -> str:
  """Reads a non-empty UTF-8 text file."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise _corrupt(path, f'is not UTF-8 text (bad byte at offset {e.start})') from e
  if not text:
    raise _corrupt(path, 'is empty')
  return text
