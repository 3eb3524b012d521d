"""Samples from a trained run: images from a diffusion model, text from a
language model.

Diffusion (a PNG grid and the images as .npy):
  frontiers sample --workdir=D --sampler=ddim --steps=50 --num=64 \\
      [--label=7 | --prompt="a sneaker"] [--guidance=3.0] --seed=0
  -> D/samples/<sampler>_<steps>[_label<k>]_seed<seed>.{png,npy}

Language model (printed, and written to a .txt file):
  frontiers sample --workdir=D --prompt="ROMEO:" [--prompt="JULIET:" ...] \\
      --num_tokens=500 --temperature=0.8 --top_k=200 [--top_p=0.95] --seed=0 \\
      [--num_samples=N]
  N continuations of each prompt, all prompts decoded as one batch (left-padded)
  -> D/samples/lm_seed<seed>.txt

Reads D/config.json and the newest checkpoint; --out replaces the output path
(without extension).
"""

import os

from absl import flags

from frontiers_jax import cli
from frontiers_jax.errors import UsageError

cli.define_workdir_flag(__name__, 'the trained run')
cli.define_distributed_flags(__name__)
# Diffusion.
flags.DEFINE_enum('sampler', 'ddim', ['ddpm', 'ddim', 'dpm_solver'], 'the sampler')
flags.DEFINE_integer('steps', 0, "sampler steps (0: the config's; ddpm takes all T)")
flags.DEFINE_integer('num', 64, 'number of images')
flags.DEFINE_integer('label', None, 'class to draw (conditional models)')
flags.DEFINE_float('guidance', 3.0, 'classifier-free guidance scale (1: none, 0: unconditional)')
# Language model.
flags.DEFINE_integer('num_tokens', 500, 'tokens to generate after the prompt')
flags.DEFINE_float('temperature', 0.8, 'softmax temperature (0: greedy)')
flags.DEFINE_integer('top_k', 200, 'sample among the k most likely tokens (0: all)')
flags.DEFINE_float('top_p', 1.0, 'sample within the nucleus of this probability (1: off)')
flags.DEFINE_integer('num_samples', 1, 'continuations of each prompt, all decoded as one batch')
# Both.
flags.DEFINE_multi_string('prompt', [], 'text to continue (lm; repeat the flag for several '
                          'prompts, decoded as one batch; default: the config\'s), or a '
                          'class name (diffusion, e.g. "a sneaker")')
flags.DEFINE_integer('seed', 0, 'random seed')
flags.DEFINE_string('out', '', 'output path without extension')
FLAGS = flags.FLAGS


def request_from_flags():
  """The flags as the `SampleRequest` every workload reads."""
  from frontiers_jax.workloads.base import SampleRequest
  return SampleRequest(
      prompts=tuple(FLAGS.prompt), seed=FLAGS.seed, num_tokens=FLAGS.num_tokens,
      temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
      num_samples=FLAGS.num_samples, sampler=FLAGS.sampler, steps=FLAGS.steps,
      num=FLAGS.num, label=FLAGS.label, guidance=FLAGS.guidance)


def main(argv: list[str]) -> int:
  del argv
  from frontiers_jax.training import loop  # jax is imported after parsing.
  run = cli.prepare_trained_run()
  if not run.workload.supports('sample'):
    raise UsageError('config.workload', f'{run.config.workload} cannot sample',
                     'sample from a diffusion or lm run')
  plan = run.workload.check_sample(request_from_flags())
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'samples', f'{plan["name"]}_seed{FLAGS.seed}')
  state = loop.restore_trained(run)
  for path in run.workload.sample(state, run.data, plan, out):
    print(f'wrote {path}')
  return 0


def run() -> None:
  cli.main(main)
