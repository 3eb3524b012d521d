"""Training that starts from another run's parameters (`config.init_from`):
fine-tuning, or continuing under a new config.

The source is a trained run's workdir (its newest readable checkpoint, the
parameters its workload samples with: the EMA for diffusion) or a
safetensors file written by `frontiers export`. Its parameter tree must have
the paths and shapes of the new model's; the optimizer starts afresh. A run
that has checkpoints of its own resumes from them and ignores the source.
"""

import os

import jax
import numpy as np
from etils import epath
from flax import traverse_util

from frontiers_jax import params_io
from frontiers_jax.errors import UsageError, check
from frontiers_jax.training import checkpoints
from frontiers_jax.training.logs import is_remote

WHERE = 'config.init_from'


def read_params(source: str, workload) -> dict:
  """The parameters in `source` as a nested dict of numpy arrays."""
  if is_remote(source) or os.path.isdir(source):
    check(epath.Path(source, 'config.json').exists(), WHERE,
          f'{source} is a directory but not a run', 'give the workdir of a trained run')
    _, state = checkpoints.read_state(source)
    return jax.device_get(workload.inference_params(state))
  check(os.path.isfile(source), WHERE, f'{source} does not exist',
        'give the workdir of a trained run or a .safetensors file from frontiers export')
  check(source.endswith('.safetensors'), WHERE, f'{source} is not a .safetensors file',
        'give the workdir of a trained run or a .safetensors file from frontiers export')
  tensors, _ = params_io.read_safetensors(source)
  return params_io.unflatten(tensors)


def fit(params: dict, like, source: str) -> dict:
  """`params` cast to the dtypes of `like` (the new model's parameters or
  their shapes), after checking that every path and shape agrees."""
  got = traverse_util.flatten_dict(params, sep='.')
  want = traverse_util.flatten_dict(like, sep='.')
  for name in sorted(set(want) | set(got)):
    if name not in got:
      raise UsageError(WHERE, f'{source} has no parameter {name}',
                       'give the parameters of a model of this config')
    if name not in want:
      raise UsageError(WHERE, f'{source} has parameter {name}, which this model lacks',
                       'give the parameters of a model of this config')
    check(tuple(got[name].shape) == tuple(want[name].shape), WHERE,
          f'{name} is {tuple(got[name].shape)} in {source}, {tuple(want[name].shape)} here',
          'give the parameters of a model of this config')
  return traverse_util.unflatten_dict(
      {tuple(k.split('.')): np.asarray(v, want[k].dtype) for k, v in got.items()})
