"""The data sets by name: where their files are looked for and how they load.

Lookup order for every data set but `digits` (which ships with scikit-learn):

1. the original published files under the data dir (`--config.data.dir`,
   else the env var FRONTIERS_DATA_DIR);
2. a TFDS copy that is *already prepared* in TFDS' own data dir (env var
   TFDS_DATA_DIR, else ~/tensorflow_datasets), read with `tfds.data_source`;
3. otherwise a `UsageError` that says where we looked and how to get the files.

Nothing is ever downloaded and nothing is written to disk. Parsed arrays are
cached in-process; callers get them read-only (numpy raises on in-place
writes), in fresh dicts, so no caller can change what another one sees.
"""

import functools
import importlib.util
import logging
import os
from typing import Any

import numpy as np

from frontiers_jax.data import files
from frontiers_jax.errors import UsageError

IMAGE_DATASETS = ('digits', 'mnist', 'fashion_mnist', 'cifar10')
TEXT_DATASETS = ('tiny_shakespeare',)
DATASETS = IMAGE_DATASETS + TEXT_DATASETS

MNIST_COUNTS = {'train': 60000, 'test': 10000}
MNIST_FILES = {  # split -> (images, labels), as published
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
CIFAR_FILES = {
    'train': tuple(f'data_batch_{i}.bin' for i in range(1, 6)),
    'test': ('test_batch.bin',),
}
# Where each data set's files may sit, relative to the data dir (first found wins).
_FOLDERS = {
    'mnist': ('mnist',),
    'fashion_mnist': ('fashion_mnist',),
    'cifar10': (os.path.join('cifar10', 'cifar-10-batches-bin'), 'cifar10'),
    # karpathy/char-rnn calls the folder `tinyshakespeare`.
    'tiny_shakespeare': ('tiny_shakespeare', 'tinyshakespeare'),
}
_HOW_TO_GET = {
    'mnist': 'copy the four original idx .gz files to {dir}/mnist/',
    'fashion_mnist': 'copy the four original idx .gz files to {dir}/fashion_mnist/',
    'cifar10': ('extract the CIFAR-10 binary version (cifar-10-binary.tar.gz) '
                'into {dir}/cifar10/'),
    'tiny_shakespeare': ("copy char-rnn's tinyshakespeare input.txt to "
                         '{dir}/tiny_shakespeare/'),
}
TEXT_TRAIN_FRACTION = 0.9
DIGITS_TRAIN = 1437  # of 1797; the last 360 are the test split


# [height, width, channels] of each image data set, known without reading it.
IMAGE_SHAPES = {'digits': (8, 8, 1), 'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1),
                'cifar10': (32, 32, 3)}


def resolve_data_dir(data_dir: str | None) -> str | None:
  """The config value if non-empty, else $FRONTIERS_DATA_DIR if set, else None."""
  data_dir = data_dir or os.environ.get('FRONTIERS_DATA_DIR') or None
  return os.path.expanduser(os.fspath(data_dir)) if data_dir else None


def load(name: str, data_dir: str | None = None) -> dict[str, Any]:
  """Loads a whole data set into host memory.

  Args:
    name: one of `DATASETS`.
    data_dir: the folder holding `<name>/...` files; see `resolve_data_dir`.

  Returns:
    For image data sets, `{'train': {'image': uint8 [N, H, W, C],
    'label': int32 [N]}, 'test': {...}}` (C = 1 for grey, 3 for cifar10), as
    read-only C-contiguous numpy arrays. For tiny_shakespeare,
    `{'train': str, 'validation': str}`.

  Raises:
    UsageError: unknown name, files not found, or damaged files.
  """
  _check_name(name)
  if name == 'digits':
    return _fresh(_read_digits())
  source, location = _locate(name, resolve_data_dir(data_dir))
  return _fresh(_read(name, source, location))


def check_available(name: str, data_dir: str | None = None) -> None:
  """Raises the UsageError `load` would for an unknown name or missing files.

  Cheap: looks for the files (or a prepared TFDS copy) but reads no payload.
  """
  _check_name(name)
  if name != 'digits':
    _locate(name, resolve_data_dir(data_dir))


def _check_name(name: str) -> None:
  if name not in DATASETS:
    raise UsageError('config.data.name', f'unknown data set {name!r}',
                     f'use one of {", ".join(DATASETS)}')


def _fresh(splits: dict[str, Any]) -> dict[str, Any]:
  """New dicts over the cached (read-only) arrays, for callers to mutate."""
  return {k: dict(v) if isinstance(v, dict) else v for k, v in splits.items()}


def _read_only(splits: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
  for split in splits.values():
    for array in split.values():
      array.flags.writeable = False
  return splits


# Locating the files.


def _file_names(name: str) -> list[str]:
  if name in ('mnist', 'fashion_mnist'):
    return [f for pair in MNIST_FILES.values() for f in pair]
  if name == 'cifar10':
    return [f for batch in CIFAR_FILES.values() for f in batch]
  return ['input.txt']


def _find_folder(name: str, data_dir: str) -> tuple[str | None, list[str]]:
  """The first folder holding all of `name`'s files, or the files missed."""
  missed = []
  for folder in _FOLDERS[name]:
    folder = os.path.join(data_dir, folder)
    missing = [f for f in _file_names(name)
               if not os.path.isfile(os.path.join(folder, f))]
    if not missing:
      return folder, []
    missed.append(os.path.join(folder, missing[0]))
  return None, missed


def _locate(name: str, data_dir: str | None) -> tuple[str, str]:
  """Returns ('files', folder) or ('tfds', tfds_data_dir), else raises."""
  if data_dir:
    folder, missed = _find_folder(name, data_dir)
    if folder:
      return 'files', folder
    looked = 'looked for ' + ' and '.join(missed)
    if not os.path.isdir(data_dir):
      looked = f'{data_dir} does not exist'
  else:
    looked = 'no data dir set'
  tfds_dir = _tfds_data_dir()
  if _tfds_sources(name, tfds_dir) is not None:
    return 'tfds', tfds_dir
  how = _HOW_TO_GET[name].format(dir=data_dir or '<data_dir>')
  if importlib.util.find_spec('tensorflow_datasets') is None:
    raise UsageError(
        'config.data.dir', f'{name} not found ({looked}; tensorflow-datasets is not installed)',
        f'{how}, set --config.data.dir or FRONTIERS_DATA_DIR, or pip install '
        f'"frontiers_jax[tfds]" to read a prepared TFDS copy')
  raise UsageError(
      'config.data.dir',
      f'{name} not found ({looked}; no prepared TFDS copy in {tfds_dir})',
      f'{how}, set --config.data.dir or FRONTIERS_DATA_DIR, or on a connected '
      f'machine run `tfds build {name} --file_format=array_record` and copy '
      f'the result to {tfds_dir}')


# Reading, cached in-process. Keys are (name, source, location), all strings.


@functools.lru_cache(maxsize=8)
def _read(name: str, source: str, location: str) -> dict[str, Any]:
  if name == 'tiny_shakespeare':
    if source == 'tfds':
      return _read_tfds_text(location)
    return split_text(files.read_text(os.path.join(location, 'input.txt')))
  if source == 'tfds':
    return _read_only(_read_tfds_images(name, location))
  if name == 'cifar10':
    return _read_only(_read_cifar(location))
  return _read_only(_read_mnist(location))


@functools.lru_cache(maxsize=1)
def _read_digits() -> dict[str, Any]:
  # Imported here: scikit-learn is slow to import and only digits needs it.
  import sklearn.datasets  # pylint: disable=g-import-not-at-top
  digits = sklearn.datasets.load_digits()
  # Pixel values are 0..16; scale to the 0..255 of the other image data sets.
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  # The samples cycle through the classes 0..9 in order (with a few gaps), so
  # this tail split is balanced: 33 to 37 test examples per class.
  return _read_only({
      'train': {'image': images[:DIGITS_TRAIN], 'label': labels[:DIGITS_TRAIN]},
      'test': {'image': images[DIGITS_TRAIN:], 'label': labels[DIGITS_TRAIN:]},
  })


def _read_mnist(folder: str) -> dict[str, Any]:
  splits = {}
  for split, (images_file, labels_file) in MNIST_FILES.items():
    count = MNIST_COUNTS[split]
    images = files.read_idx_images(os.path.join(folder, images_file), count)
    labels = files.read_idx_labels(os.path.join(folder, labels_file), count)
    splits[split] = {'image': images, 'label': labels}
  return splits


def _read_cifar(folder: str) -> dict[str, Any]:
  splits = {}
  for split, batch_files in CIFAR_FILES.items():
    batches = [files.read_cifar_batch(os.path.join(folder, f))
               for f in batch_files]
    splits[split] = {'image': np.concatenate([b[0] for b in batches]),
                     'label': np.concatenate([b[1] for b in batches])}
  return splits


def split_text(text: str) -> dict[str, str]:
  """First 90 % of the characters for training, the last 10 % for validation."""
  cut = int(len(text) * TEXT_TRAIN_FRACTION)
  return {'train': text[:cut], 'validation': text[cut:]}


# The TFDS fallback. tensorflow_datasets is imported only here: it is slow to
# import and not needed when the files are present.

# The splits we read, per data set. TFDS cuts tiny_shakespeare into the first
# 90 % (train), then two halves of the rest (validation, test); we join those
# two, so that both sources give the same 90/10 split of the same text.
_TFDS_SPLITS = {
    'mnist': ('train', 'test'),
    'fashion_mnist': ('train', 'test'),
    'cifar10': ('train', 'test'),
    'tiny_shakespeare': ('train', 'validation', 'test'),
}


def _tfds_data_dir() -> str:
  """TFDS' default data dir, read now (tfds reads it once, at import)."""
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      os.path.join('~', 'tensorflow_datasets'))


def _tfds_sources(name: str, tfds_dir: str) -> dict[str, Any] | None:
  """The `tfds.data_source`s of a prepared copy of `name`, or None.

  Never downloads: `is_prepared` only looks at local files, and
  `download=False` makes `data_source` fail rather than fetch. (TFDS 4.9 also
  has its GCS lookups switched off by default.)
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  builder = tfds.builder(name, data_dir=tfds_dir)
  # `is_prepared` logs a warning for each missing folder, which would come
  # before our one-line error; the answer is all we need.
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    if not builder.is_prepared():
      return None
  finally:
    absl_logger.setLevel(level)
  splits = _TFDS_SPLITS[name]
  try:
    sources = tfds.data_source(name, split=list(splits), data_dir=tfds_dir,
                               download=False)
  except NotImplementedError as e:
    # Prepared by `tfds.load`, as tfrecord: a format only TensorFlow reads,
    # and not one by one (`data_source` needs random access).
    file_format = getattr(builder.info.file_format, 'value', 'unknown')
    raise UsageError(
        builder.data_dir,
        f'TFDS has {name} prepared as {file_format}, which has no random access',
        f'prepare it again with `tfds build {name} --file_format=array_record`, '
        'or copy the original files to the data dir') from e
  return dict(zip(splits, sources))


def _prepared_sources(name: str, tfds_dir: str) -> dict[str, Any]:
  sources = _tfds_sources(name, tfds_dir)
  if sources is None:  # It was there when `_locate` looked.
    raise UsageError(os.path.join(tfds_dir, name),
                     'the prepared TFDS copy has gone', 'prepare it again')
  return sources


def _read_tfds_images(name: str, tfds_dir: str) -> dict[str, dict[str, Any]]:
  """Reads every record of a prepared TFDS copy, one by one."""
  splits = {}
  for split, source in _prepared_sources(name, tfds_dir).items():
    examples = [source[i] for i in range(len(source))]
    labels = np.array([ex['label'] for ex in examples], np.int32)
    files.check_labels(labels, os.path.join(tfds_dir, name))
    images = np.stack([ex['image'] for ex in examples]).astype(np.uint8)
    splits[split] = {'image': images, 'label': labels}
  return splits


def _read_tfds_text(tfds_dir: str) -> dict[str, str]:
  """Each split of TFDS' tiny_shakespeare is one example: all its text."""
  sources = _prepared_sources('tiny_shakespeare', tfds_dir)
  text = {split: _as_str(source[0]['text']) for split, source in sources.items()}
  return {'train': text['train'], 'validation': text['validation'] + text['test']}


def _as_str(text: bytes | str) -> str:
  return text.decode('utf-8') if isinstance(text, bytes) else str(text)
