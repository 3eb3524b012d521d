"""Evidential deep learning: one forward pass that outputs a distribution over
distributions, so a network can say both "the data is noisy here" (aleatoric)
and "I have seen little data like this" (epistemic).

Regression (Amini et al. 2020, "Deep Evidential Regression"). The network
outputs the four parameters of a Normal-Inverse-Gamma (NIG) prior over the
mean and variance of a Gaussian likelihood:

  y ~ N(mu, sigma^2),  mu ~ N(gamma, sigma^2 / nu),  sigma^2 ~ Gamma^-1(alpha, beta)

Integrating mu and sigma^2 out gives a Student-t marginal for y (eq. 7, 8):

  y ~ St(loc=gamma, scale^2=beta (1 + nu) / (nu alpha), df=2 alpha)

whose negative log-likelihood is the training loss, plus a regularizer that
removes evidence where the prediction is wrong (eq. 9). Predictions (eq. 5):

  E[mu] = gamma,   E[sigma^2] = beta / (alpha - 1)  (aleatoric),
  Var[mu] = beta / (nu (alpha - 1))                  (epistemic).

Classification (Sensoy et al. 2018, "Evidential Deep Learning to Quantify
Classification Uncertainty"). The network outputs non-negative evidence e_k per
class; alpha = e + 1 parametrizes a Dirichlet over class probabilities, with
expected probabilities alpha / S and uncertainty mass u = K / S, S = sum_k
alpha_k (section 3). The losses are Bayes risks under that Dirichlet
(section 4, eq. 4 and 5) plus an annealed KL to the uniform Dirichlet on the
evidence given to wrong classes.

Shapes: `...` is any batch shape; K the number of classes.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln

# --- Evidential regression (Amini et al. 2020) -------------------------------

NIG_FLOOR = 1e-6


class NIG(NamedTuple):
  """Normal-Inverse-Gamma parameters, each of shape [...]: gamma real, nu > 0,
  alpha > 1, beta > 0."""
  gamma: jax.Array
  nu: jax.Array
  alpha: jax.Array
  beta: jax.Array


def nig_head(raw_x4: jax.Array, floor: float = NIG_FLOOR) -> NIG:
  """Maps raw outputs [..., 4] to NIG parameters (Amini et al. 2020).

  gamma is the raw output itself; nu, alpha - 1 and beta are softplus of theirs
  plus `floor`. The floor keeps the NLL finite: softplus(-1e4) is exactly 0 in
  float32, and at nu = 0 the term log(1 / nu) is infinite; at beta = 0 the
  Student-t has zero scale and its density at y = gamma is unbounded; at
  alpha = 1 the aleatoric variance beta / (alpha - 1) divides by zero.
  """
  gamma, nu_raw, alpha_raw, beta_raw = jnp.moveaxis(raw_x4, -1, 0)
  positive = lambda x: jax.nn.softplus(x) + floor
  return NIG(gamma=gamma, nu=positive(nu_raw), alpha=1 + positive(alpha_raw),
             beta=positive(beta_raw))


def log_gamma_ratio(a: jax.Array) -> jax.Array:
  """log Gamma(a + 1/2) - log Gamma(a), for a >= 1, accurate in float32.

  Subtracting two lgamma values cancels catastrophically for large a: in
  float32, jax gives 6.0 instead of 6.91 at a = 1e6 and 0 at a = 1e7, and the
  gradient psi(a + 1/2) - psi(a) is 0 instead of 5e-7 at a = 1e6. For a >= 3
  we use the asymptotic series (from Stirling's series of both terms)

    1/2 log a - 1/(8a) + 1/(192 a^3) - 1/(640 a^5) + 17/(14336 a^7),

  off by less than 1e-7 there (float64: from a >= 30, off by < 1e-16); below,
  the direct difference is accurate.
  """
  # Where the series' error (< 1e-7 at 3, ~1e-3 / a^9) is below the dtype's precision.
  threshold = 30.0 if a.dtype == jnp.float64 else 3.0
  big = a >= threshold
  a_small = jnp.where(big, 1.0, a)  # keeps the unused branch's gradient finite
  a_big = jnp.where(big, a, threshold)
  direct = gammaln(a_small + 0.5) - gammaln(a_small)
  z = 1 / a_big
  series = 0.5 * jnp.log(a_big) - z / 8 + z**3 / 192 - z**5 / 640 + 17 * z**7 / 14336
  return jnp.where(big, series, direct)


def nig_nll(nig: NIG, y: jax.Array) -> jax.Array:
  """Negative log-likelihood of y under the NIG's Student-t marginal, shape [...].

  Amini et al. 2020, eq. 8, with Omega = 2 beta (1 + nu):

    NLL = 1/2 log(pi / nu) - alpha log(Omega)
          + (alpha + 1/2) log(nu (y - gamma)^2 + Omega)
          + log Gamma(alpha) - log Gamma(alpha + 1/2).

  Rearranged so that no large terms cancel, and nothing overflows before
  (y - gamma)^2 itself does (|y - gamma| > 1.8e19 in float32):
  -alpha log Omega + (alpha + 1/2) log(nu r^2 + Omega) equals
  1/2 log Omega + (alpha + 1/2) log1p(q) with q = nu r^2 / Omega, and
  1/2 log(pi / nu) + 1/2 log Omega = 1/2 log(2 pi beta (1 + 1/nu)). So

    NLL = 1/2 [log(2 pi) + log beta + log1p(1 / nu)]
          + (alpha + 1/2) log1p(q) - [log Gamma(alpha + 1/2) - log Gamma(alpha)],

  minus the Student-t log-density with df = 2 alpha and df * scale^2 = Omega / nu.
  """
  q = (y - nig.gamma)**2 / (2 * nig.beta * (1 + 1 / nig.nu))
  return (0.5 * (jnp.log(2 * jnp.pi) + jnp.log(nig.beta) + jnp.log1p(1 / nig.nu))
          + (nig.alpha + 0.5) * jnp.log1p(q) - log_gamma_ratio(nig.alpha))


def nig_regularizer(nig: NIG, y: jax.Array) -> jax.Array:
  """Evidence regularizer |y - gamma| (2 nu + alpha), shape [...] (Amini et al.
  2020, eq. 9): the error scaled by the total evidence. The NLL alone does not
  lower the evidence on a wrong prediction; this term does, so errors come
  with high uncertainty."""
  return jnp.abs(y - nig.gamma) * (2 * nig.nu + nig.alpha)


def evidential_regression_loss(nig: NIG, y: jax.Array, coeff: float) -> jax.Array:
  """Scalar loss mean(NLL) + coeff * mean(regularizer) (Amini et al. 2020,
  eq. 10; the paper tunes coeff, e.g. 1e-2)."""
  return jnp.mean(nig_nll(nig, y)) + coeff * jnp.mean(nig_regularizer(nig, y))


def nig_predictions(nig: NIG) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(mean, aleatoric, epistemic), each [...] (Amini et al. 2020, eq. 5):
  E[mu] = gamma, E[sigma^2] = beta / (alpha - 1), Var[mu] = beta / (nu (alpha - 1)).

  Their sum is the variance of the Student-t marginal of y.
  """
  aleatoric = nig.beta / (nig.alpha - 1)
  return nig.gamma, aleatoric, aleatoric / nig.nu


# --- Evidential classification (Sensoy et al. 2018) --------------------------

EXP_CLIP = 10.0
EVIDENCE = {
    # Smooth, gradient everywhere, no overflow: the default.
    'softplus': jax.nn.softplus,
    # The paper's choice; a class whose logit is negative gets no gradient.
    'relu': jax.nn.relu,
    # Logits clipped at 10 first (evidence <= 22026): exp(89) overflows float32.
    'exp': lambda logits: jnp.exp(jnp.minimum(logits, EXP_CLIP)),
}


def dirichlet_alpha(logits_xK: jax.Array, evidence: str = 'softplus') -> jax.Array:
  """Dirichlet parameters alpha = evidence(logits) + 1, [..., K] (Sensoy et al.
  2018, section 3). `evidence` names a function of `EVIDENCE`; softplus is the
  default because relu gives no gradient to negative logits and exp overflows."""
  return EVIDENCE[evidence](logits_xK) + 1


def dirichlet_probs(alpha_xK: jax.Array) -> jax.Array:
  """Expected class probabilities alpha / S under Dir(alpha), [..., K]."""
  return alpha_xK / jnp.sum(alpha_xK, axis=-1, keepdims=True)


def dirichlet_uncertainty(alpha_xK: jax.Array) -> jax.Array:
  """Uncertainty mass u = K / S in (0, 1], [...] (Sensoy et al. 2018, section 3):
  1 when there is no evidence at all, towards 0 as evidence grows."""
  return alpha_xK.shape[-1] / jnp.sum(alpha_xK, axis=-1)


def mse_loss(alpha_xK: jax.Array, labels: jax.Array) -> jax.Array:
  """Expected squared error E_{p ~ Dir(alpha)} ||y - p||^2, [...] (Sensoy et al.
  2018, eq. 5), y the one-hot of integer `labels` [...]:

    sum_k (y_k - p_k)^2 + p_k (1 - p_k) / (S + 1),  p = alpha / S,

  the squared error of the mean plus the Dirichlet's variance.
  """
  y_xK = jax.nn.one_hot(labels, alpha_xK.shape[-1], dtype=alpha_xK.dtype)
  s = jnp.sum(alpha_xK, axis=-1, keepdims=True)
  p_xK = alpha_xK / s
  return jnp.sum((y_xK - p_xK)**2 + p_xK * (1 - p_xK) / (s + 1), axis=-1)


def digamma_loss(alpha_xK: jax.Array, labels: jax.Array) -> jax.Array:
  """Expected cross-entropy E_{p ~ Dir(alpha)} [-log p_label] = psi(S) -
  psi(alpha_label), [...] (Sensoy et al. 2018, eq. 4)."""
  s = jnp.sum(alpha_xK, axis=-1)
  alpha_label = jnp.take_along_axis(alpha_xK, labels[..., None], axis=-1)[..., 0]
  return digamma(s) - digamma(alpha_label)


def kl_to_uniform(alpha_xK: jax.Array) -> jax.Array:
  """KL(Dir(alpha) || Dir(1, ..., 1)), [...] (Sensoy et al. 2018, section 4):

    log Gamma(S) - log Gamma(K) - sum_k log Gamma(alpha_k)
    + sum_k (alpha_k - 1) (psi(alpha_k) - psi(S)),

  zero at alpha = 1 (no evidence), growing with any evidence.
  """
  k = alpha_xK.shape[-1]
  s = jnp.sum(alpha_xK, axis=-1, keepdims=True)
  return (gammaln(s[..., 0]) - gammaln(float(k)) - jnp.sum(gammaln(alpha_xK), axis=-1)
          + jnp.sum((alpha_xK - 1) * (digamma(alpha_xK) - digamma(s)), axis=-1))


def kl_regularizer(alpha_xK: jax.Array, labels: jax.Array) -> jax.Array:
  """KL(Dir(alpha_tilde) || Dir(1)), [...], alpha_tilde = y + (1 - y) alpha: the
  true class's parameter is reset to 1, so only evidence for wrong classes is
  penalized (Sensoy et al. 2018, section 4)."""
  y_xK = jax.nn.one_hot(labels, alpha_xK.shape[-1], dtype=alpha_xK.dtype)
  return kl_to_uniform(y_xK + (1 - y_xK) * alpha_xK)


def annealing_coefficient(step, annealing_steps) -> jax.Array:
  """min(1, step / annealing_steps): the KL weight grows linearly from 0, so
  the network first learns to put evidence on the right class before being
  told to remove it from wrong ones (Sensoy et al. 2018 use epoch / 10)."""
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / annealing_steps)


CLASSIFICATION_LOSSES = {'mse': mse_loss, 'digamma': digamma_loss}


def evidential_classification_loss(alpha_xK: jax.Array, labels: jax.Array, step,
                                   annealing_steps, loss: str = 'mse') -> jax.Array:
  """Scalar loss mean(risk) + min(1, step / annealing_steps) * mean(KL
  regularizer), the risk named in `CLASSIFICATION_LOSSES` (Sensoy et al. 2018,
  section 4)."""
  risk = CLASSIFICATION_LOSSES[loss](alpha_xK, labels)
  return (jnp.mean(risk) + annealing_coefficient(step, annealing_steps)
          * jnp.mean(kl_regularizer(alpha_xK, labels)))
