"""Denoising diffusion (DDPM) on images, with classifier-free guidance.

  python launch/train.py --config=configs/diffusion.py:mnist --workdir=D
  python launch/sample.py --workdir=D --sampler=ddim --steps=50 --num=64 --label=7 --guidance=3
  python launch/evaluate.py --workdir=D     # FID, conditional accuracy, bits/dim

Variants: digits (default: the embedded 8x8 digits, minutes on a CPU), mnist,
fashion_mnist (class names as prompts: "a sneaker", "a bag"), mnist_cpu and
fashion_mnist_cpu (the same model trained for 2000 steps: 50 minutes to 2
hours of one CPU core here, by the machine), tiny (tests).
"""

import ml_collections

from frontiers_jax.config import base_config, set_tiny_schedule, variant

# The first is the default.
VARIANTS = {
    'digits': 'a small UNet on 8x8 digits: minutes on a CPU',
    'mnist': 'the UNet on MNIST, 10k steps (GPU)',
    'fashion_mnist': 'the UNet on Fashion-MNIST, 10k steps, class names as prompts (GPU)',
    'mnist_cpu': 'the MNIST model for 2000 steps (about an hour of CPU)',
    'fashion_mnist_cpu': 'the Fashion-MNIST model for 2000 steps (about an hour of CPU)',
    'tiny': 'a seconds-long run for tests',
}


def get_config(arg=None):
  c = base_config()
  c.workload = 'diffusion'
  c.data.train_size = 0

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = 'cosine'     # linear or cosine (beta_t)
  c.diffusion.num_timesteps = 1000    # T
  c.diffusion.objective = 'eps'       # eps, x0 or v: what the network predicts
  c.diffusion.conditional = True      # class labels in; guidance at sampling
  c.diffusion.label_dropout = 0.1     # P(label -> null) in training (Ho & Salimans 2022)
  c.diffusion.ema_decay = 0.999       # EMA of the parameters, used to sample and evaluate

  c.model = ml_collections.ConfigDict()  # frontiers_jax.diffusion.unet.UNet
  c.model.channels = 32
  c.model.channel_mults = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_levels = (2,)
  c.model.num_heads = 4
  c.model.dropout = 0.1
  c.model.num_groups = 8
  c.model.dtype = 'float32'           # compute dtype; 'bfloat16' keeps float32 parameters

  # Figures at the end of training, and the defaults of launch/sample.py.
  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = 'ddim'           # ddpm, ddim or dpm_solver
  c.sample.steps = 50                 # ddpm always takes all T
  c.sample.guidance = 3.0             # 1: plain conditional, 0: unconditional
  c.sample.eta = 0.0                  # ddim only
  c.sample.spacing = 'uniform'        # ddim, dpm_solver: uniform or quadratic in t

  # launch/evaluate.py. FID uses the features of a classifier trained here on
  # the same dataset (Inception features do not suit 28x28 grey images).
  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 10000          # samples per FID
  c.eval.batch_size = 500
  c.eval.guidance = 1.0               # guidance of the FID samples
  c.eval.fid_samplers = ('ddpm', 'ddim:10', 'ddim:20', 'ddim:50', 'ddim:100',
                         'dpm_solver:10', 'dpm_solver:20', 'dpm_solver:25')
  c.eval.accuracy_guidance = 3.0      # guided samples the classifier must label right
  c.eval.accuracy_samples = 100       # per class
  c.eval.bpd_examples = 1000          # test images in the bits/dim bound (0: skip)
  c.eval.classifier_steps = 2000      # the feature classifier's training steps

  name = variant(arg, VARIANTS)
  if name == 'digits':
    # About two minutes on a 2-core CPU: the demo's diffusion section.
    c.data.name = 'digits'
    c.model.channel_mults = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attention_levels = (1,)
    c.num_steps = 1500
    c.batch_size = 64
    c.eval_batch_size = 360
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optim.learning_rate = 2e-3
    c.eval.num_samples = 2000
    c.eval.classifier_steps = 1000
  if name in ('mnist', 'fashion_mnist', 'mnist_cpu', 'fashion_mnist_cpu'):
    c.data.name = name.replace('_cpu', '')
    c.num_steps = 10000
    c.batch_size = 64
    c.eval_batch_size = 1000
    c.log_every = 100
    c.eval_every = 2000
    c.checkpoint_every = 500
    c.optim.learning_rate = 1e-3
  if name in ('mnist_cpu', 'fashion_mnist_cpu'):
    c.num_steps = 2000  # 2.1 epochs of batch 64: 1.3-2.5 s a step here
    c.eval_every = 1000
    c.checkpoint_every = 250
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_steps = min(500, c.num_steps // 10)
  c.optim.clip_norm = 1.0
  if name == 'tiny':
    c.data.name = 'digits'
    c.data.train_size = 256
    c.diffusion.num_timesteps = 20
    c.model.channels = 8
    c.model.channel_mults = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attention_levels = (1,)
    c.model.num_heads = 2
    c.model.num_groups = 4
    c.sample.steps = 5
    c.eval.num_samples = 64
    c.eval.batch_size = 32
    c.eval.fid_samplers = ('ddpm', 'ddim:5', 'dpm_solver:5')
    c.eval.accuracy_samples = 4
    c.eval.bpd_examples = 16
    c.eval.classifier_steps = 12
    set_tiny_schedule(c)
    c.optim.warmup_steps = 2
  return c
