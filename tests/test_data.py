"""Tests of frontiers_jax.data: real files, synthetic files, errors, TFDS.

Real-file tests read $FRONTIERS_DATA_DIR (e.g. the shared folder of the
original MNIST / Fashion-MNIST / Tiny Shakespeare files) and skip when it is
unset. Everything else builds small files in tmp_path. No test may touch the
network: sockets are disabled and TFDS' data dir is an empty tmp folder.
"""

import gzip
import io
import os
import socket
from unittest import mock

import numpy as np
import pytest

from frontiers_jax import data
from frontiers_jax.data import files
from frontiers_jax.data import registry
from frontiers_jax.errors import UsageError


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
  """No network, and a TFDS data dir with nothing prepared in it."""
  def no_network(*args, **kwargs):
    raise OSError(f'a test tried to reach the network: {args}')
  monkeypatch.setattr(socket.socket, 'connect', no_network)
  monkeypatch.setattr(socket, 'getaddrinfo', no_network)
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))


@pytest.fixture
def real_dir():
  data_dir = os.environ.get('FRONTIERS_DATA_DIR')
  if not data_dir:
    pytest.skip('FRONTIERS_DATA_DIR is not set: point it at a folder with the '
                'original mnist/, fashion_mnist/ and tinyshakespeare/ files')
  return data_dir


def usage_error(fn, *args) -> UsageError:
  with pytest.raises(UsageError) as info:
    fn(*args)
  assert '\n' not in str(info.value)  # Launchers print exactly one line.
  return info.value


# Real files.


@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist'])
def test_real_mnist_like(real_dir, name):
  ds = data.load(name, real_dir)
  for split, count in [('train', 60000), ('test', 10000)]:
    images, labels = ds[split]['image'], ds[split]['label']
    assert images.shape == (count, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (count,) and labels.dtype == np.int32
    assert images.flags.c_contiguous
    assert images.min() == 0 and images.max() == 255
    per_class = np.bincount(labels, minlength=10)
    assert per_class.size == 10 and per_class.min() > 0.08 * count, per_class
  if name == 'mnist':  # The well-known first digits: a 5 and a 7.
    assert ds['train']['label'][0] == 5 and ds['test']['label'][0] == 7
  else:  # Fashion-MNIST is exactly balanced; its first item is an ankle boot.
    assert set(np.bincount(ds['train']['label'])) == {6000}
    assert ds['train']['label'][0] == 9
  data.check_available(name, real_dir)


def test_real_tiny_shakespeare(real_dir):
  ds = data.load('tiny_shakespeare', real_dir)
  text = ds['train'] + ds['validation']
  assert text.startswith('First Citizen:')
  assert len(text) == 1115394 and len(set(text)) == 65
  assert len(ds['train']) == 1115394 * 9 // 10


def test_real_data_dir_from_env(real_dir, monkeypatch):
  monkeypatch.setenv('FRONTIERS_DATA_DIR', real_dir)
  assert data.resolve_data_dir(None) == real_dir
  assert data.resolve_data_dir('') == real_dir
  assert data.load('mnist')['train']['label'][0] == 5


def test_cached_arrays_are_read_only_and_dicts_fresh(real_dir):
  first = data.load('mnist', real_dir)
  with pytest.raises(ValueError, match='read-only'):
    first['train']['image'][0, 0, 0, 0] = 1
  first['train']['image'] = None
  again = data.load('mnist', real_dir)
  assert again['train']['image'].shape == (60000, 28, 28, 1)


# digits (ships with scikit-learn).


def test_digits(monkeypatch):
  monkeypatch.delenv('FRONTIERS_DATA_DIR', raising=False)
  data.check_available('digits')
  ds = data.load('digits')
  assert ds['train']['image'].shape == (1437, 8, 8, 1)
  assert ds['test']['image'].shape == (360, 8, 8, 1)
  assert ds['train']['image'].dtype == np.uint8
  assert ds['train']['label'].dtype == np.int32
  assert ds['train']['image'].max() == 255  # 16 * 255 / 16
  assert 33 <= np.bincount(ds['test']['label']).min()  # A balanced tail.


def test_resolve_data_dir(monkeypatch):
  monkeypatch.delenv('FRONTIERS_DATA_DIR', raising=False)
  assert data.resolve_data_dir(None) is None
  assert data.resolve_data_dir('') is None
  monkeypatch.setenv('FRONTIERS_DATA_DIR', '/from/env')
  assert data.resolve_data_dir('/from/config') == '/from/config'
  assert data.resolve_data_dir('') == '/from/env'


# Errors for names and missing files.


def test_unknown_name():
  for fn in (data.load, data.check_available):
    error = usage_error(fn, 'imagenet')
    assert error.where == 'config.data.name'
    assert "'imagenet'" in error.problem
    assert all(name in error.allowed for name in data.DATASETS)


# The first file looked for, per data set, relative to the data dir.
_FIRST_FILE = {
    'mnist': 'mnist/train-images-idx3-ubyte.gz',
    'fashion_mnist': 'fashion_mnist/train-images-idx3-ubyte.gz',
    'cifar10': 'cifar10/cifar-10-batches-bin/data_batch_1.bin',
    'tiny_shakespeare': 'tiny_shakespeare/input.txt',
}


@pytest.mark.parametrize('name', list(_FIRST_FILE))
def test_missing_files(tmp_path, monkeypatch, name):
  monkeypatch.delenv('FRONTIERS_DATA_DIR', raising=False)
  tfds_dir = str(tmp_path / 'tfds')

  error = usage_error(data.load, name, str(tmp_path))
  assert error.where == 'config.data.dir'
  assert f'{name} not found' in error.problem
  assert str(tmp_path / _FIRST_FILE[name]) in error.problem
  assert f'no prepared TFDS copy in {tfds_dir}' in error.problem
  assert 'FRONTIERS_DATA_DIR' in error.allowed
  assert str(usage_error(data.check_available, name, str(tmp_path))) == str(error)

  error = usage_error(data.load, name, str(tmp_path / 'nope'))
  assert f'{tmp_path / "nope"} does not exist' in error.problem

  error = usage_error(data.check_available, name, None)
  assert 'no data dir set' in error.problem


# idx files (MNIST format), synthetic.


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
  header = np.array([magic, *dims], '>u4').tobytes()
  return gzip.compress(header + payload, compresslevel=1)


def write(path, content: bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(content)
  return str(path)


def write_mnist(folder, counts, seed=0):
  """Writes the four idx files with random content; returns the arrays."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, (images_file, labels_file) in registry.MNIST_FILES.items():
    images = rng.integers(0, 256, (counts[split], 28, 28), np.uint8)
    labels = rng.integers(0, 10, counts[split], np.uint8)
    write(folder / images_file, idx_bytes(2051, images.shape, images.tobytes()))
    write(folder / labels_file, idx_bytes(2049, labels.shape, labels.tobytes()))
    arrays[split] = images[..., None], labels
  return arrays


def test_mnist_from_synthetic_files(tmp_path, monkeypatch):
  counts = {'train': 6, 'test': 3}
  monkeypatch.setattr(registry, 'MNIST_COUNTS', counts)
  expected = write_mnist(tmp_path / 'fashion_mnist', counts)
  ds = data.load('fashion_mnist', str(tmp_path))
  for split, (images, labels) in expected.items():
    np.testing.assert_array_equal(ds[split]['image'], images)
    np.testing.assert_array_equal(ds[split]['label'], labels)
    assert ds[split]['label'].dtype == np.int32


def test_truncated_gzip(tmp_path, monkeypatch):
  monkeypatch.setattr(registry, 'MNIST_COUNTS', {'train': 6, 'test': 3})
  write_mnist(tmp_path / 'mnist', registry.MNIST_COUNTS)
  path = tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz'
  write(path, path.read_bytes()[:100])
  data.check_available('mnist', str(tmp_path))  # Cheap: opens no payload.
  error = usage_error(data.load, 'mnist', str(tmp_path))
  assert error.where == str(path)
  assert 'not a complete gzip file' in error.problem
  assert 're-copy' in error.allowed


def test_not_gzip(tmp_path):
  path = write(tmp_path / 'x.gz', b'plain bytes, not gzip')
  assert 'not a complete gzip' in usage_error(files.read_idx_labels, path, 3).problem


def test_wrong_magic(tmp_path):
  labels = np.arange(3, dtype=np.uint8)
  path = write(tmp_path / 'x.gz', idx_bytes(2049, (3,), labels.tobytes()))
  error = usage_error(files.read_idx_images, path, 3)
  assert error.where == path
  assert 'magic number 2049, expected 2051' in error.problem


def test_wrong_payload_size(tmp_path):
  path = write(tmp_path / 'x.gz', idx_bytes(2051, (2, 28, 28), bytes(1000)))
  error = usage_error(files.read_idx_images, path, 2)
  assert error.where == path
  assert 'has 1000 payload bytes' in error.problem and '1568' in error.problem


def test_short_header(tmp_path):
  path = write(tmp_path / 'x.gz', gzip.compress(b'\0\0\x08\x03'))
  assert 'too few for an idx header' in usage_error(
      files.read_idx_images, path, 2).problem


def test_wrong_count(tmp_path):
  path = write(tmp_path / 'x.gz', idx_bytes(2051, (2, 28, 28), bytes(1568)))
  error = usage_error(files.read_idx_images, path, 60000)
  assert 'holds 2 images of 28x28, expected 60000 of 28x28' in error.problem
  path = write(tmp_path / 'y.gz', idx_bytes(2049, (2,), bytes(2)))
  assert 'holds 2 labels, expected 10000' in usage_error(
      files.read_idx_labels, path, 10000).problem


def test_label_out_of_range(tmp_path):
  path = write(tmp_path / 'x.gz', idx_bytes(2049, (3,), bytes([1, 10, 2])))
  error = usage_error(files.read_idx_labels, path, 3)
  assert error.where == path
  assert 'label 10 at index 1, outside 0..9' in error.problem


# CIFAR-10 binary version, synthetic.

RECORDS = 4  # Per file, in place of 10000.


def write_cifar(folder, seed=0):
  """Writes 5 train batches and a test batch; returns NHWC images, labels."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, batch_files in registry.CIFAR_FILES.items():
    n = RECORDS * len(batch_files)
    images = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
    labels = rng.integers(0, 10, n, np.uint8)
    for i, name in enumerate(batch_files):
      part = slice(i * RECORDS, (i + 1) * RECORDS)
      planes = images[part].transpose(0, 3, 1, 2).reshape(RECORDS, 3072)
      records = np.concatenate([labels[part, None], planes], axis=1)
      write(folder / name, records.tobytes())
    out[split] = images, labels
  return out


def test_cifar_record_layout(tmp_path):
  """One record by hand: label byte, then the R, G and B planes, row-major."""
  record = np.zeros(3073, np.uint8)
  record[0] = 7
  row, col = 1, 2
  for channel, value in enumerate([200, 100, 50]):
    record[1 + channel * 1024 + row * 32 + col] = value
  path = write(tmp_path / 'test_batch.bin', record.tobytes())
  images, labels = files.read_cifar_batch(path, records=1)
  assert images.shape == (1, 32, 32, 3) and images.flags.c_contiguous
  assert labels.tolist() == [7] and labels.dtype == np.int32
  assert images[0, row, col].tolist() == [200, 100, 50]
  assert images.sum() == 350  # Nothing anywhere else, e.g. not at (col, row).


@pytest.mark.parametrize('subfolder', ['cifar10/cifar-10-batches-bin', 'cifar10'])
def test_cifar_from_synthetic_files(tmp_path, monkeypatch, subfolder):
  monkeypatch.setattr(files, 'CIFAR_RECORDS_PER_FILE', RECORDS)
  expected = write_cifar(tmp_path / subfolder)
  data.check_available('cifar10', str(tmp_path))
  ds = data.load('cifar10', str(tmp_path))
  for split, (images, labels) in expected.items():
    np.testing.assert_array_equal(ds[split]['image'], images)
    np.testing.assert_array_equal(ds[split]['label'], labels)
  assert ds['train']['image'].shape == (5 * RECORDS, 32, 32, 3)


def test_cifar_wrong_size_and_labels(tmp_path, monkeypatch):
  monkeypatch.setattr(files, 'CIFAR_RECORDS_PER_FILE', RECORDS)
  folder = tmp_path / 'cifar10'
  write_cifar(folder)
  path = write(folder / 'data_batch_1.bin', bytes(3073 * RECORDS - 1))
  error = usage_error(data.load, 'cifar10', str(tmp_path))
  assert error.where == path
  assert f'has {3073 * RECORDS - 1} bytes, expected {RECORDS} records' in error.problem
  bad = np.zeros((1, 3073), np.uint8)
  bad[0, 0] = 11
  path = write(tmp_path / 'bad.bin', bad.tobytes())
  assert 'label 11' in usage_error(files.read_cifar_batch, path, 1).problem


# Text.


@pytest.mark.parametrize('folder', ['tiny_shakespeare', 'tinyshakespeare'])
def test_text_split(tmp_path, folder):
  text = 'é' + 'abcdefghij' * 11 + 'xyzxyzxyz'  # 120 characters, 1 not ASCII.
  write(tmp_path / folder / 'input.txt', text.encode('utf-8'))
  ds = data.load('tiny_shakespeare', str(tmp_path))
  assert ds['train'] == text[:108] and ds['validation'] == text[108:]


def test_text_errors(tmp_path):
  path = write(tmp_path / 'a.txt', b'ok \xff')
  assert 'not UTF-8 text (bad byte at offset 3)' in usage_error(
      files.read_text, path).problem
  path = write(tmp_path / 'b.txt', b'')
  assert usage_error(files.read_text, path).problem == 'is empty'


# The TFDS fallback: data sets prepared in TFDS' data dir, never downloaded.


@pytest.fixture
def tfds(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  def no_download(*args, **kwargs):
    raise AssertionError('a test tried to download and prepare a data set')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      no_download)
  return tfds


@pytest.fixture
def mock_prepared(tfds):
  """`tfds.testing.mock_data` with random records, passing as prepared.

  `mock_data` replaces `as_data_source` and the data dir, but not
  `is_prepared`, which we check before reading.
  """
  with tfds.testing.mock_data(num_examples=5,
                              policy=tfds.testing.MockPolicy.USE_CODE), \
       mock.patch.object(tfds.core.DatasetBuilder, 'is_prepared',
                         return_value=True):
    yield


@pytest.mark.usefixtures('mock_prepared')
@pytest.mark.parametrize('name', ['mnist', 'cifar10'])
def test_tfds_mock_images(tmp_path, name):
  data.check_available(name, str(tmp_path))  # No files there: TFDS is used.
  ds = data.load(name, str(tmp_path))
  shape = (28, 28, 1) if name == 'mnist' else (32, 32, 3)
  for split in ('train', 'test'):
    assert ds[split]['image'].shape == (5, *shape)
    assert ds[split]['image'].dtype == np.uint8
    assert ds[split]['label'].dtype == np.int32
    assert ds[split]['label'].min() >= 0 and ds[split]['label'].max() <= 9


@pytest.mark.usefixtures('mock_prepared')
def test_tfds_mock_text(tmp_path):
  ds = data.load('tiny_shakespeare', str(tmp_path))
  assert set(ds) == {'train', 'validation'}
  assert all(isinstance(text, str) and text for text in ds.values())


def prepare_tfds(tfds, tfds_dir, name, records, file_format='array_record'):
  """Writes a prepared TFDS copy by hand, laid out as `tfds build` does it.

  Args:
    tfds: the tensorflow_datasets module.
    tfds_dir: TFDS' data dir.
    name: the TFDS name.
    records: split -> list of serialized `tf.train.Example`s.
    file_format: 'array_record', or 'tfrecord' for metadata only (writing
      tfrecords needs TensorFlow; these are never read).

  Returns:
    The variant dir, e.g. <tfds_dir>/mnist/3.0.1.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=tfds_dir, file_format=file_format)
  os.makedirs(builder.data_dir)
  split_infos = []
  for split, split_records in records.items():
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=name, split=split,
        filetype_suffix=file_format,
        template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}')
    if file_format == 'array_record':
      path = template.sharded_filepath(shard_index=0, num_shards=1)
      writer = array_record_module.ArrayRecordWriter(os.fspath(path),
                                                     'group_size:1')
      for record in split_records:
        writer.write(record)
      writer.close()
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[len(split_records)],
        num_bytes=sum(map(len, split_records)), filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(builder.data_dir)
  return builder.data_dir


def example(**features) -> bytes:
  """A serialized `tf.train.Example` of bytes and int features, without TF."""
  from tensorflow_datasets.proto import tf_feature_pb2 as pb  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  def feature(value):
    if isinstance(value, bytes):
      return pb.Feature(bytes_list=pb.BytesList(value=[value]))
    return pb.Feature(int64_list=pb.Int64List(value=[value]))
  return tf_example_pb2.Example(features=pb.Features(
      feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buffer, format='PNG')
  return buffer.getvalue()


def test_tfds_prepared_images(tmp_path, tfds):
  """The real path, no mocks: is_prepared, data_source, PNG decoding."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 28, 28, 1), np.uint8)
  labels = [3, 1, 4, 1, 5]
  records = [example(image=png(x), label=y) for x, y in zip(images, labels)]
  prepare_tfds(tfds, str(tmp_path / 'tfds'), 'mnist',
               {'train': records[:3], 'test': records[3:]})
  data.check_available('mnist', str(tmp_path))
  ds = data.load('mnist', str(tmp_path))
  np.testing.assert_array_equal(ds['train']['image'], images[:3])
  np.testing.assert_array_equal(ds['test']['image'], images[3:])
  assert ds['train']['label'].tolist() == [3, 1, 4]
  assert ds['test']['label'].dtype == np.int32


def test_tfds_prepared_text(tmp_path, tfds):
  # TFDS splits the text 90/5/5 %; validation and test join into our 10 %.
  texts = {'train': 'First Citizen:\n', 'validation': 'Before we proceed',
           'test': ' any further'}
  prepare_tfds(tfds, str(tmp_path / 'tfds'), 'tiny_shakespeare',
               {k: [example(text=v.encode())] for k, v in texts.items()})
  ds = data.load('tiny_shakespeare', str(tmp_path))
  assert ds == {'train': 'First Citizen:\n',
                'validation': 'Before we proceed any further'}


def test_tfds_prepared_as_tfrecord(tmp_path, tfds):
  variant_dir = prepare_tfds(tfds, str(tmp_path / 'tfds'), 'tiny_shakespeare',
                             {'train': [b''], 'validation': [b''], 'test': [b'']},
                             file_format='tfrecord')
  error = usage_error(data.check_available, 'tiny_shakespeare', str(tmp_path))
  assert error.where == variant_dir
  assert 'prepared as tfrecord' in error.problem
  assert '--file_format=array_record' in error.allowed
