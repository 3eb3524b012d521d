"""`train_and_evaluate(workload, workdir)`: the one training loop of the project.

It knows the workload contract (`frontiers_jax.workloads.base`), not the
workloads: `frontiers_jax.runs` makes one from a config. In order:
  1. check everything the user gave (config, devices, workdir, data files)
     before writing or compiling anything;
  2. build the mesh, the train state (replicated, or split over the `fsdp`
     mesh axis: `frontiers_jax.training.sharding`) and the jitted steps;
  3. resume from the newest good checkpoint in `workdir/checkpoints`;
  4. loop: batch(step) -> train_step; log, evaluate and checkpoint on schedule;
  5. score the trained model and draw its figures (`workload.report`)
     and write `summary.json`.

Keys are derived, never carried: step s uses `fold_in(train_key, s)`, and batch
s is a pure function of (seed, s), so a resumed run repeats an uninterrupted
one bit for bit. One key per step serves every device: under `jax.jit` the
random bits of a sharded array are generated for the global array and split
like it, so they do not depend on the device or process count. SIGTERM saves a
checkpoint and exits (status 143); in a multi-process job every process saves
at the same step, whichever host the signal reached (JAX's preemption service).
"""

import dataclasses
import json
import math
import os
import platform
import signal
import tempfile
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
import optax
import orbax.checkpoint
from etils import epath

from frontiers_jax import config as config_lib
from frontiers_jax import streams
from frontiers_jax.data import pipeline
from frontiers_jax.errors import UsageError
from frontiers_jax.training import checkpoints as checkpoints_lib
from frontiers_jax.training import logs
from frontiers_jax.training import perf
from frontiers_jax.training import sharding
from frontiers_jax.training import warm_start
from frontiers_jax.workloads.base import Workload

EXIT_PREEMPTED = 143  # 128 + SIGTERM, after the checkpoint is written.
EXIT_WRITE_FAILED = 74  # EX_IOERR of sysexits.h: the workdir could not be written.


class Diverged(RuntimeError):
  """A train metric became NaN or Inf; the last checkpoint is still good."""


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint of the current step was written."""


# Disk full, no permission, a file in the way: the run stops with exit status
# EXIT_WRITE_FAILED; the checkpoints before the failed write are intact.
WriteFailed = checkpoints_lib.WriteFailed


@dataclasses.dataclass
class Run:
  """Everything `train_and_evaluate` prepares before the first step."""
  config: ml_collections.ConfigDict
  workdir: str
  workload: Workload
  mesh: jax.sharding.Mesh
  data: dict[str, Any]
  init_params: Any = None  # `config.init_from`'s parameters, for a run not yet begun


def prepare(workload: Workload, workdir: str) -> Run:
  """Checks all user input and loads the data; writes nothing.

  Raises `UsageError` on bad input: nothing is compiled or written before.
  """
  config = workload.config
  mesh = sharding.make_mesh(config.num_devices, sharding.fsdp_settings(config)[0])
  config_lib.validate_common(config, mesh.size)
  workload.validate()
  data = workload.load_data()
  workload.train_batches(data, config.batch_size, config.seed)  # checks the size
  check_workdir(workdir)
  init_params = None
  if config.get('init_from') and not _has_checkpoints(workdir):
    init_params = warm_start.read_params(config.init_from, workload)
  return Run(config, workdir, workload, mesh, data, init_params)


def _has_checkpoints(workdir: str) -> bool:
  directory = epath.Path(workdir) / 'checkpoints'
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_workdir(workdir: str) -> None:
  """Proves `workdir` can be created and written, without creating it.
  A bucket (gs://...) is checked by the first write."""
  if not workdir:
    raise UsageError('workdir', 'not given', 'pass --workdir=DIR')
  if logs.is_remote(workdir):
    return
  path = os.path.abspath(workdir)
  while not os.path.exists(path):  # The nearest existing ancestor decides.
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise UsageError('workdir', f'{workdir} is not writable ({path} is a file)',
                     'choose a directory you can write to')
  if not os.access(path, os.W_OK | os.X_OK):
    raise UsageError('workdir', f'{workdir} is not writable (no write permission '
                     f'on {path})', 'choose a directory you can write to')


def train_and_evaluate(workload: Workload, workdir: str) -> dict:
  """Trains and evaluates `workload` in `workdir`; returns the summary."""
  return run_training(prepare(workload, workdir))


def _fresh_state(run: Run):
  """The batch source, a freshly initialized state, the first batch and zeros
  shaped like the train metrics: the structure a restore fills.

  The state is created where it lives: each array is initialized directly in
  its shards (`sharding.state_shardings`), never whole on one device first.
  """
  batches = run.workload.train_batches(run.data, run.config.batch_size,
                                       run.config.seed, jax.process_index(),
                                       jax.process_count())
  example = sharding.shard_batch(run.mesh, batches(0))
  init_key = jax.random.fold_in(jax.random.key(run.config.seed), streams.INIT)
  abstract = jax.eval_shape(run.workload.create_state, init_key, example)
  shardings = sharding.state_shardings(run.mesh, abstract,
                                       sharding.fsdp_settings(run.config)[1])
  # Leaves in and out: each call of `create_state` builds its own optimizer,
  # and a TrainState's treedef holds it, so two calls' treedefs never match.
  init = jax.jit(lambda key, batch: jax.tree.leaves(run.workload.create_state(key, batch)),
                 out_shardings=jax.tree.leaves(shardings))
  state = jax.tree.unflatten(jax.tree.structure(abstract), init(init_key, example))
  if run.init_params is not None:
    params = warm_start.fit(run.init_params, abstract.params, run.config.init_from)
    state = run.workload.start_from(state, jax.device_put(params, shardings.params))
  return batches, state, example, zero_metrics(run.workload, state, example)


def restore_trained(run: Run):
  """The train state of the newest good checkpoint in `run.workdir`, sharded
  as training shards it (`config.mesh`).

  Raises `UsageError` when the workdir holds no checkpoint.
  """
  _, state, _, metric_zeros = _fresh_state(run)
  pending = jax.device_put(metric_zeros, sharding.replicated(run.mesh))
  directory = os.path.join(run.workdir, 'checkpoints')
  if not epath.Path(directory).is_dir():
    raise UsageError('workdir', f'no checkpoints in {run.workdir}',
                     'train first with launch/train.py --workdir=' + run.workdir)
  ckpt = checkpoints_lib.Checkpoints(directory, run.config.keep_checkpoints)
  try:
    restored = ckpt.restore_latest(_checkpoint_item(state, pending, 0))
  finally:
    ckpt.close()
  if restored is None:
    raise UsageError('workdir', f'no checkpoint in {ckpt.directory}',
                     'train first with launch/train.py --workdir=' + run.workdir)
  return restored[1]['state']


def run_training(run: Run) -> dict:
  config, workload, mesh, workdir = run.config, run.workload, run.mesh, run.workdir
  start_time = time.time()
  lead = jax.process_index() == 0
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  if lead:
    (epath.Path(workdir) / 'config.json').write_text(config_lib.to_json(config))
    workload.save_artifacts(workdir)

  batches, state, example, metric_zeros = _fresh_state(run)
  replicated = sharding.replicated(mesh)
  train_key = jax.random.fold_in(jax.random.key(config.seed), streams.TRAIN)
  train_step = make_train_step(workload, train_key, replicated,
                               jax.tree.map(lambda x: x.sharding, state))
  pending = jax.device_put(metric_zeros, replicated)
  # Compiled here, before the first step, for XLA's memory analysis; the
  # first call of `train_step` finds this executable in JAX's caches.
  step_memory = sharding.step_memory(
      train_step.lower(state, pending, example, jnp.int32(0)).compile())
  memory_line, memory = sharding.describe_memory(mesh, state, step_memory)
  _say(config, f'[{workload.name}] {memory_line}')
  speed = _Speed(workload, config.batch_size, mesh.size)
  if speed.spec is not None:
    speed.measure(train_step, mesh, state, pending, example)
  for line in workload.describe(state, speed.flops_per_step):
    _say(config, f'[{workload.name}] {line}')
  if speed.peak_per_device:
    _say(config, f'[{workload.name}] {speed.describe()}')

  # Resume: the state, and the train metrics summed since the last log step.
  ckpt = checkpoints_lib.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                     config.keep_checkpoints)
  first_step, pending_steps = 0, 0
  restored = ckpt.restore_latest(_checkpoint_item(state, pending, 0))
  if restored is not None:
    first_step, item = restored
    state, pending = item['state'], item['pending']
    pending_steps = int(item['pending_steps'])
    _say(config, f'[{workload.name}] resumed from step {first_step} in {ckpt.directory}')
  # Opened knowing the resume step: TensorBoard drops the events after it.
  log = logs.MetricsLog(workdir, None if restored is None else first_step)
  if restored is None:
    log.write_config(config)
  trace = _Trace(config.get('profile_steps', ()), workdir)

  eval_step = jax.jit(workload.eval_step, out_shardings=replicated)
  preempted, restore_sigterm = _preemption_notice()
  step = first_step
  last_log_time, last_log_step, eval_time, steady_times = time.time(), step, 0.0, []
  previous_done = None
  try:
    while step < config.num_steps:
      trace.before(step)
      batch = sharding.shard_batch(mesh, batches(step))
      state, pending, done = train_step(state, pending, batch, jnp.int32(step))
      # Steps run asynchronously. Waiting for the one before keeps two in
      # flight (the next batch is made while a step runs), so a checkpoint on
      # SIGTERM waits for two steps, not for a whole log interval's.
      if previous_done is not None:
        previous_done.block_until_ready()
      previous_done = done
      step += 1
      pending_steps += 1
      trace.after(step, done)
      last = step == config.num_steps
      record = {}
      if step % config.log_every == 0 or last:
        record.update(_mean_or_stop(pending, pending_steps, step))
        pending = jax.device_put(metric_zeros, replicated)
        pending_steps = 0
      if (config.eval_every and step % config.eval_every == 0) or last:
        eval_start = time.time()
        record.update(evaluate(workload, eval_step, mesh, state, run.data,
                               config.eval_batch_size))
        eval_time += time.time() - eval_start
      if record:
        now = time.time()  # Train metrics were fetched: the steps are done.
        interval = (now - last_log_time - eval_time) / (step - last_log_step)
        if last_log_step > first_step:  # The first interval includes compiling.
          steady_times.append(interval)
        speeds = speed.metrics(interval)
        log.write(step, record, speeds)
        if not config.quiet:
          logs.console(logs.progress_line(
              workload.name, step, config.num_steps, record,
              speeds, (config.num_steps - step) * interval))
        last_log_time, last_log_step, eval_time = now, step, 0.0
      stop = preempted(step)  # Read once: a signal between two reads loses a save.
      if step % config.checkpoint_every == 0 or last or stop:
        if pending_steps:
          _mean_or_stop(pending, pending_steps, step)
        _check_finite_state(state, step)  # Never save a NaN state.
        ckpt.save(step, _checkpoint_item(state, pending, pending_steps))
      if stop and not last:
        ckpt.wait()
        raise Preempted(f'SIGTERM at step {step}: checkpoint written to '
                        f'{ckpt.directory}')
  except OSError as e:  # metrics.jsonl or TensorBoard: the same disk, in practice.
    raise checkpoints_lib.WriteFailed(
        f'{e.filename or workdir} could not be written at step {step}: '
        f'{checkpoints_lib.root_cause(e)}; {ckpt.intact()}') from e
  finally:
    restore_sigterm()  # After training, SIGTERM stops the process again.
    trace.stop()
    ckpt.close()
    log.close()

  history = log.history()
  figures, final_metrics = [], {}
  # Process 0 scores and draws alone, so from a host copy: a computation on
  # global arrays must be run by every process.
  host_state = jax.device_get(jax.jit(lambda s: s, out_shardings=replicated)(state))
  try:
    if lead:
      fig_dir = os.path.join(workdir, 'figures')
      final_metrics, figures = _report(workload, host_state, run.data, history, fig_dir)
      log.write_figures(step, figures, fig_dir)
    summary = make_summary(config, history, time.time() - start_time,
                           first_step, steady_times, figures, speed, memory, final_metrics)
    if lead:
      (epath.Path(workdir) / 'summary.json').write_text(json.dumps(summary, indent=2))
  except OSError as e:  # The figures or the summary: a rerun writes them again.
    raise checkpoints_lib.WriteFailed(
        f'{e.filename or workdir} could not be written after the last step: '
        f'{checkpoints_lib.root_cause(e)}; {ckpt.intact()}') from e
  return summary


def _report(workload, state, data, history, fig_dir: str) -> tuple[dict, list[str]]:
  """The workload's final metrics and figures (`Workload.report`), the figures
  in `fig_dir`; for a bucket, drawn in a local folder (matplotlib writes local
  files) and copied."""
  if not logs.is_remote(fig_dir):
    os.makedirs(fig_dir, exist_ok=True)
    return workload.report(state, data, history, fig_dir)
  with tempfile.TemporaryDirectory() as local:
    metrics, paths = workload.report(state, data, history, local)
    for name in os.listdir(local):
      epath.Path(local, name).copy(epath.Path(fig_dir) / name, overwrite=True)
  return metrics, [os.path.join(fig_dir, os.path.basename(path)) for path in paths]


class _Trace:
  """`config.profile_steps` (a, b): a profiler trace of steps a to b - 1 in
  `workdir/profile`, which TensorBoard's profile plugin and Perfetto read.
  Process 0 traces; the trace stops early if training ends or fails first."""

  def __init__(self, profile_steps: tuple[int, ...], workdir: str):
    self.steps = tuple(profile_steps) if jax.process_index() == 0 else ()
    self.directory = os.path.join(workdir, 'profile')
    self.running = False

  def before(self, step: int) -> None:
    """Called before step `step` is dispatched."""
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.directory)
      self.running = True

  def after(self, steps_done: int, done: jax.Array) -> None:
    """Called once `steps_done` steps are dispatched; `done` is the last one's
    output, waited for so that the trace holds the whole step."""
    if self.running and steps_done == self.steps[1]:
      done.block_until_ready()
      self.stop()

  def stop(self) -> None:
    if self.running:
      self.running = False
      jax.profiler.stop_trace()


class _Speed:
  """Examples/s of each log interval, and for workloads with a `PerfSpec`,
  tokens/s and MFU (`frontiers_jax.training.perf`)."""

  def __init__(self, workload, batch_size: int, num_devices: int):
    self.spec = workload.perf_spec()
    self.batch_size, self.num_devices = batch_size, num_devices
    self.flops_per_step = self.peak_per_device = None

  def measure(self, train_step, mesh, state, pending, batch) -> None:
    """XLA's FLOPs of one step, and the matmul peak of one device."""
    flops = perf.step_flops(train_step, state, pending, batch, jnp.int32(0))
    self.flops_per_step = flops and flops * self.spec.loop_iterations
    self.peak_per_device = perf.matmul_peak(self.spec.compute_dtype,
                                            mesh.local_devices[0])

  def describe(self) -> str:
    """The MFU denominator as measured, e.g. 'MFU peak: 66.1 GFLOP/s per device x
    1, measured now (float32 matmuls)'."""
    dtype = jnp.dtype(self.spec.compute_dtype).name
    return (f'MFU peak: {self.peak_per_device / 1e9:,.1f} GFLOP/s per device x '
            f'{self.num_devices}, measured now ({dtype} matmuls)')

  def metrics(self, seconds_per_step: float) -> dict[str, float]:
    out = {'perf/steps_per_s': 1 / seconds_per_step,
           'perf/examples_per_s': self.batch_size / seconds_per_step}
    if self.spec is not None:
      out['perf/tokens_per_s'] = out['perf/examples_per_s'] * self.spec.tokens_per_example
    if self.flops_per_step and self.peak_per_device:
      out['perf/mfu'] = perf.mfu(self.flops_per_step, seconds_per_step,
                                 self.peak_per_device, self.num_devices)
    return out


def make_train_step(workload, train_key: jax.Array, replicated, state_shardings=None):
  """Jits `workload.train_step` once, adding the metric sums and derived key.

  The state keeps `state_shardings` (default: replicated) in and out; the
  batch is split over every device. With FSDP the parameters are gathered
  whole once, at the top of the step, and the gradients summed over all
  devices; each device then updates only its slice of the parameters and
  optimizer moments. The state and the metric sums are donated: updated in
  place on device. The third output, the number of steps taken, is not
  donated: the loop waits on it.
  """
  state_shardings = replicated if state_shardings is None else state_shardings
  batch = sharding.batch_sharding(replicated.mesh)

  def step_fn(state, pending, batch, step):
    # Without this constraint XLA's partitioner may follow the split weights
    # and move activations between devices instead (all-to-alls): measured on
    # the 10M GPT on 8 CPU devices, 1469 MiB of temporaries per device
    # against 799 MiB with it (745 MiB as pure data parallel).
    state = state.replace(params=jax.lax.with_sharding_constraint(state.params, replicated))
    rng = jax.random.fold_in(train_key, step)
    state, metrics = workload.train_step(state, batch, rng)
    pending = jax.tree.map(lambda s, m: s + m.astype(jnp.float32), pending, metrics)
    return state, pending, step + 1

  return jax.jit(step_fn, in_shardings=(state_shardings, replicated, batch, replicated),
                 out_shardings=(state_shardings, replicated, replicated),
                 donate_argnums=(0, 1))


def zero_metrics(workload, state, batch) -> dict[str, np.ndarray]:
  """Zeros shaped like the metrics of `train_step` (found without running it)."""
  _, shapes = jax.eval_shape(workload.train_step, state, batch, jax.random.key(0))
  return jax.tree.map(lambda x: np.zeros(x.shape, np.float32), shapes)


def evaluate(workload, eval_step, mesh, state, data, batch_size: int) -> dict:
  """Means of the eval metrics over whole splits: 'test' -> `eval/`, others
  named in `workload.extra_eval_splits` -> `eval_<split>/`. A metric `m` is
  divided by the sum `count_m` when the eval step returns one, else by `count`,
  and left out when that sum is 0 (no example of its kind in the split); then
  `workload.derived_metrics` adds what follows from the means."""
  results = {}
  for split in ('test',) + tuple(workload.extra_eval_splits):
    if split not in data:
      continue
    sums = None
    for local in pipeline.eval_batches(data[split], batch_size,
                                       jax.process_index(), jax.process_count()):
      out = eval_step(state, sharding.shard_batch(mesh, local))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    counts = {k: float(sums.pop(k)) for k in list(sums) if k.startswith('count')}
    prefix = 'eval' if split == 'test' else f'eval_{split}'
    for k, v in sums.items():
      count = counts.get(f'count_{k}', counts['count'])
      if count > 0:
        results[f'{prefix}/{k}'] = float(v) / count
  results.update(workload.derived_metrics(results))
  return results


def _mean_or_stop(pending, pending_steps: int, step: int) -> dict[str, float]:
  """Means of the train metrics since the last log; stops on NaN or Inf."""
  means = {f'train/{k}': float(v) / pending_steps
           for k, v in jax.device_get(pending).items()}
  for key, value in means.items():
    if not math.isfinite(value):
      raise Diverged(f'step {step}: {key} is {value} (in the last '
                     f'{pending_steps} steps); the last checkpoint before it '
                     'is kept. Lower the learning rate or clip gradients')
  return means


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)]))


def _check_finite_state(state, step: int) -> None:
  """The metrics come from the parameters *before* an update; this checks after."""
  if not bool(_all_finite((state.params, state.opt_state))):
    raise Diverged(f'step {step}: the parameters are not finite after the update; '
                   'the last checkpoint before it is kept. Lower the learning rate '
                   'or clip gradients')


def _checkpoint_item(state, pending, pending_steps: int) -> dict:
  return {'state': state, 'pending': pending,
          'pending_steps': np.asarray(pending_steps, np.int32)}  # saved by process 0


def _preemption_notice():
  """A function of the step that turns True, once SIGTERM arrived, at the step
  where the run must checkpoint and stop; and a function that puts back the
  SIGTERM handler that was there before, called when training ends (else a
  process that goes on to evaluate, or a sweep, could not be stopped by kill).

  One process: a flag set by a SIGTERM handler (main thread only). Several:
  JAX's preemption service (started by `jax.distributed.initialize`) catches
  SIGTERM on any host and names one step, the same on every host, at which
  `reached_preemption_sync_point` turns True everywhere; a Python handler
  would replace its own, so none is installed. Every process must then call
  the function at every step, as the loop does.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    return multihost_utils.reached_preemption_sync_point, lambda: None
  if threading.current_thread() is not threading.main_thread():
    return lambda step: False, lambda: None
  flag = {'set': False}

  def handler(signum, frame):
    del signum, frame
    flag['set'] = True
  previous = signal.signal(signal.SIGTERM, handler)
  return lambda step: flag['set'], lambda: signal.signal(signal.SIGTERM, previous)


def make_summary(config, history, wall_time_s, first_step, steady_times,
                 figures, speed: _Speed | None = None, memory: dict | None = None,
                 final_metrics: dict | None = None) -> dict:
  """`final`: the last logged value of every metric, then `final_metrics`."""
  final = {}
  for record in history:
    final.update({k: v for k, v in record.items() if k != 'step'})
  final.update(final_metrics or {})
  step_time = float(np.median(steady_times)) if steady_times else None
  devices = jax.devices()
  return {
      'workload': config.workload,
      'num_steps': config.num_steps,
      'final': final,
      'wall_time_s': round(wall_time_s, 3),
      'resumed_from_step': first_step,
      'steps_per_s': None if step_time is None else 1 / step_time,
      'examples_per_s': None if step_time is None else config.batch_size / step_time,
      **(_speed_summary(speed, step_time) if speed and speed.spec else {}),
      'versions': {'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
                   'flax': flax.__version__, 'optax': optax.__version__,
                   'orbax-checkpoint': orbax.checkpoint.__version__,
                   'python': platform.python_version()},
      'devices': {'platform': devices[0].platform, 'kind': devices[0].device_kind,
                  'count': len(devices), 'used': config.num_devices or len(devices),
                  'process_count': jax.process_count()},
      'figures': [os.path.basename(p) for p in figures],
      **({'mesh_memory': memory} if memory else {}),
  }


def _speed_summary(speed: _Speed, step_time: float | None) -> dict:
  steady = {} if step_time is None else speed.metrics(step_time)
  return {'tokens_per_s': steady.get('perf/tokens_per_s'),
          'mfu': steady.get('perf/mfu'),
          'flops_per_step': speed.flops_per_step,
          'peak_flops_per_device': speed.peak_per_device}


def _say(config, line: str) -> None:
  if not config.quiet:
    logs.console(line)
