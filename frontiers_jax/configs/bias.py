"""Algorithmic bias: digits on coloured backgrounds, and debiasing.

  python launch/train.py --config=configs/bias.py:mnist --workdir=D
  python launch/train.py --config=configs/bias.py:mnist_dbvae --workdir=D

Variants: digits (default; the tour's), mnist, fashion_mnist, each also as
<name>_reweight and <name>_dbvae; tiny (tests). `method` in standard,
reweight, dbvae; `bias.aligned_fraction` is the share of training images
whose background colour is their label's colour (test colours are random).
"""

import ml_collections

from frontiers_jax.config import base_config, set_tiny_schedule, variant

_DATA = {'digits': '8x8 digits', 'mnist': 'MNIST', 'fashion_mnist': 'Fashion-MNIST'}
_METHODS = {'': 'standard training', '_reweight': 'reweighted by colour group',
            '_dbvae': 'DB-VAE debiasing'}
# The first is the default.
VARIANTS = {f'{d}{m}': f'{data} on coloured backgrounds, {method}'
            for d, data in _DATA.items() for m, method in _METHODS.items()}
VARIANTS['tiny'] = 'a seconds-long run for tests'


def get_config(arg=None):
  c = base_config()
  c.workload = 'bias'
  c.method = 'standard'
  c.bias = ml_collections.ConfigDict()
  c.bias.aligned_fraction = 0.95
  c.data.train_size = 0  # 0: the whole training split
  # One encoder for every method; DB-VAE adds the latent heads' decoder.
  c.model = ml_collections.ConfigDict()
  c.model.features = (16, 32)
  c.model.dense = 128
  c.model.latent_dim = 16
  c.dbvae = ml_collections.ConfigDict()
  c.dbvae.vae_weight = 1.0
  c.dbvae.kl_weight = 0.0005   # the 6.S191 lab's
  c.dbvae.bins = 10
  # The weight of an example is prod_d 1 / (Q_d + alpha) (Amini et al. 2019);
  # alpha sets how hard rare latent codes are favoured. Measured on MNIST with
  # 99 % aligned: alpha 0.3 draws about 70 % conflicting examples; the lab's
  # variant ('max' over dimensions, alpha 0.001) only 16 %, and the product
  # with alpha 0.001 draws conflicting examples only (digits: 100 %), a
  # handful of them over and over.
  c.dbvae.combine = 'product'
  c.dbvae.alpha = 0.3
  c.dbvae.pool_factor = 4      # each step draws batch_size rows from a pool this many times larger
  c.dbvae.first_refresh = 200  # steps before the first weights (the buffers fill)
  c.dbvae.refresh_every = 100

  name = variant(arg, VARIANTS)
  data, _, method = name.partition('_')
  if name.startswith('fashion_mnist'):
    data, method = 'fashion_mnist', name[len('fashion_mnist_'):]
  c.method = method or 'standard'
  if data == 'digits':
    c.data.name = 'digits'
    c.num_steps = 600
    c.batch_size = 64
    c.eval_batch_size = 360
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 600
    c.dbvae.first_refresh = 30  # a pool of 256 covers the 1437 images in 6 steps
    c.dbvae.refresh_every = 30
  if data in ('mnist', 'fashion_mnist'):
    c.data.name = data
    c.num_steps = 2000
    c.batch_size = 128
    c.eval_batch_size = 2000
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 1000
  if name == 'tiny':
    c.data.name = 'digits'
    c.data.train_size = 256
    c.model.features = (4,)
    c.model.dense = 16
    c.model.latent_dim = 4
    c.dbvae.pool_factor = 2
    c.dbvae.first_refresh = 4
    c.dbvae.refresh_every = 4
    set_tiny_schedule(c)
  return c
