"""A PyTorch twin of `frontiers_jax.models.SmallCNN`, with weights from flax.

The twin computes the same function as the flax model: per feature size a 3x3
convolution with SAME padding (stride 1, so one pixel of zeros on each side),
a ReLU and a 2x2 max pool (odd edges cropped, as `max_pool_2x2` does); then
flatten, Dense-ReLU and a linear readout. Copy the flax parameters in with
`load_flax_params` and the two models give the same logits up to float32
rounding, the same cross-entropy and, under the same optimizer, the same
parameters after every step.

Layouts. Both models take NHWC float32 images in [0, 1]; the twin permutes to
NCHW for `torch.nn.Conv2d` and back to NHWC before flattening, so the flatten
order is flax's (h, w, c) and the first Dense matrix is copied as is, only
transposed. (The other choice, flattening NCHW and permuting the rows of the
Dense matrix, saves one permute but makes the weight copy depend on the image
shape.) Parameters differ only in axis order:

  flax Conv kernel  [kh, kw, in, out]  <->  torch Conv2d weight [out, in, kh, kw]
  flax Dense kernel [in, out]          <->  torch Linear weight [out, in]

and both convolutions are cross-correlations (no kernel flip), so a
permutation of axes is the whole conversion, exact in both directions.

Benchmark sizes (configs/adversarial.py): the `mnist` variant's model, the
classifier_config('cnn') default conv32-conv64-dense256 on 28x28x1 with batch
128, is the benchmark's small CNN; the Madry et al. (2018) variants
(`mnist_pgd`, `mnist_pgd_cpu`, `mnist_trades`) widen the Dense layer to 1024.
Build either with `from_module(create_classifier(config.model, 10))`.
"""

from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from frontiers_jax.bench import weights
from frontiers_jax.models import SmallCNN

Params = Mapping[str, Mapping[str, Any]]


class TorchSmallCNN(torch.nn.Module):
  """[conv3x3-ReLU-maxpool2] per feature size, then Dense-ReLU and a readout.

  Unlike flax, torch fixes the first Dense layer's input width at
  construction, so the image shape [H, W, C] is an argument.
  """

  def __init__(self, features: Sequence[int] = (32, 64), dense: int = 256,
               num_outputs: int = 10, image_shape: Sequence[int] = (28, 28, 1)):
    super().__init__()
    h, w, c = image_shape
    self.convs = torch.nn.ModuleList()
    for f in features:
      self.convs.append(torch.nn.Conv2d(c, f, kernel_size=3, padding=1))
      h, w, c = h // 2, w // 2, f
    self.hidden = torch.nn.Linear(h * w * c, dense)
    self.readout = torch.nn.Linear(dense, num_outputs)

  @classmethod
  def from_module(cls, model: SmallCNN,
                  image_shape: Sequence[int] = (28, 28, 1)) -> 'TorchSmallCNN':
    """A twin of `model`'s architecture (fresh torch weights: load them next)."""
    return cls(tuple(model.features), model.dense, model.num_outputs, image_shape)

  def forward(self, x_BxHxWxC: torch.Tensor) -> torch.Tensor:
    """Logits [B, num_outputs] of NHWC images, as `SmallCNN.__call__`."""
    x = x_BxHxWxC.permute(0, 3, 1, 2)  # NCHW for Conv2d
    for conv in self.convs:
      x = F.relu(F.max_pool2d(conv(x), 2))  # floor mode: odd edges cropped
    x = x.permute(0, 2, 3, 1).flatten(1)  # flatten in flax's (h, w, c) order
    return self.readout(F.relu(self.hidden(x)))


def _layers(torch_model: TorchSmallCNN) -> list[tuple[str, torch.nn.Module]]:
  """(flax module name, torch layer) pairs, in flax's auto-naming order."""
  pairs = [(f'Conv_{i}', conv) for i, conv in enumerate(torch_model.convs)]
  return pairs + [('Dense_0', torch_model.hidden), ('Dense_1', torch_model.readout)]


def _check_names(torch_model: TorchSmallCNN, params: Params) -> None:
  expected = [name for name, _ in _layers(torch_model)]
  if sorted(params) != sorted(expected):
    raise ValueError(f'flax params have modules {sorted(params)}, the twin {expected}')


def _copy(target: torch.Tensor, source: np.ndarray, where: str) -> None:
  """In-place copy with an exact shape check (`copy_` would broadcast)."""
  if tuple(target.shape) != source.shape:
    raise ValueError(f'{where}: flax shape {source.shape} does not fit torch '
                     f'{tuple(target.shape)}')
  target.copy_(torch.from_numpy(np.ascontiguousarray(source)))


@torch.no_grad()
def load_flax_params(torch_model: TorchSmallCNN, params: Params) -> TorchSmallCNN:
  """Copies flax `SmallCNN` params into `torch_model` (in place; returned too).

  Args:
    torch_model: a twin of the flax model's architecture.
    params: `model.init(...)['params']` (or the whole variables dict).

  Raises:
    ValueError: when module names or shapes do not match.
  """
  params = weights.unwrap(params)
  _check_names(torch_model, params)
  for name, layer in _layers(torch_model):
    kernel = np.array(params[name]['kernel'], dtype=np.float32)
    _copy(layer.weight, weights.kernel_to_torch(kernel), f'{name}/kernel')
    _copy(layer.bias, np.array(params[name]['bias'], dtype=np.float32), f'{name}/bias')
  return torch_model


def flax_params_from_torch(torch_model: TorchSmallCNN, like: Params | None = None) -> dict:
  """The twin's weights as a flax `SmallCNN` params tree of jax arrays.

  Args:
    torch_model: the twin.
    like: optional flax params to match: module names are checked and each
      leaf gets the dtype of `like`'s (float32 otherwise).

  Returns:
    {'Conv_i': {'kernel', 'bias'}, ..., 'Dense_0': ..., 'Dense_1': ...}.
  """
  like = weights.unwrap(like) if like is not None else None
  if like is not None:
    _check_names(torch_model, like)
  out = {}
  for name, layer in _layers(torch_model):
    leaves = {'kernel': weights.kernel_to_flax(layer.weight.detach().cpu().numpy()),
              'bias': layer.bias.detach().cpu().numpy()}
    out[name] = {k: jnp.asarray(v, like[name][k].dtype if like is not None else jnp.float32)
                 for k, v in leaves.items()}
  return out


def classifier_loss(model: torch.nn.Module, images: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
  """Mean softmax cross-entropy of a batch, as the classification workload's."""
  return F.cross_entropy(model(images), labels.long())
