"""Copying weights between a flax parameter tree and a torch twin, by name.

A twin names its torch parameters so that a function `torch_name(path)` maps
each flax path to `(torch name, is_kernel)`. Kernels change layout between
the two: flax Dense [in, out] is torch Linear [out, in]; flax Conv
[kh, kw, in, out] is torch Conv2d [out, in, kh, kw]. Every parameter of either
side must find its counterpart, with the same shape.
"""

from typing import Any, Callable, Mapping

import numpy as np
import torch
from flax import traverse_util

Params = Mapping[str, Any]
TorchName = Callable[[tuple[str, ...]], tuple[str, bool]]


def unwrap(params: Params) -> Params:
  """Accepts `variables` ({'params': ...}) as well as the params themselves."""
  return params['params'] if set(params) == {'params'} else params


def kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
  """flax [kh, kw, in, out] -> torch [out, in, kh, kw]; [in, out] -> [out, in]."""
  return kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T


def kernel_to_flax(weight: np.ndarray) -> np.ndarray:
  """The inverse of `kernel_to_torch`."""
  return weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T


@torch.no_grad()
def load_named(torch_model: torch.nn.Module, params: Params,
               torch_name: TorchName) -> torch.nn.Module:
  """Copies the flax `params` into `torch_model` (in place; returned too).

  Raises:
    KeyError: when a parameter of either side has no counterpart.
    ValueError: when shapes do not match.
  """
  targets = dict(torch_model.named_parameters())
  arrays = {}
  for path, value in traverse_util.flatten_dict(dict(unwrap(params))).items():
    name, is_kernel = torch_name(path)
    if name not in targets:
      raise KeyError(f'flax parameter {"/".join(path)} has no torch twin {name!r}')
    array = np.array(value, np.float32)  # a writable copy
    array = kernel_to_torch(array) if is_kernel else array
    if array.shape != tuple(targets[name].shape):
      raise ValueError(f'{"/".join(path)}: shape {array.shape} does not fit torch {name} '
                       f'{tuple(targets[name].shape)}')
    arrays[name] = array
  missing = sorted(set(targets) - set(arrays))
  if missing:
    raise KeyError(f'torch parameters without a flax value: {", ".join(missing)}')
  for name, array in arrays.items():
    targets[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
  return torch_model


def named_to_flax(torch_model: torch.nn.Module, like: Params,
                  torch_name: TorchName) -> dict:
  """The twin's weights as a nested dict of numpy float32 arrays with the paths
  and layouts of the flax tree `like`: to compare the two after training."""
  sources = dict(torch_model.named_parameters())
  out = {}
  for path in traverse_util.flatten_dict(dict(unwrap(like))):
    name, is_kernel = torch_name(path)
    array = sources[name].detach().cpu().numpy()
    out[path] = np.array(kernel_to_flax(array) if is_kernel else array)
  return traverse_util.unflatten_dict(out)
