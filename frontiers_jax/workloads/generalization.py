"""Rethinking generalization (Zhang et al. 2017, "Understanding deep learning
requires rethinking generalization").

The randomization test: train a standard classifier on data whose labels or
inputs were randomized, and watch it still fit the training set perfectly
while test accuracy falls to chance. `config.randomization` picks the point on
Zhang et al.'s spectrum (their section 2):

  none             the real data
  partial          each training label replaced, with probability
                   `config.corruption`, by a uniformly random class
  random_labels    every training label replaced by a random class
  shuffled_pixels  one fixed permutation of pixel positions, for all images
  random_pixels    a different random permutation for each image
  gaussian         images replaced by Gaussian noise with the data's mean and
                   standard deviation

Label randomization touches the training set only: test labels are real, so
test accuracy measures generalization. Input randomizations are applied to
the test images too (the same fixed permutation for shuffled_pixels).
The metric `eval_train/accuracy` is accuracy on the whole (randomized)
training set: how well the network *fits* what it was given.
"""

import numpy as np

from frontiers_jax import config as config_lib
from frontiers_jax import plots
from frontiers_jax.workloads.classification import NUM_CLASSES, Classification

RANDOMIZATIONS = ('none', 'partial', 'random_labels', 'shuffled_pixels',
                  'random_pixels', 'gaussian')
# Independent numpy streams (with the seed) for each kind of randomness.
_LABELS, _SHUFFLE, _PIXELS_TRAIN, _PIXELS_TEST, _NOISE_TRAIN, _NOISE_TEST = range(6)


def randomize(split: dict, kind: str, corruption: float, seed: int, train: bool,
              moments: tuple[float, float]) -> dict:
  """Applies randomization `kind` to one split (float images in [0, 1]).

  `moments` are the (mean, std) of the real training images, for `gaussian`.
  Deterministic in `seed`; returns new arrays.
  """
  image, label = split['image'], split['label']
  n = len(label)
  if kind in ('partial', 'random_labels') and train:
    rng = np.random.default_rng((seed, _LABELS))
    p = 1.0 if kind == 'random_labels' else corruption
    corrupt = rng.random(n) < p
    label = np.where(corrupt, rng.integers(0, NUM_CLASSES, n), label)
  elif kind == 'shuffled_pixels':  # The same permutation for train and test.
    perm = np.random.default_rng((seed, _SHUFFLE)).permutation(image[0, ..., 0].size)
    image = _permute_pixels(image, perm[None, :])
  elif kind == 'random_pixels':
    rng = np.random.default_rng((seed, _PIXELS_TRAIN if train else _PIXELS_TEST))
    perms = np.argsort(rng.random((n, image[0, ..., 0].size)), axis=1)
    image = _permute_pixels(image, perms)
  elif kind == 'gaussian':
    rng = np.random.default_rng((seed, _NOISE_TRAIN if train else _NOISE_TEST))
    mean, std = moments
    image = rng.normal(mean, std, image.shape).astype(np.float32)
  return {'image': image, 'label': label.astype(np.int32)}


def _permute_pixels(image_NxHxWxC: np.ndarray, perm: np.ndarray) -> np.ndarray:
  """Moves pixel positions (keeping channels together); `perm` is [N or 1, HW]."""
  n, h, w, c = image_NxHxWxC.shape
  flat = image_NxHxWxC.reshape(n, h * w, c)
  perm = np.broadcast_to(perm, (n, h * w))
  return np.take_along_axis(flat, perm[..., None], axis=1).reshape(n, h, w, c)


class Generalization(Classification):
  """A classifier trained on (partly) randomized data."""

  name = 'generalization'
  extra_eval_splits = ('train',)

  def validate(self) -> None:
    config_lib.check_choice(self.config, 'randomization', RANDOMIZATIONS)
    config_lib.check_range(self.config, 'corruption', 0.0, 1.0)
    super().validate()

  def load_data(self) -> dict:
    c = self.config
    splits = self.load_images()
    train_images = splits['train']['image']
    moments = (float(train_images.mean()), float(train_images.std()))
    return {name: randomize(split, c.randomization, c.corruption, c.seed,
                            name == 'train', moments)
            for name, split in splits.items()}

  def figures(self, state, data, history, fig_dir):
    title = (f'{self.config.data.name}, {self.config.model.name}, '
             f'randomization={self.config.randomization}')
    return [plots.learning_curves(history, title, f'{fig_dir}/learning_curves.png')]

  @staticmethod
  def sweep_figures(runs: dict[str, dict], fig_dir: str) -> list[str]:
    """Figures across the runs of a sweep (`runs[value] = {'summary', 'history',
    'config'}`): over randomizations, the bar chart and the learning curves;
    over corruption levels, steps to fit and test accuracy against the level."""
    if all(run['config']['randomization'] == 'partial' for run in runs.values()):
      levels = sorted(runs, key=float)
      return [plots.corruption_curve(
          [float(v) for v in levels], [steps_to_fit(runs[v]['history']) for v in levels],
          [runs[v]['summary']['final']['eval/accuracy'] for v in levels],
          f'{fig_dir}/corruption.png')]
    return [plots.randomization_bars(runs, f'{fig_dir}/randomization_bars.png'),
            plots.fit_curves(runs, f'{fig_dir}/fit_curves.png')]


def steps_to_fit(history: list[dict], threshold: float = 0.99) -> int | None:
  """First logged step whose whole-training-set accuracy reaches `threshold`."""
  for record in history:
    if record.get('eval_train/accuracy', 0.0) >= threshold:
      return record['step']
  return None
