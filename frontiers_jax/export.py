"""Trained parameters out of the project, in formats other tools read.

  frontiers export WORKDIR --format=safetensors|torch|hf   # -> WORKDIR/export/

safetensors (any workload): `model.safetensors`, every parameter array under
its dotted path in the parameter tree (`block_0.attention.query.kernel`), in
its own dtype, with the run's config, workload, step and (language models)
tokenizer as JSON strings in its metadata. Flax kernels keep their layout
([in, out]); PyTorch's Linear holds [out, in].

torch (models with a PyTorch twin in `frontiers_jax.bench`: the GPT, the UNet,
the small CNN): `model.pt`, the twin's `state_dict`.

hf (a GPT with learned positions): a Hugging Face `GPT2LMHeadModel` folder,
`config.json` and `model.safetensors` (`frontiers_jax.lm.huggingface`), with
the project's tokenizer as `frontiers_tokenizer.json`.
"""

import json
import os

from frontiers_jax import config as config_lib
from frontiers_jax import params_io
from frontiers_jax.errors import UsageError, check

FORMATS = ('safetensors', 'torch', 'hf')


def _run_metadata(run) -> dict[str, str]:
  metadata = {'workload': run.config.workload, 'step': str(run.step),
              'config': config_lib.to_json(run.config)}
  if run.tokenizer is not None:
    metadata['tokenizer'] = json.dumps(run.tokenizer.to_dict())
  return metadata


def export_safetensors(run, path: str) -> str:
  """The parameters of `run` (a `runs.TrainedRun`) as one safetensors file."""
  return params_io.write_safetensors(path, params_io.flatten(run.params),
                                     {'format': 'frontiers_jax', **_run_metadata(run)})


def export_hf(run, folder: str) -> list[str]:
  """A language model as a Hugging Face GPT-2 folder, with the project's
  tokenizer beside it (`frontiers_tokenizer.json`: the token ids are ours)."""
  check(run.config.workload == 'lm', 'format', f'hf is for language models, not '
        f'{run.config.workload}', 'export --format=safetensors')
  from frontiers_jax.lm import huggingface  # noqa: PLC0415
  paths = huggingface.write_gpt2(folder, run.model, run.params, _run_metadata(run))
  tokenizer = os.path.join(folder, 'frontiers_tokenizer.json')
  with open(tokenizer, 'w') as f:
    json.dump(run.tokenizer.to_dict(), f)
  return paths + [tokenizer]


def check_twin(run) -> None:
  """A `UsageError` unless `run.model` has a PyTorch twin and torch is installed."""
  from frontiers_jax import models  # noqa: PLC0415
  name = run.config.workload
  check(name in ('lm', 'diffusion') or isinstance(run.model, models.SmallCNN), 'format',
        f'the {name} model ({type(run.model).__name__}) has no PyTorch twin',
        'export --format=safetensors; twins exist for lm, diffusion and the cnn classifier')
  try:
    import torch  # noqa: F401, PLC0415
  except ImportError:
    raise UsageError('format', 'torch needs PyTorch, which is not installed',
                     'pip install "frontiers_jax[bench]"') from None


def torch_twin(run):
  """The PyTorch twin of `run.model` (`frontiers_jax.bench`) with its weights."""
  check_twin(run)
  from frontiers_jax.data import registry  # noqa: PLC0415
  if run.config.workload == 'lm':
    from frontiers_jax.bench import torch_gpt  # noqa: PLC0415
    return torch_gpt.load_flax_params(torch_gpt.TorchGPT.from_module(run.model), run.params)
  if run.config.workload == 'diffusion':
    from frontiers_jax.bench import torch_unet  # noqa: PLC0415
    channels = registry.IMAGE_SHAPES[run.config.data.name][-1]
    return torch_unet.load_flax_params(torch_unet.TorchUNet.from_module(run.model, channels),
                                       run.params)
  from frontiers_jax.bench import torch_cnn  # noqa: PLC0415
  shape = registry.IMAGE_SHAPES[run.config.data.name]
  return torch_cnn.load_flax_params(torch_cnn.TorchSmallCNN.from_module(run.model, shape),
                                    run.params)


def export_torch(run, path: str) -> str:
  """The PyTorch twin's `state_dict`, saved with `torch.save`. Load it with
  `TorchGPT.from_module(fj.load_run(WORKDIR).model).load_state_dict(torch.load(path))`
  (likewise `TorchUNet`, `TorchSmallCNN`)."""
  twin = torch_twin(run)  # checks first that there is a twin, and torch
  import torch  # noqa: PLC0415
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  torch.save(twin.state_dict(), path)
  return path


def export(run, fmt: str, out: str) -> list[str]:
  """Writes `run` in format `fmt` under the folder `out`; returns the paths written."""
  check(fmt in FORMATS, 'format', f'unknown format {fmt!r}', f'allowed: {", ".join(FORMATS)}')
  if fmt == 'hf':
    return export_hf(run, out)
  if fmt == 'torch':
    return [export_torch(run, os.path.join(out, 'model.pt'))]
  return [export_safetensors(run, os.path.join(out, 'model.safetensors'))]
