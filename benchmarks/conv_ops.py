"""One 3x3 convolution, JAX against PyTorch: forward, input gradient, kernel gradient.

The benchmark rows built on convolutions (cnn_train, pgd10, unet_train,
ddim50) spend most of their time in three computations per layer. This
times each of them alone, on the shapes of those models, in both frameworks
(float32, NHWC in JAX under `jax.jit`, NCHW in torch eager, which calls
oneDNN), interleaved round by round; the median of `--rounds`.

  forward       y = conv(x, w)                      (every row)
  input grad    dx = conv_transpose(dy, w)          (pgd10, the train steps)
  kernel grad   dw = correlate(x, dy)               (the train steps)

  python benchmarks/conv_ops.py [--rounds=20] [--threads=2]
"""

import argparse
import statistics
import time

import jax
import numpy as np
import torch

# (name, batch, height = width, input channels, output channels)
SHAPES = (
    ('cnn conv1', 128, 28, 1, 32),
    ('cnn conv2', 128, 14, 32, 64),
    ('unet 28x28 64->64', 64, 28, 64, 64),
    ('unet 28x28 96->32', 64, 28, 96, 32),
    ('unet 14x14 128->64', 64, 14, 128, 64),
)


def jax_ops(x, w, dy):
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  forward = jax.jit(conv)
  input_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  kernel_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  return {'forward': lambda: forward(x, w).block_until_ready(),
          'input grad': lambda: input_grad(x, w, dy).block_until_ready(),
          'kernel grad': lambda: kernel_grad(x, w, dy).block_until_ready()}


def torch_ops(x, w, dy):
  backward = lambda mask: torch.ops.aten.convolution_backward(
      dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
  return {'forward': lambda: torch.nn.functional.conv2d(x, w, padding=1),
          'input grad': lambda: backward([True, False, False]),
          'kernel grad': lambda: backward([False, True, False])}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=20)
  parser.add_argument('--threads', type=int, default=2, help="torch's intra-op threads")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  rng = np.random.default_rng(0)
  print(f'jax {jax.__version__}, torch {torch.__version__} ({args.threads} threads); '
        f'median ms of {args.rounds} interleaved rounds')
  print('| convolution | op | JAX ms | torch ms | JAX / torch |')
  print('|---|---|---|---|---|')
  for name, batch, size, cin, cout in SHAPES:
    x = rng.standard_normal((batch, size, size, cin), np.float32)
    w = rng.standard_normal((3, 3, cin, cout), np.float32) / (3 * cin ** 0.5)
    dy = rng.standard_normal((batch, size, size, cout), np.float32)
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
    runners = {'jax': jax_ops(*map(jax.numpy.asarray, (x, w, dy))),
               'torch': torch_ops(nchw(x), torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(),
                                  nchw(dy))}
    for op in ('forward', 'input grad', 'kernel grad'):
      fns = {framework: ops[op] for framework, ops in runners.items()}
      for fn in fns.values():
        fn(), fn()  # compile, warm up
      times = {framework: [] for framework in fns}
      for _ in range(args.rounds):
        for framework, fn in fns.items():
          start = time.perf_counter()
          fn()
          times[framework].append(time.perf_counter() - start)
      ms = {f: 1e3 * statistics.median(t) for f, t in times.items()}
      print(f'| {name} | {op} | {ms["jax"]:.2f} | {ms["torch"]:.2f} | '
            f'{ms["jax"] / ms["torch"]:.2f}x |', flush=True)


if __name__ == '__main__':
  main()
