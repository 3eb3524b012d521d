"""The debiasing VAE (Amini et al. 2019, "Uncovering and Mitigating Algorithmic
Bias through Learned Latent Structure", AAAI; the DB-VAE of MIT 6.S191's lab).

A classifier and a VAE share one encoder. Training minimizes the
classification loss plus the VAE loss, and draws its examples with
probability inversely proportional to how common their latent code is: the
VAE learns, without being told, which features vary (here, the background
colour), and examples in rare regions of the latent space are shown more
often. The attribute itself is never used.

Adapted from binary face detection to ten classes: the VAE loss applies to
every example (the lab's applies to faces only, the class whose bias it
corrects), and the latent density is estimated *per class*. Over all classes
each colour is equally common (one colour per class, balanced classes), so a
global histogram cannot see that a red 3 is rare; among the 3s it is.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from frontiers_jax import models

COMBINE = ('product', 'max')


class Encoder(nn.Module):
  """Conv3x3-pool-ReLU per feature size, a dense layer, then three heads:
  class logits, and the mean and log-variance of the latent code."""
  features: Sequence[int]
  dense: int
  latent_dim: int
  num_classes: int

  @nn.compact
  def __call__(self, x_BxHxWxC):
    x = x_BxHxWxC
    for f in self.features:
      conv = models.conv3x3_as_matmul if x.shape[-1] < 4 else models.conv3x3_hwio_backward
      x = nn.relu(models.max_pool_2x2(nn.Conv(f, (3, 3), conv_general_dilated=conv)(x)))
    h_BxF = nn.relu(nn.Dense(self.dense)(x.reshape(x.shape[0], -1)))
    logits_BxK = nn.Dense(self.num_classes, name='classifier')(h_BxF)
    mu_BxD = nn.Dense(self.latent_dim, name='mu')(h_BxF)
    logvar_BxD = nn.Dense(self.latent_dim, name='logvar')(h_BxF)
    return logits_BxK, mu_BxD, logvar_BxD


class Decoder(nn.Module):
  """Latent code -> image in [0, 1]: a dense layer to a quarter-size grid,
  then twice nearest-neighbour upsampling and a conv (transposed convs are
  slow on XLA:CPU)."""
  shape: tuple[int, int, int]  # H, W, C
  features: Sequence[int]

  @nn.compact
  def __call__(self, z_BxD):
    h, w, c = self.shape
    sizes = [((h + 3) // 4, (w + 3) // 4), ((h + 1) // 2, (w + 1) // 2), (h, w)]
    f0, f1 = self.features[-1], self.features[0]
    x = nn.relu(nn.Dense(sizes[0][0] * sizes[0][1] * f0)(z_BxD))
    x = x.reshape(-1, *sizes[0], f0)
    for size, f in ((sizes[1], f1), (sizes[2], c)):
      # Nearest-neighbour 2x upsampling as a repeat (jax.image.resize's gather
      # is slow on XLA:CPU), cropped to the target size.
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)[:, :size[0], :size[1]]
      x = nn.Conv(f, (3, 3), conv_general_dilated=models.conv3x3_hwio_backward)(x)
      x = nn.relu(x) if f != c else nn.sigmoid(x)
    return x


class DBVAE(nn.Module):
  """The shared encoder, and (with `decoder`) the VAE decoder."""
  shape: tuple[int, int, int]
  features: Sequence[int] = (16, 32)
  dense: int = 128
  latent_dim: int = 16
  num_classes: int = 10
  decoder: bool = True

  def setup(self):
    self.encoder = Encoder(self.features, self.dense, self.latent_dim, self.num_classes)
    if self.decoder:
      self.decode = Decoder(self.shape, self.features)

  def __call__(self, x_BxHxWxC):
    """(logits, mu, logvar)."""
    return self.encoder(x_BxHxWxC)

  def reconstruct(self, x_BxHxWxC, key):
    """(logits, mu, logvar, x_hat) with z = mu + sigma * eps (the
    reparameterization of Kingma & Welling 2014)."""
    logits, mu, logvar = self.encoder(x_BxHxWxC)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
    return logits, mu, logvar, self.decode(z)


def kl_divergence(mu_BxD, logvar_BxD):
  """KL(N(mu, diag(exp(logvar))) || N(0, I)) per example, in closed form:
  0.5 * sum(exp(logvar) + mu^2 - 1 - logvar) (Kingma & Welling 2014, app. B)."""
  return 0.5 * jnp.sum(jnp.exp(logvar_BxD) + mu_BxD ** 2 - 1.0 - logvar_BxD, axis=-1)


def vae_loss(x_BxHxWxC, x_hat_BxHxWxC, mu_BxD, logvar_BxD, kl_weight: float):
  """Per-example VAE loss as in the 6.S191 lab: the mean absolute pixel error
  plus `kl_weight` times the KL divergence. Returns (loss, reconstruction, kl)."""
  reconstruction = jnp.mean(jnp.abs(x_BxHxWxC - x_hat_BxHxWxC), axis=(1, 2, 3))
  kl = kl_divergence(mu_BxD, logvar_BxD)
  return reconstruction + kl_weight * kl, reconstruction, kl


def latent_weights(mu_NxD, label_N, num_classes: int, bins: int, alpha: float,
                   combine: str = 'product'):
  """Sampling weights from per-class, per-dimension histograms of latent means.

  For the examples of class c (those with `label == c`; label -1 marks an
  example not seen yet) and each latent dimension d, a histogram of `bins`
  equal bins between the class's min and max gives Q_d, the fraction of the
  class in each bin. An example's weight is
    product:  prod_d 1 / (Q_d(z_d) + alpha)   (Amini et al. 2019, eq. 6)
    max:      max_d  of 1 / (Q_d(z_d) + alpha), each dimension first
              normalized to sum 1 over the class (the 6.S191 lab's variant)
  scaled so that the weights of each class average 1 (classes keep their
  frequency; unseen examples get 1). `alpha` bounds the largest ratio.
  """
  seen_N = label_N >= 0
  onehot_NxK = (label_N[:, None] == jnp.arange(num_classes)).astype(mu_NxD.dtype)
  big = jnp.finfo(mu_NxD.dtype).max
  # Each example's class's range, per dimension.
  lo_KxD = jnp.min(jnp.where(onehot_NxK[:, :, None] > 0, mu_NxD[:, None], big), axis=0)
  hi_KxD = jnp.max(jnp.where(onehot_NxK[:, :, None] > 0, mu_NxD[:, None], -big), axis=0)
  cls_N = jnp.maximum(label_N, 0)
  lo, hi = lo_KxD[cls_N], hi_KxD[cls_N]
  width = jnp.maximum(hi - lo, 1e-12)
  bin_NxD = jnp.clip(jnp.floor((mu_NxD - lo) / width * bins), 0, bins - 1).astype(jnp.int32)
  bin_onehot_NxDxB = jax.nn.one_hot(bin_NxD, bins, dtype=mu_NxD.dtype)
  counts_KxDxB = jnp.einsum('nk,ndb->kdb', onehot_NxK, bin_onehot_NxDxB)
  class_size_K = jnp.maximum(onehot_NxK.sum(0), 1.0)
  q_KxDxB = counts_KxDxB / class_size_K[:, None, None]
  q_NxD = jnp.take_along_axis(q_KxDxB[cls_N], bin_NxD[..., None], axis=-1)[..., 0]
  inverse_NxD = 1.0 / (q_NxD + alpha)
  if combine == 'product':
    log_w = jnp.sum(jnp.log(inverse_NxD), axis=-1)
    # Subtract the class's largest log-weight before exponentiating (no overflow).
    top_K = jnp.max(jnp.where(onehot_NxK > 0, log_w[:, None], -big), axis=0)
    w_N = jnp.exp(log_w - top_K[cls_N])
  else:
    totals_KxD = jnp.einsum('nk,nd->kd', onehot_NxK, inverse_NxD)
    w_N = jnp.max(inverse_NxD / totals_KxD[cls_N], axis=-1)
  w_N = jnp.where(seen_N, w_N, 0.0)
  mean_K = (onehot_NxK * w_N[:, None]).sum(0) / class_size_K
  return jnp.where(seen_N, w_N / mean_K[cls_N], 1.0)
