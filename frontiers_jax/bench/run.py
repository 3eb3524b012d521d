"""`launch/bench.py`: checks the row names, builds the rows, times them, reports."""

import dataclasses
import json
import os
import platform

import jax
import jaxlib
import torch
import torch._inductor.config

from frontiers_jax import config as config_lib
from frontiers_jax.bench import harness, rows
from frontiers_jax.errors import check
from frontiers_jax.training import perf


def builders(configs_dir: str) -> dict:
  """Row name -> a function building that row."""
  def load(spec: str, **overrides):
    config = config_lib.load_config(os.path.join(configs_dir, spec))
    config_lib.apply_overrides(config, overrides.items())
    return config

  return {
      'cnn_train': lambda: rows.cnn_train('cnn_train', load('adversarial.py:mnist')),
      'pgd10': lambda: rows.pgd('pgd10', load('adversarial.py:mnist')),
      'unet_train': lambda: rows.unet_train('unet_train', load('diffusion.py:mnist')),
      'ddim50': lambda: rows.ddim('ddim50', load('diffusion.py:mnist')),
      # nanoGPT's CPU Shakespeare model, with its learned position table.
      'gpt_train_0.8M': lambda: rows.gpt_train('gpt_train_0.8M', load(
          'lm.py:shakespeare_char_cpu', **{'model.positions': 'learned'})),
      # The 10M row: the GPU Shakespeare model at batch 8, without
      # dropout (two frameworks cannot draw the same dropout masks).
      'gpt_train_10M': lambda: rows.gpt_train('gpt_train_10M', load(
          'lm.py:shakespeare_char', batch_size='8', **{'model.dropout': '0'})),
      # Decoding with the same 10M model: a 16-token prompt, then 240 tokens.
      'gpt_decode_b1': lambda: rows.gpt_decode('gpt_decode_b1', load('lm.py:shakespeare_char'),
                                               batch_size=1),
      'gpt_decode_b8': lambda: rows.gpt_decode('gpt_decode_b8', load('lm.py:shakespeare_char'),
                                               batch_size=8),
  }


def main(names: list[str], quick: bool, out: str, configs_dir: str) -> None:
  build = builders(configs_dir)
  for name in names:
    check(name in build, 'workloads', f'unknown row {name!r}', f'rows: {", ".join(build)}')
  torch.manual_seed(0)
  # Inductor's compiled UNet backward crashed (segmentation fault) with two
  # OpenMP threads on the 2-core CPU (torch 2.13); one thread in compiled
  # kernels is stable. Eager mode keeps torch's default thread count.
  torch._inductor.config.cpp.threads = 1
  peaks = {'jax': perf.matmul_peak(), 'torch': harness.torch_matmul_peak()}
  print(f'matmul peak (float32): jax {peaks["jax"] / 1e9:.0f} GFLOP/s, '
        f'torch {peaks["torch"] / 1e9:.0f} GFLOP/s', flush=True)
  results = []
  for name in names:
    row = build[name]()
    results += harness.measure(row, peaks, warmup=1 if quick else 3,
                               repeats=5 if quick else 20,
                               say=lambda line: print(line, flush=True))
  print(harness.markdown(results))
  device = jax.devices()[0]
  with open(out, 'w') as f:
    json.dump({'rows': [dataclasses.asdict(r) for r in results],
               'peaks_flops': peaks,
               'versions': {'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
                            'torch': torch.__version__, 'python': platform.python_version()},
               'device': {'platform': device.platform, 'kind': device.device_kind,
                          'cpu_count': os.cpu_count()},
               'torch_threads': torch.get_num_threads(), 'quick': quick}, f, indent=2)
  print(f'wrote {out}')
