"""Universal approximation: one hidden layer of growing width fits a target.

  python launch/train.py --config=configs/approximation.py:sine --workdir=D

Variants name the target: sine (default), abs, bumps (1-D), ripple (2-D), and
tiny (tests). Every run trains all widths in `widths` at once.
"""

from frontiers_jax.config import base_config, set_tiny_schedule, variant

# The first is the default.
VARIANTS = {
    'sine': 'sin(2 pi x) on [-1, 1] by one hidden layer of widths 1 to 1024',
    'abs': '|x|: continuous, not smooth',
    'bumps': 'two Gaussian bumps of opposite sign',
    'ripple': 'a 2-D ripple, cos(3 pi r) exp(-r)',
    'tiny': 'a seconds-long run for tests (sine, 3 widths)',
}


def get_config(arg=None):
  c = base_config()
  c.workload = 'approximation'
  name = variant(arg, VARIANTS)
  c.target = 'sine' if name == 'tiny' else name
  c.activation = 'relu'
  c.widths = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
  c.num_train = 1024
  c.grid = 1001             # test points per axis
  c.data.name = 'synthetic'  # the data are made from `target`, not loaded
  c.num_steps = 4000
  c.batch_size = 256
  c.eval_batch_size = 1024
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 2000
  c.optim.learning_rate = 3e-3
  c.optim.schedule = 'cosine'
  if c.target == 'ripple':
    c.num_train = 4096
    c.grid = 64
  if name == 'tiny':
    c.widths = (1, 4, 16)
    c.num_train = 64
    c.grid = 33
    set_tiny_schedule(c, batch_size=16, eval_batch_size=16)
  return c
