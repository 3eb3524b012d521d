"""Samples from a trained diffusion run: a PNG grid and the images as .npy.

  python launch/sample.py --workdir=D --sampler=ddim --steps=50 --num=64 \\
      [--label=7 | --prompt="a sneaker"] [--guidance=3.0] --seed=0

Reads D/config.json and the newest checkpoint; writes
D/samples/<sampler>_<steps>_seed<seed>[_label<k>].{png,npy} unless --out is given.
"""

from absl import flags

from frontiers_jax import cli

flags.DEFINE_enum('sampler', 'ddim', ['ddpm', 'ddim', 'dpm_solver'], 'the sampler')
flags.DEFINE_integer('steps', 0, "sampler steps (0: the config's; ddpm takes all T)")
flags.DEFINE_integer('num', 64, 'number of images')
flags.DEFINE_integer('label', None, 'class to draw (conditional models)')
flags.DEFINE_string('prompt', '', 'a class name as a prompt, e.g. "a sneaker"')
flags.DEFINE_float('guidance', 3.0, 'classifier-free guidance scale (1: none, 0: unconditional)')
flags.DEFINE_integer('seed', 0, 'random seed')
flags.DEFINE_string('out', '', 'output path without extension')

if __name__ == '__main__':
  cli.main(cli.sample)
