"""Image classification on the registry's datasets: the base of the
generalization and adversarial workloads.

Images enter the model as float32 in [0, 1], NHWC; labels are int32.
"""

import numpy as np
import jax.numpy as jnp
import optax

from frontiers_jax import config as config_lib
from frontiers_jax import data as data_lib
from frontiers_jax import models
from frontiers_jax.errors import check
from frontiers_jax.workloads.base import Workload, classification_sums, gradient_step

NUM_CLASSES = 10


def cross_entropy(logits_BxK, labels_B):
  """Mean cross-entropy and accuracy of a batch."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B).mean()
  return loss, {'accuracy': (jnp.argmax(logits_BxK, -1) == labels_B).mean()}


def load_images(config) -> dict:
  """The dataset's splits as float images in [0, 1]; train cut to train_size."""
  splits = {}
  for name, split in data_lib.load(config.data.name, config.data.dir).items():
    keep = slice(None, config.data.train_size or None) if name == 'train' else slice(None)
    splits[name] = {'image': split['image'][keep].astype(np.float32) / 255.0,
                    'label': split['label'][keep]}
  return splits


class Classification(Workload):
  """A classifier from `config.model` trained with cross-entropy."""

  def validate(self) -> None:
    c = self.config
    config_lib.check_choice(c, 'data.name', data_lib.IMAGE_DATASETS)
    config_lib.check_choice(c, 'model.name', models.MODELS)
    config_lib.check_dtype(c)
    check(c.data.train_size >= 0, 'config.data.train_size',
          f'{c.data.train_size} is not allowed', 'give 0 (all) or more')
    data_lib.check_available(c.data.name, c.data.dir)

  def load_images(self) -> dict:
    return load_images(self.config)

  def load_data(self) -> dict:
    return self.load_images()

  def build_model(self):
    return self.model()

  def model(self):
    return models.create_classifier(self.config.model, NUM_CLASSES)

  def create_state(self, rng, batch):
    model = self.model()
    params = model.init(rng, batch['image'][:1])['params']
    return self.new_state(model.apply, params)

  def train_step(self, state, batch, rng):
    del rng  # Deterministic model: no dropout.

    def loss_fn(params):
      return cross_entropy(state.apply_fn({'params': params}, batch['image']),
                           batch['label'])

    return gradient_step(state, loss_fn)

  def eval_step(self, state, batch):
    logits = state.apply_fn({'params': state.params}, batch['image'])
    return classification_sums(logits, batch['label'], batch['mask'])
