"""Compile time of each sampler against its number of steps.

Every sampler is one `lax.scan`, so the program XLA compiles has the same size
for 10 steps as for 1000; only running it takes longer. This prints, for the
UNet of a config, the time to lower and compile each sampler at several step
counts (and to run it once, for scale).

  python benchmarks/sampler_compile.py [--config=configs/diffusion.py:digits] [--batch=16]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from frontiers_jax import config as config_lib
from frontiers_jax.diffusion import process, samplers, unet


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='configs/diffusion.py:digits')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--image', default='8,8,1', help='H,W,C')
  args = parser.parse_args()
  c = config_lib.load_config(args.config)
  shape = (args.batch,) + tuple(int(v) for v in args.image.split(','))
  net = unet.create_unet(c.model, 10)
  params = jax.jit(net.init)(jax.random.key(0), jnp.zeros(shape),
                             jnp.zeros(shape[:1], jnp.int32), jnp.zeros(shape[:1], jnp.int32))
  sched = process.make_schedule(c.diffusion.schedule, c.diffusion.num_timesteps)
  labels = jnp.arange(shape[0]) % 10

  def model_fn(x, t, y):
    return net.apply(params, x, t, y)

  rows = []
  for name, counts in (('ddim', (10, 100, 1000)), ('dpm_solver', (10, 100, 1000)),
                       ('ddpm', (sched.num_steps,))):
    for steps in counts:
      def run(key, guidance, steps=steps, name=name):
        return samplers.sample(name, model_fn, sched, c.diffusion.objective, shape, key,
                               num_steps=None if name == 'ddpm' else steps, labels=labels,
                               null_label=10, guidance=guidance)
      start = time.perf_counter()
      compiled = jax.jit(run).lower(jax.random.key(1), jnp.float32(3.0)).compile()
      compile_s = time.perf_counter() - start
      start = time.perf_counter()
      jax.block_until_ready(compiled(jax.random.key(1), jnp.float32(3.0)))
      rows.append((name, steps, compile_s, time.perf_counter() - start))
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, config {args.config}, '
        f'batch {shape}')
  print('| sampler | steps | lower + compile (s) | one run (s) |')
  print('|---|---|---|---|')
  for name, steps, compile_s, run_s in rows:
    print(f'| {name} | {steps} | {compile_s:.2f} | {run_s:.2f} |')
  spread = [r[2] for r in rows]
  print(f'compile time ranges {min(spread):.2f}-{max(spread):.2f} s over '
        f'{min(r[1] for r in rows)}-{max(r[1] for r in rows)} steps '
        f'(median {np.median(spread):.2f} s)')


if __name__ == '__main__':
  main()
