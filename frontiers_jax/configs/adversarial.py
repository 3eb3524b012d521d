"""Adversarial examples and adversarial training.

  python launch/train.py --config=configs/adversarial.py:mnist --workdir=D
  python launch/train.py --config=configs/adversarial.py:mnist_pgd --workdir=D

Variants: digits (default), mnist (standard training), mnist_pgd (Madry et
al. 2018: PGD-40 at eps 0.3, step 0.01), mnist_pgd_cpu (the same model with
PGD-10 for 3000 steps: what a 2-core CPU trains in about an hour),
mnist_trades, cifar10 (ResNet, eps 8/255), tiny (tests). `train_method` in standard, pgd, trades.
"""

import ml_collections

from frontiers_jax.config import base_config, classifier_config, set_tiny_schedule, variant

# The first is the default.
VARIANTS = {
    'digits': 'a small CNN on 8x8 digits, PGD-10 adversarial training at eps 0.2',
    'mnist': 'the Madry et al. CNN on MNIST, standard training',
    'mnist_pgd': 'Madry et al. 2018: PGD-40 training at eps 0.3 for 40k steps (GPU)',
    'mnist_pgd_cpu': 'the same model with PGD-10 for 3000 steps (about an hour of CPU)',
    'mnist_trades': 'TRADES (beta 6) instead of PGD training',
    'cifar10': 'a ResNet on CIFAR-10 at eps 8/255',
    'tiny': 'a seconds-long run for tests',
}


def get_config(arg=None):
  c = base_config()
  c.workload = 'adversarial'
  c.train_method = 'standard'
  c.data.train_size = 0
  c.model = classifier_config('cnn')
  c.attack = ml_collections.ConfigDict()
  c.attack.norm = 'linf'
  c.attack.loss = 'ce'
  c.attack.eps = 0.3
  c.attack.step_size = 0.01
  c.attack.train_steps = 40  # PGD steps of the inner maximization
  c.attack.eval_steps = 20   # PGD steps of the periodic robust evaluation
  c.attack.trades_beta = 6.0
  c.attack.eps_warmup_steps = 0  # train eps ramps up linearly over these steps
  # launch/evaluate.py: every attack at every eps, on the test split.
  c.robustness = ml_collections.ConfigDict()
  c.robustness.eps = (0.1, 0.2, 0.3, 0.4, 1.0)  # L-inf; 1.0 is unbounded: must reach ~0
  c.robustness.l2_eps = (1.0, 2.0, 3.0, 30.0)    # 30 > sqrt(784): unbounded on 28x28
  c.robustness.attacks = ('fgsm', 'pgd', 'pgd-long', 'apgd-ce', 'apgd-dlr', 'square')
  c.robustness.pgd_steps = 40
  c.robustness.apgd_steps = 100
  c.robustness.square_queries = 1000
  c.robustness.num_examples = 0  # 0: the whole test split
  # EOT vs plain PGD at attack.eps, judged under fresh random transformations.
  c.robustness.eot_examples = 500  # 0: skip
  c.robustness.eot_samples = 16
  # The transformation distribution (frontiers_jax.adversarial.eot.TransformRange).
  c.robustness.eot_rotation_deg = 15.0
  c.robustness.eot_translation = 0.1
  c.robustness.eot_scale = (0.9, 1.1)
  c.robustness.eot_brightness = 0.1
  c.robustness.eot_noise_std = 0.02

  name = variant(arg, VARIANTS)
  if name == 'digits':
    # 8x8 images with 17 grey levels: eps 0.2 is about 3 levels.
    c.data.name = 'digits'
    c.attack.eps = 0.2
    c.attack.step_size = 0.05  # 2.5 eps / train_steps (Madry et al.'s rule)
    c.attack.train_steps = 10
    c.robustness.eps = (0.05, 0.1, 0.2, 0.3, 1.0)
    c.robustness.l2_eps = (0.5, 1.0, 2.0, 10.0)  # 10 > sqrt(64)
    c.num_steps = 1000
    c.batch_size = 128
    c.eval_batch_size = 360
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
  if name.startswith('mnist'):
    c.data.name = 'mnist'
    c.num_steps = 2000
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.log_every = 100
    c.eval_every = 1000
    c.checkpoint_every = 1000
  if name in ('mnist_pgd', 'mnist_pgd_cpu', 'mnist_trades'):
    # Madry et al. 2018: 100k steps of batch 50 (about 83 epochs), PGD-40 with
    # step 0.01 at eps 0.3, Adam 1e-4. 40k steps of 128 see as many examples.
    c.train_method = name.split('_')[1]
    c.model.features = (32, 64)
    c.model.dense = 1024
    c.num_steps = 40000
    c.eval_every = 5000
    c.checkpoint_every = 1000
    c.optim.learning_rate = 1e-4
  if name == 'mnist_pgd_cpu':
    # About 6.4 epochs: PGD-10 with Madry et al.'s step rule (2.5 eps /
    # steps), eps ramped up over the first 500 steps (at the full eps from the
    # start the loss sat at log 10 for 300+ steps), a larger Adam rate on a
    # cosine schedule to make up for fewer steps.
    c.attack.train_steps = 10
    c.attack.step_size = 0.075
    c.attack.eps_warmup_steps = 500
    c.num_steps = 3000
    c.eval_every = 1500
    c.checkpoint_every = 500
    c.optim.learning_rate = 1e-3
    c.optim.schedule = 'cosine'
  if name == 'cifar10':
    c.data.name = 'cifar10'
    c.model = classifier_config('resnet')
    c.attack.eps = 8 / 255
    c.attack.step_size = 2 / 255
    c.attack.train_steps = 10
    c.robustness.eps = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 1.0)
    c.robustness.l2_eps = (0.25, 0.5, 1.0, 60.0)
    c.num_steps = 40000
    c.batch_size = 128
    c.optim.name = 'momentum'
    c.optim.learning_rate = 0.1
    c.optim.schedule = 'cosine'
  if name == 'tiny':
    c.data.name = 'digits'
    c.data.train_size = 256
    c.model.features = (4, 8)
    c.model.dense = 16
    c.attack.eps = 0.1
    c.attack.train_steps = 3
    c.attack.eval_steps = 3
    c.robustness.eps = (0.1, 1.0)
    c.robustness.l2_eps = (10.0,)
    c.robustness.pgd_steps = 3
    c.robustness.apgd_steps = 6
    c.robustness.square_queries = 20
    c.robustness.eot_examples = 16
    c.robustness.eot_samples = 2
    set_tiny_schedule(c)
  return c
