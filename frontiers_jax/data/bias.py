"""Digits on coloured backgrounds: a data set with a spurious attribute.

Each grey digit is drawn as white strokes on a background of one of ten
colours; the colour index is the example's `attribute`. In the training split
the colour agrees with the label (`attribute == label`, "bias-aligned") for a
fraction `aligned_fraction` of the examples; the others ("bias-conflicting")
take one of the other nine colours, uniformly. A fraction of 1/10 makes the
colour independent of the label: every colour is then equally likely whatever
the label, which is how the test split is drawn. A model that learns "colour
means class" scores well on aligned examples and badly on conflicting ones.

The construction follows the "Colored MNIST" benchmarks of the debiasing
literature (e.g. Nam et al. 2020, who colour the strokes instead of the
background). Everything here is numpy, deterministic in the seed.
"""

import numpy as np

NUM_CLASSES = 10
# One background colour per class (RGB in [0, 1]): saturated and mid-bright,
# so that the white strokes stay visible on each.
PALETTE = np.array([
    [0.85, 0.10, 0.10],  # 0 red
    [0.10, 0.60, 0.15],  # 1 green
    [0.15, 0.25, 0.85],  # 2 blue
    [0.80, 0.70, 0.05],  # 3 yellow
    [0.75, 0.10, 0.75],  # 4 magenta
    [0.05, 0.65, 0.70],  # 5 teal
    [0.95, 0.50, 0.00],  # 6 orange
    [0.45, 0.20, 0.65],  # 7 purple
    [0.50, 0.30, 0.10],  # 8 brown
    [0.45, 0.45, 0.45],  # 9 grey
], np.float32)
COLOUR_NAMES = ('red', 'green', 'blue', 'yellow', 'magenta', 'teal', 'orange',
                'purple', 'brown', 'grey')


def draw_attributes(labels: np.ndarray, aligned_fraction: float,
                    rng: np.random.Generator) -> np.ndarray:
  """A colour index per label: the label's own colour with probability
  `aligned_fraction`, else one of the other nine, uniformly."""
  n = len(labels)
  aligned = rng.random(n) < aligned_fraction
  other = (labels + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES
  return np.where(aligned, labels, other).astype(np.int32)


def colourize(grey_NxHxWx1: np.ndarray, attributes: np.ndarray) -> np.ndarray:
  """White strokes on the attribute's background: uint8 [N, H, W, 3].

  `grey` is uint8 stroke intensity g in 0..255; each pixel becomes
  g * white + (1 - g) * background.
  """
  g = grey_NxHxWx1.astype(np.float32) / 255.0
  background = PALETTE[attributes][:, None, None, :]
  rgb = g + (1.0 - g) * background
  return np.round(rgb * 255.0).astype(np.uint8)


def make_split(split: dict, aligned_fraction: float, seed: int, stream: int) -> dict:
  """One split of grey digits (uint8 `image` [N, H, W, 1], `label`) with
  coloured backgrounds: `image` uint8 [N, H, W, 3], `label`, `attribute`.

  Deterministic in (seed, stream): give each split its own stream.
  """
  labels = np.asarray(split['label'], np.int32)
  rng = np.random.default_rng((seed, stream))
  attributes = draw_attributes(labels, aligned_fraction, rng)
  return {'image': colourize(split['image'], attributes), 'label': labels,
          'attribute': attributes}


def group_weights(labels: np.ndarray, attributes: np.ndarray) -> np.ndarray:
  """Per-example weights inversely proportional to the training frequency of
  the example's (label, attribute) group, scaled to mean 1 over the examples:
  every group present then carries the same total weight. Uses the attribute.
  """
  groups = labels.astype(np.int64) * NUM_CLASSES + attributes
  counts = np.bincount(groups, minlength=NUM_CLASSES * NUM_CLASSES)
  present = np.count_nonzero(counts)
  return (len(labels) / (present * counts[groups])).astype(np.float32)
