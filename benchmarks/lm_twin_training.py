"""Train one language-model config in JAX and in its PyTorch twin, side by side.

Both start from the same initial weights (the JAX init, copied into
`frontiers_jax.bench.torch_gpt.TorchGPT`), see the same batches (the
project's `RandomWindows` of the seed and the step) and take the same
optimizer steps (`frontiers_jax.bench.torch_optim`). At the end both are
evaluated on the whole validation split by the project's eval step (the
torch weights copied back), so any gap in the final loss comes from the two
frameworks' arithmetic drifting apart, not from data, init or schedule.

  FRONTIERS_DATA_DIR=../shared/data python benchmarks/lm_twin_training.py \\
      --config=configs/lm.py:shakespeare_char_cpu [--config.seed=0] [--num_steps=2000]

Prints the training loss every few hundred steps and the final validation
losses, with each framework's wall time.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import flags, logging

sys.path.insert(0, '.')
from frontiers_jax import cli  # noqa: E402
from frontiers_jax import runs  # noqa: E402
from frontiers_jax.bench import torch_gpt, torch_optim  # noqa: E402
from frontiers_jax.training import loop  # noqa: E402

cli.define_config_flag(__name__)
flags.DEFINE_integer('num_steps', 0, "steps (0: the config's)")
flags.DEFINE_integer('print_every', 250, 'steps between printed train losses')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = cli.load_config_from_flags()
  config.unlock()
  if FLAGS.num_steps:
    config.num_steps = FLAGS.num_steps
  config.quiet = True
  run = runs.prepare(config, '/tmp/lm_twin_training')  # never written
  workload, data = run.workload, run.data
  batches = workload.train_batches(data, config.batch_size, config.seed)
  first = jax.tree.map(jnp.asarray, batches(0))
  state = jax.jit(workload.create_state)(jax.random.key(config.seed), first)
  torch.manual_seed(config.seed)
  twin = torch_gpt.TorchGPT.from_module(workload.model)
  torch_gpt.load_flax_params(twin, jax.device_get(state.params))
  made = torch_optim.make_torch_optimizer(config.optim, twin.named_parameters(),
                                          config.num_steps)
  train_step = jax.jit(workload.train_step, donate_argnums=0)
  jax_time = torch_time = 0.0
  for step in range(config.num_steps):
    batch = batches(step)
    start = time.perf_counter()
    state, metrics = train_step(state, jax.tree.map(jnp.asarray, batch),
                                jax.random.key(step))
    jax_loss = float(metrics['loss'])
    jax_time += time.perf_counter() - start
    start = time.perf_counter()
    twin.train()
    loss = torch_gpt.lm_loss(twin, torch.from_numpy(np.asarray(batch['tokens'], np.int64)))
    torch_optim.torch_step(twin, *made, loss)
    torch_time += time.perf_counter() - start
    if (step + 1) % FLAGS.print_every == 0 or step == 0:
      print(f'step {step + 1:>5}: train loss  jax {jax_loss:.4f}  torch {loss.item():.4f}',
            flush=True)
  eval_step = jax.jit(workload.eval_step)
  evaluate = lambda s: loop.evaluate(workload, eval_step, run.mesh, s, data,
                                     config.eval_batch_size)['eval/loss']
  torch_params = torch_gpt.flax_params_from_torch(twin, like=jax.device_get(state.params))
  jax_val = evaluate(state)
  torch_val = evaluate(state.replace(params=jax.tree.map(jnp.asarray, torch_params)))
  print(f'validation loss (whole split) after {config.num_steps} steps:  '
        f'jax {jax_val:.4f} ({jax_time:.0f} s)  torch twin {torch_val:.4f} '
        f'({torch_time:.0f} s, eager)')


if __name__ == '__main__':
  cli.main(lambda argv: main(argv) or 0)
