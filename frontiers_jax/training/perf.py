"""How fast a training step runs compared with what the hardware can do.

Model FLOPs utilization (MFU, PaLM section 4.1) is the fraction of the
device's peak matrix-multiply rate that the model's own arithmetic uses:

  MFU = (FLOPs of one training step) / (seconds per step) / (peak FLOP/s).

Both numbers come from this machine, never from a datasheet:

* the FLOPs of a step are what XLA's cost analysis counts in the lowered
  (unpartitioned, so global) step program: every matmul, elementwise op and
  optimizer update, for all devices together;
* the peak is measured at start-up by `matmul_peak`: the best rate of a chain
  of large square matmuls in the compute dtype on one device.

A workload may cross-check the XLA count with a closed form (the language
model compares it with 6N + 12·L·d·T per token, PaLM appendix B).
"""

import time

import jax
import jax.numpy as jnp

# Matmul size and chain length per platform: big enough to reach the peak,
# small enough to measure in about a second.
_SIZE = {'cpu': 1024}
_DEFAULT_SIZE = 4096
_CHAIN = 8
_REPEATS = 3


def matmul_peak(dtype=jnp.float32, device: jax.Device | None = None) -> float:
  """Measured FLOP/s of chained n×n matmuls in `dtype` on `device` (best of 3)."""
  device = device or jax.devices()[0]
  n = _SIZE.get(device.platform, _DEFAULT_SIZE)
  key = jax.random.key(0)
  # Entries of variance 1/n keep the chain's values near unit size.
  a = jax.device_put(jax.random.normal(key, (n, n), dtype), device)
  b = jax.device_put(jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
                     / jnp.sqrt(n).astype(dtype), device)

  @jax.jit
  def chain(a, b):
    return jax.lax.fori_loop(0, _CHAIN, lambda _, x: x @ b, a)

  chain(a, b).block_until_ready()  # compile
  best = float('inf')
  for _ in range(_REPEATS):
    start = time.perf_counter()
    chain(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 * _CHAIN / best


def step_flops(jitted_step, *args) -> float | None:
  """FLOPs of one call of `jitted_step(*args)` by XLA's cost analysis of the
  lowered program (global: before it is split over devices). None when the
  backend gives no estimate."""
  analysis = jitted_step.lower(*args).cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per program.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def mfu(flops_per_step: float, seconds_per_step: float, peak_per_device: float,
        num_devices: int) -> float:
  """Model FLOPs utilization of the whole mesh, in [0, 1] (ideally)."""
  return flops_per_step / seconds_per_step / (peak_per_device * num_devices)
