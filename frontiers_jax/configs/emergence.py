"""Emergence with scale: 3-digit addition by models 64x apart in size.

  python launch/sweep.py --config=configs/emergence.py --workdir=D

trains one model per width in `sweep` (4 layers, 4 heads each) on the same
100,000 problems for the same number of steps (same data and steps, not
compute-matched: larger models spend more FLOPs), then plots held-out
exact-match accuracy against parameters and against training FLOPs
(D/figures/emergence.png; D/report.html has the table).

Variants: cpu (default; the sweep the README reports), tour (2-digit
addition, the `make demo` section) and tiny (tests).
"""

import os

import ml_collections

from frontiers_jax import config as config_lib

# The first is the default.
VARIANTS = {
    'cpu': '3-digit addition by 5 widths, 16 to 128 (a sweep: frontiers sweep)',
    'tour': '2-digit addition by 4 widths: the demo section',
    'tiny': 'a seconds-long sweep for tests',
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = config_lib.variant(arg, VARIANTS)
  lm_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lm.py')
  c = config_lib.load_config(f'{lm_file}:{"tiny" if name == "tiny" else "arithmetic"}')
  c.unlock()
  c.quiet = False
  # The swept key and its values (launch/sweep.py --sweep=... overrides it).
  c.sweep = 'model.width=16,32,48,64,128'
  if name == 'tour':
    c.data.digits = 2
    c.data.num_train = 6000
    c.data.num_test = 1000
    c.model.context = 8
    c.batch_size = 128
    c.num_steps = 800
    c.eval_every = 200
    c.sweep = 'model.width=8,16,32,64'
  elif name == 'tiny':
    c.sweep = 'model.width=8,16'
  return c
