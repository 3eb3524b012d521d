"""Samples from a trained run: images from a diffusion model, text from a
language model.

Diffusion (a PNG grid and the images as .npy):
  python launch/sample.py --workdir=D --sampler=ddim --steps=50 --num=64 \\
      [--label=7 | --prompt="a sneaker"] [--guidance=3.0] --seed=0
  -> D/samples/<sampler>_<steps>[_label<k>]_seed<seed>.{png,npy}

Language model (printed, and written to a .txt file):
  python launch/sample.py --workdir=D --prompt="ROMEO:" [--prompt="JULIET:" ...] \\
      --num_tokens=500 --temperature=0.8 --top_k=200 [--top_p=0.95] --seed=0 \\
      [--num_samples=N]
  N continuations of each prompt, all prompts decoded as one batch (left-padded)
  -> D/samples/lm_seed<seed>.txt

Reads D/config.json and the newest checkpoint; --out replaces the output path
(without extension).
"""

from absl import flags

from frontiers_jax import cli

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

if __name__ == '__main__':
  cli.main(cli.sample)
