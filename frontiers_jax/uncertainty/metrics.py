"""Scoring uncertainty: calibration, out-of-distribution separation, entropy.

- Calibration: a classifier is calibrated when, among the inputs it answers
  with confidence c, a fraction c is right. The expected calibration error
  (Naeini et al. 2015; Guo et al. 2017, eq. 3) bins confidences and averages
  the gap |accuracy - confidence| over bins, weighted by their sizes; the same
  bins, drawn as bars, are the reliability diagram.
- OOD detection: an uncertainty score should be higher on inputs unlike the
  training data. AUROC is the probability that a random out-of-distribution
  input scores higher than a random in-distribution one (ties count one half),
  the Mann-Whitney U statistic divided by the number of pairs.
- Entropy decomposition for M samples of a predictive distribution (ensemble
  members, MC-dropout passes; Houlsby et al. 2011, Depeweg et al. 2018):
  total H[mean_m p_m] = expected E_m H[p_m] (aleatoric: each model is unsure)
  + mutual information (epistemic: the models disagree).

Shapes: N examples, K classes, M samples, B bins.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import entr

# --- Calibration ---------------------------------------------------------------


class ReliabilityBins(NamedTuple):
  """Per confidence bin: mean confidence, accuracy (both 0 for an empty bin)
  and the number of examples, each [B]."""
  confidence_B: jax.Array
  accuracy_B: jax.Array
  count_B: jax.Array


def reliability_bins(probs_NxK: jax.Array, labels_N: jax.Array,
                     num_bins: int = 15) -> ReliabilityBins:
  """Bins the confidence max_k p_k into `num_bins` equal-width bins of [0, 1].

  Bin b holds confidences in (b / B, (b + 1) / B] (Guo et al. 2017, section 2);
  a confidence of exactly 0 goes to bin 0. An example is correct when its
  argmax equals its label.
  """
  confidence_N = jnp.max(probs_NxK, axis=-1)
  correct_N = (jnp.argmax(probs_NxK, axis=-1) == labels_N).astype(confidence_N.dtype)
  bin_N = jnp.clip(jnp.ceil(confidence_N * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  per_bin = lambda v_N: jnp.zeros(num_bins, v_N.dtype).at[bin_N].add(v_N)
  count_B = per_bin(jnp.ones_like(confidence_N))
  safe_B = jnp.maximum(count_B, 1)
  return ReliabilityBins(per_bin(confidence_N) / safe_B, per_bin(correct_N) / safe_B,
                         count_B.astype(jnp.int32))


def expected_calibration_error(probs_NxK: jax.Array, labels_N: jax.Array,
                               num_bins: int = 15) -> jax.Array:
  """ECE = sum_b (n_b / N) |accuracy_b - confidence_b| over the equal-width
  bins of `reliability_bins` (Guo et al. 2017, eq. 3). 0 is perfect; with the
  default 15 bins it is the number usually reported for CIFAR/ImageNet."""
  bins = reliability_bins(probs_NxK, labels_N, num_bins)
  weight_B = bins.count_B / labels_N.shape[0]
  return jnp.sum(weight_B * jnp.abs(bins.accuracy_B - bins.confidence_B))


# --- Out-of-distribution detection --------------------------------------------


def auroc(negative_scores, positive_scores) -> float:
  """Area under the ROC curve for telling positives from negatives by score.

  Equals P(score_pos > score_neg) + 1/2 P(score_pos = score_neg) over all
  pairs, computed from ranks (Mann-Whitney): pool the scores, give each its
  rank (1-based; tied scores share the mean of their ranks), then
  U = sum of the positives' ranks - P (P + 1) / 2 and AUROC = U / (N P).
  For OOD detection the positives are the out-of-distribution scores.
  Host-side numpy in float64 (sorting N + P scores), not jittable.
  """
  negative = np.asarray(negative_scores, np.float64).ravel()
  positive = np.asarray(positive_scores, np.float64).ravel()
  pooled = np.concatenate([negative, positive])
  _, group, group_size = np.unique(pooled, return_inverse=True, return_counts=True)
  # The tie group g occupies ranks end_g - size_g + 1 .. end_g; its mean rank:
  group_rank = np.cumsum(group_size) - (group_size - 1) / 2
  positive_rank_sum = group_rank[group[negative.size:]].sum()
  u = positive_rank_sum - positive.size * (positive.size + 1) / 2
  return float(u / (negative.size * positive.size))


# --- Entropy and its decomposition --------------------------------------------


def entropy(probs_xK: jax.Array) -> jax.Array:
  """Shannon entropy -sum_k p_k log p_k in nats, [...]; 0 log 0 = 0."""
  return jnp.sum(entr(probs_xK), axis=-1)


class SampleUncertainty(NamedTuple):
  """What M predictive samples say about each example."""
  mean_NxK: jax.Array      # mean prediction, mean_m p_m
  total_N: jax.Array       # H[mean_m p_m]
  aleatoric_N: jax.Array   # expected entropy E_m H[p_m]
  epistemic_N: jax.Array   # mutual information = total - aleatoric


def sample_uncertainty(probs_MxNxK: jax.Array) -> SampleUncertainty:
  """Decomposes the uncertainty of M sampled predictions (ensemble members or
  MC-dropout passes) into aleatoric and epistemic parts.

  The mutual information between the prediction and the model, I = H[E_m p_m]
  - E_m H[p_m] (the BALD score of Houlsby et al. 2011; Depeweg et al. 2018), is
  >= 0 by concavity of H and 0 exactly when all samples agree; it is clipped at
  0 against rounding.
  """
  mean_NxK = jnp.mean(probs_MxNxK, axis=0)
  total_N = entropy(mean_NxK)
  aleatoric_N = jnp.mean(entropy(probs_MxNxK), axis=0)
  return SampleUncertainty(mean_NxK, total_N, aleatoric_N,
                           jnp.maximum(total_N - aleatoric_N, 0.0))
