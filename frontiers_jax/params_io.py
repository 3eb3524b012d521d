"""Parameter trees in and out of files: the safetensors format, and the
train state of a checkpoint read without a template.

safetensors (huggingface.co/docs/safetensors): an 8-byte little-endian header
length, a JSON header naming each tensor's dtype, shape and byte range (and
string `__metadata__`), then the bytes, row-major and little-endian. A
parameter tree is stored flat, each array under its dotted path
(`block_0.attention.query.kernel`).
"""

import json
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np

from frontiers_jax.errors import UsageError, check

# numpy dtype name <-> safetensors dtype name.
DTYPES = {'float64': 'F64', 'float32': 'F32', 'float16': 'F16', 'bfloat16': 'BF16',
          'int64': 'I64', 'int32': 'I32', 'int16': 'I16', 'int8': 'I8', 'uint8': 'U8',
          'bool': 'BOOL'}
_NUMPY = {v: (ml_dtypes.bfloat16 if k == 'bfloat16' else np.dtype(k)) for k, v in DTYPES.items()}


def flatten(tree: Any, prefix: str = '') -> dict[str, np.ndarray]:
  """{'a.b.c': array} of a nested dict of arrays (list items by index)."""
  if isinstance(tree, dict):
    items = tree.items()
  elif isinstance(tree, (list, tuple)):
    items = enumerate(tree)
  else:
    return {prefix: np.asarray(tree)}
  flat = {}
  for key, value in items:
    flat.update(flatten(value, f'{prefix}.{key}' if prefix else str(key)))
  return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  """The nested dict of `flatten`'s output (keys stay strings)."""
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split('.')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def write_safetensors(path: str, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> str:
  """Writes `tensors` to `path` in the safetensors format; returns `path`."""
  header: dict[str, Any] = {'__metadata__': dict(metadata or {})}
  chunks, offset = [], 0
  for name in sorted(tensors):
    array = np.asarray(tensors[name])
    array = array if array.flags.c_contiguous else array.copy(order='C')  # keeps 0-d arrays
    check(array.dtype.name in DTYPES, 'export', f'{name} has dtype {array.dtype}',
          f'safetensors holds {", ".join(DTYPES)}')
    data = array.astype(array.dtype.newbyteorder('<'), copy=False).tobytes()
    header[name] = {'dtype': DTYPES[array.dtype.name], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  encoded = json.dumps(header, separators=(',', ':')).encode()
  encoded += b' ' * (-len(encoded) % 8)  # the byte buffer starts 8-aligned
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(encoded)))
    f.write(encoded)
    for data in chunks:
      f.write(data)
  return path


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, metadata) of a safetensors file; a `UsageError` when it is not one."""
  bad = lambda what: UsageError(path, f'is not a safetensors file ({what})',
                                'give a file written by frontiers export')
  with open(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 8:
    raise bad('shorter than 8 bytes')
  size = struct.unpack('<Q', raw[:8])[0]
  if size > len(raw) - 8:
    raise bad(f'a header of {size} bytes in a file of {len(raw)}')
  try:
    header = json.loads(raw[8:8 + size])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise bad(f'the header is not JSON: {e}') from None
  if not isinstance(header, dict):
    raise bad('the header is not a JSON object')
  metadata = header.pop('__metadata__', {}) or {}
  body = memoryview(raw)[8 + size:]
  tensors = {}
  for name, entry in header.items():
    try:
      dtype = _NUMPY[entry['dtype']]
      start, end = entry['data_offsets']
      shape = tuple(entry['shape'])
      # Little-endian, as every platform JAX runs on; the copy is writable.
      tensors[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError) as e:
      raise bad(f'tensor {name!r}: {type(e).__name__}: {e}') from None
  return tensors, metadata
