"""Uncertainty: does the network know what it doesn't know?

  python launch/train.py --config=configs/uncertainty.py:mnist_ensemble --workdir=D
  python launch/sweep.py --config=configs/uncertainty.py:cubic \
      --sweep=method=ensemble,mc_dropout,evidential --workdir=D

Variants are `<setting>` or `<setting>_<method>`:
  cubic   y = x^3 + noise on [-4, 4], shown on [-6, 6] (an MLP);
  digits  scikit-learn's digits, OOD = the test digits inverted (the demo);
  mnist   MNIST, OOD = Fashion-MNIST test (needs the data dir);
  tiny    the tests: 12 steps on digits (tiny_cubic: on the cubic);
methods: softmax, ensemble (default), mc_dropout, evidential. `method`,
`task` and `ood` can also be overridden: --config.method=evidential.
"""

from frontiers_jax.config import base_config, set_tiny_schedule, variant

METHODS = {'softmax': 'softmax confidence', 'ensemble': 'a deep ensemble',
           'mc_dropout': 'MC dropout', 'evidential': 'evidential deep learning'}
SETTINGS = {'cubic': 'y = x^3 + noise', 'digits': '8x8 digits (OOD: inverted)',
            'mnist': 'MNIST (OOD: Fashion-MNIST)', 'tiny': 'tests, on digits',
            'tiny_cubic': 'tests, on the cubic'}
# The first is the default; a bare setting means its ensemble.
VARIANTS = {'mnist_ensemble': f'{SETTINGS["mnist"]}, {METHODS["ensemble"]}'}
VARIANTS.update({f'{s}{m and "_"}{m}': f'{about}, {METHODS[m or "ensemble"]}'
                 for s, about in SETTINGS.items() for m in ('',) + tuple(METHODS)})


def get_config(arg=None):
  name = variant(arg, VARIANTS)
  setting = next(s for s in sorted(SETTINGS, key=len, reverse=True)
                 if name == s or name.startswith(s + '_'))
  method = name[len(setting) + 1:] or 'ensemble'

  c = base_config()
  c.workload = 'uncertainty'
  c.method = method
  c.task = 'cubic' if setting.endswith('cubic') else 'classification'
  c.ood = 'fashion_mnist'
  c.calibration_bins = 15
  # mlp: hidden widths; cnn: conv features, then a dense layer (cubic: mlp only).
  c.model = {'name': 'mlp', 'hidden': (512, 512), 'features': (32, 64), 'dense': 256}
  c.ensemble = {'members': 5}
  c.mc_dropout = {'rate': 0.25, 'samples': 20}
  # coeff: the NIG regularizer weight (Amini et al. 2020); annealing_steps:
  # the steps over which the Dirichlet KL weight rises to 1 (Sensoy et al. 2018).
  c.evidential = {'coeff': 0.01, 'annealing_steps': 1000, 'risk': 'mse',
                  'evidence': 'softplus'}
  c.cubic = {'num_train': 1000, 'noise': 3.0, 'grid': 601}
  c.data.train_size = 0
  c.optim.schedule = 'cosine'

  if setting == 'mnist':
    # A small CNN: an MLP (512-512, 2000 steps) separated Fashion-MNIST from
    # MNIST test with AUROC 0.82 (softmax) to 0.88; a CNN 32-64-256, 0.99.
    c.data.name = 'mnist'
    c.model.name = 'cnn'
    c.model.features = (16, 32)
    c.model.dense = 128
    c.num_steps = 1000         # 2.1 epochs of batch 128
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.evidential.annealing_steps = 500
  if setting == 'digits':
    c.data.name = 'digits'
    c.ood = 'inverted'
    c.model.hidden = (128, 128)
    c.num_steps = 600
    c.batch_size = 128
    c.eval_batch_size = 360
    c.log_every = 100
    c.eval_every = 300
    c.checkpoint_every = 600
    c.evidential.annealing_steps = 300
  if setting == 'cubic':
    c.model.hidden = (64, 64)
    c.num_steps = 5000
    c.batch_size = 128
    c.eval_batch_size = 608     # the grid of 601 points in one padded batch
    c.log_every = 500
    c.eval_every = 2500
    c.checkpoint_every = 2500
  if setting.startswith('tiny'):
    c.data.name = 'digits'
    c.ood = 'inverted'
    c.data.train_size = 256
    c.model.hidden = (32,)
    c.model.features = (4, 8)
    c.model.dense = 16
    c.ensemble.members = 3
    c.mc_dropout.samples = 4
    c.evidential.annealing_steps = 6
    c.cubic.num_train = 128
    c.cubic.grid = 61
    set_tiny_schedule(c, batch_size=32, eval_batch_size=64)
  return c
