"""Trained parameters out of the project, in formats other tools read.

  frontiers export WORKDIR --format=safetensors   # -> WORKDIR/export/model.safetensors

safetensors (any workload): every parameter array under its dotted path in the
parameter tree (`block_0.attention.query.kernel`), in its own dtype, with the
run's config, workload, step and (language models) tokenizer as JSON strings
in the header's `__metadata__`. The format: an 8-byte little-endian header
length, a JSON header naming each tensor's dtype, shape and byte range, then
the bytes, row-major and little-endian (huggingface.co/docs/safetensors).
Flax kernels keep their layout ([in, out]); PyTorch's Linear holds [out, in].
"""

import json
import os
import struct
from typing import Any

import numpy as np

from frontiers_jax import config as config_lib
from frontiers_jax.errors import check

FORMATS = ('safetensors',)

# numpy dtype name -> safetensors dtype name.
_DTYPES = {'float64': 'F64', 'float32': 'F32', 'float16': 'F16', 'bfloat16': 'BF16',
           'int64': 'I64', 'int32': 'I32', 'int16': 'I16', 'int8': 'I8', 'uint8': 'U8',
           'bool': 'BOOL'}


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


def write_safetensors(path: str, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> str:
  """Writes `tensors` to `path` in the safetensors format; returns `path`."""
  header: dict[str, Any] = {'__metadata__': dict(metadata or {})}
  chunks, offset = [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    check(array.dtype.name in _DTYPES, 'export', f'{name} has dtype {array.dtype}',
          f'safetensors holds {", ".join(_DTYPES)}')
    data = array.astype(array.dtype.newbyteorder('<'), copy=False).tobytes()
    header[name] = {'dtype': _DTYPES[array.dtype.name], 'shape': list(array.shape),
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


def export_safetensors(run, path: str) -> str:
  """The parameters of `run` (a `runs.TrainedRun`) as one safetensors file."""
  metadata = {'format': 'frontiers_jax', 'workload': run.config.workload,
              'step': str(run.step), 'config': config_lib.to_json(run.config)}
  if run.tokenizer is not None:
    metadata['tokenizer'] = json.dumps(run.tokenizer.to_dict())
  return write_safetensors(path, flatten(run.params), metadata)


def export(run, fmt: str, out: str) -> list[str]:
  """Writes `run` in format `fmt` under `out`; returns the paths written."""
  check(fmt in FORMATS, 'format', f'unknown format {fmt!r}', f'allowed: {", ".join(FORMATS)}')
  return [export_safetensors(run, os.path.join(out, 'model.safetensors'))]
