"""The JAX-vs-PyTorch benchmark: one row per workload step, three modes each.

A row is one computation built three ways on the same weights and the same
batch: the project's JAX step under `jax.jit`, its PyTorch twin in eager mode
and the twin under `torch.compile`. Each way is a `Runner`: a closure that
runs one step (updating its own state) and waits for the result.

Timing, per row: every mode's first call is timed apart (it compiles: XLA, or
TorchDynamo + Inductor; eager's first call is its warm-up), then `warmup`
calls, then `repeats` rounds in which the modes take turns, one step each,
so that a slow phase of the machine hits all of them alike. Reported: the
median, min and max step time over the rounds.

FLOPs per step come from XLA's cost analysis of the JAX step (the same
arithmetic in all three modes); achieved FLOP/s divides them by the step
time, and MFU by the matmul peak each framework reaches on this device,
measured at start-up (`frontiers_jax.training.perf.matmul_peak` and
`torch_matmul_peak`).
"""

import dataclasses
import statistics
import time
from typing import Callable

import torch

Runner = Callable[[], None]  # one step, finished when it returns
MODES = ('jax', 'torch_eager', 'torch_compile')


@dataclasses.dataclass
class Row:
  """One benchmarked computation: a runner per mode, and its FLOPs per step."""
  name: str
  runners: dict[str, Runner]
  flops: float | None = None
  tokens: int | None = None  # tokens per step (language models): tokens/s reported
  note: str = ''


@dataclasses.dataclass
class Result:
  name: str
  mode: str
  median_ms: float
  min_ms: float
  max_ms: float
  compile_s: float
  flops: float | None
  flops_per_s: float | None
  mfu: float | None
  tokens_per_s: float | None = None


def torch_matmul_peak(dtype=torch.float32, n: int = 1024, chain: int = 8,
                      repeats: int = 3) -> float:
  """Measured FLOP/s of chained n×n matmuls in torch on the CPU (best of 3)."""
  generator = torch.Generator().manual_seed(0)
  a = torch.randn(n, n, generator=generator, dtype=dtype)
  b = torch.randn(n, n, generator=generator, dtype=dtype) / n ** 0.5
  best = float('inf')
  for _ in range(repeats + 1):  # the first pass warms up
    start = time.perf_counter()
    x = a
    for _ in range(chain):
      x = x @ b
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 * chain / best


def _timed(runner: Runner) -> float:
  start = time.perf_counter()
  runner()
  return time.perf_counter() - start


def measure(row: Row, peaks: dict[str, float], warmup: int, repeats: int,
            say: Callable[[str], None] = print) -> list[Result]:
  """Times every mode of `row`, interleaved; see the module docstring."""
  compile_s = {}
  for mode, runner in row.runners.items():
    say(f'  {row.name}: first {mode} step (compiling) ...')
    compile_s[mode] = _timed(runner)
  for _ in range(warmup):
    for runner in row.runners.values():
      runner()
  times = {mode: [] for mode in row.runners}
  for _ in range(repeats):
    for mode, runner in row.runners.items():
      times[mode].append(_timed(runner))
  results = []
  for mode, seconds in times.items():
    median = statistics.median(seconds)
    rate = row.flops / median if row.flops else None
    peak = peaks['jax' if mode == 'jax' else 'torch']
    results.append(Result(row.name, mode, 1e3 * median, 1e3 * min(seconds),
                          1e3 * max(seconds), compile_s[mode], row.flops, rate,
                          rate / peak if rate else None,
                          row.tokens / median if row.tokens else None))
  return results


def markdown(results: list[Result]) -> str:
  """The table: one line per row and mode, with the ratio to PyTorch eager."""
  eager = {r.name: r.median_ms for r in results if r.mode == 'torch_eager'}
  lines = ['| row | mode | median ms | min–max ms | first step s | GFLOP/s | MFU | tokens/s | '
           'vs torch eager |', '|---|---|---|---|---|---|---|---|---|']
  for r in results:
    rate = '—' if r.flops_per_s is None else f'{r.flops_per_s / 1e9:.1f}'
    mfu = '—' if r.mfu is None else f'{r.mfu:.1%}'
    tokens = '—' if r.tokens_per_s is None else f'{r.tokens_per_s:,.0f}'
    ratio = f'{r.median_ms / eager[r.name]:.2f}x' if r.name in eager else '—'
    lines.append(f'| {r.name} | {r.mode} | {r.median_ms:.2f} | {r.min_ms:.2f}–{r.max_ms:.2f} '
                 f'| {r.compile_s:.2f} | {rate} | {mfu} | {tokens} | {ratio} |')
  return '\n'.join(lines)
