"""Rethinking generalization (Zhang et al. 2017): fit randomized data.

  python launch/train.py --config=configs/generalization.py:mnist --workdir=D \
      --config.randomization=random_labels

Variants: digits (default), digits_cnn, mnist, mnist_cnn, tiny (tests).
`randomization` in none, partial, random_labels, shuffled_pixels,
random_pixels, gaussian; `corruption` is the label-noise fraction of partial.
"""

from frontiers_jax.config import base_config, classifier_config, set_tiny_schedule, variant

# The first is the default.
VARIANTS = {
    'digits': 'an MLP on 8x8 digits: memorizes random labels in seconds',
    'digits_cnn': 'a small CNN on 8x8 digits',
    'mnist': 'an MLP 1024-1024 on MNIST, 20k steps',
    'mnist_cnn': 'a small CNN on MNIST, 20k steps',
    'tiny': 'a seconds-long run for tests',
}


def get_config(arg=None):
  c = base_config()
  c.workload = 'generalization'
  c.randomization = 'none'
  c.corruption = 0.5
  c.data.train_size = 0  # 0: the whole training split
  c.model = classifier_config('mlp')
  # Decaying the learning rate lets the last steps settle on a perfect fit of
  # the (random) labels instead of hovering around 98 %.
  c.optim.schedule = 'cosine'

  name = variant(arg, VARIANTS)
  if name.startswith('digits'):
    # 1437 training images of 8x8: memorizing random labels takes seconds.
    c.data.name = 'digits'
    c.num_steps = 2000
    c.batch_size = 128
    c.eval_batch_size = 360
    c.log_every = 50
    c.eval_every = 100
    c.checkpoint_every = 1000
  if name.startswith('mnist'):
    c.data.name = 'mnist'
    c.model.hidden = (1024, 1024)
    c.num_steps = 20000
    c.batch_size = 256
    c.eval_batch_size = 2000
    c.log_every = 200
    c.eval_every = 1000
    c.checkpoint_every = 2000
  if name.endswith('_cnn'):
    c.model.name = 'cnn'
  if name == 'tiny':
    c.data.name = 'digits'
    c.data.train_size = 256
    c.model.hidden = (32,)
    c.model.features = (4, 8)
    c.model.dense = 16
    set_tiny_schedule(c)
  return c
