"""How noisy is a validation loss estimated from a few random batches?

nanoGPT reports its Shakespeare losses as the mean over `eval_iters` random
batches of windows (20 batches of 12 in its CPU example); this project
evaluates every validation token once. This script takes a trained lm run and
prints the whole-split loss next to the distribution of the random-batch
estimate over many draws.

  python benchmarks/lm_eval_noise.py --workdir=runs/shakespeare_char_cpu \\
      [--batches=20] [--batch_size=12] [--draws=500] [--at_most=1.88]
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, '.')
from frontiers_jax import config as config_lib  # noqa: E402
from frontiers_jax import runs  # noqa: E402
from frontiers_jax.data import pipeline  # noqa: E402
from frontiers_jax.training import loop  # noqa: E402
from frontiers_jax.workloads import lm  # noqa: E402

flags.DEFINE_string('workdir', None, 'a trained lm run')
flags.DEFINE_integer('batches', 20, 'batches per estimate (nanoGPT: eval_iters)')
flags.DEFINE_integer('batch_size', 12, 'windows per batch')
flags.DEFINE_integer('draws', 500, 'independent estimates')
flags.DEFINE_float('at_most', 1.88, 'also print the share of estimates at or below this loss')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  config = config_lib.load_run_config(FLAGS.workdir)
  run = runs.prepare(config, FLAGS.workdir)
  state = loop.restore_trained(run)
  workload, context = run.workload, config.model.context
  text = lm.read_text(config.data.path, config.data.name, config.data.dir)
  validation = workload.tokenizer.encode(text['validation'])
  windows = pipeline.RandomWindows(validation, context + 1,
                                   FLAGS.draws * FLAGS.batches * FLAGS.batch_size, seed=0)
  tokens = windows(0)['tokens']

  @jax.jit
  def window_losses(tokens):
    losses, _, _ = workload.per_token(state.params, {'tokens': tokens})
    return losses.mean(axis=1)

  per_window = np.concatenate([np.asarray(window_losses(jnp.asarray(chunk)))
                               for chunk in np.array_split(tokens, FLAGS.draws)])
  estimates = per_window.reshape(FLAGS.draws, -1).mean(axis=1)
  whole = loop.evaluate(workload, jax.jit(workload.eval_step), run.mesh, state, run.data,
                        config.eval_batch_size)['eval/loss']
  print(f'whole validation split ({len(validation):,} tokens): loss {whole:.4f}')
  print(f'{FLAGS.draws} estimates from {FLAGS.batches} random batches of '
        f'{FLAGS.batch_size} windows of {context}:')
  print(f'  mean {estimates.mean():.4f}  std {estimates.std():.4f}  '
        f'min {estimates.min():.4f}  5th percentile {np.percentile(estimates, 5):.4f}  '
        f'95th {np.percentile(estimates, 95):.4f}')
  print(f'  share of estimates <= {FLAGS.at_most}: {np.mean(estimates <= FLAGS.at_most):.3f}')


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
