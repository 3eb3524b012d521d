"""Figures of the experiments, written as PNG files (matplotlib, no display)."""

import math
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
  points = [(r['step'], r[key]) for r in history if key in r]
  return [s for s, _ in points], [v for _, v in points]


# -- Rethinking generalization -------------------------------------------------

def learning_curves(history: list[dict], title: str, path: str) -> str:
  """Train loss, and accuracy on the whole training set and on the test set."""
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
  ax_loss.plot(*_series(history, 'train/loss'), label='train loss (batch average)')
  ax_loss.set(xlabel='step', ylabel='cross-entropy', yscale='log')
  ax_loss.legend()
  ax_acc.plot(*_series(history, 'eval_train/accuracy'), label='training set (as trained)')
  ax_acc.plot(*_series(history, 'eval/accuracy'), label='test set')
  ax_acc.axhline(0.1, color='grey', linestyle=':', label='chance (10 classes)')
  ax_acc.set(xlabel='step', ylabel='accuracy', ylim=(0, 1.02))
  ax_acc.legend()
  fig.suptitle(title)
  return _save(fig, path)


def randomization_bars(runs: dict[str, dict], path: str) -> str:
  """The lecture's bar chart: train vs test accuracy per randomization."""
  names = list(runs)
  train = [runs[n]['summary']['final'].get('eval_train/accuracy', np.nan) for n in names]
  test = [runs[n]['summary']['final'].get('eval/accuracy', np.nan) for n in names]
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
  ax.bar(x - 0.2, train, 0.4, label='training accuracy')
  ax.bar(x + 0.2, test, 0.4, label='test accuracy')
  ax.axhline(0.1, color='grey', linestyle=':', label='chance')
  ax.set_xticks(x, [n.replace('_', ' ') for n in names], rotation=20)
  ax.set(ylabel='accuracy', ylim=(0, 1.22),
         title='Deep nets fit random data: train vs test accuracy')
  ax.legend(loc='upper center', ncol=3)
  return _save(fig, path)


def fit_curves(runs: dict[str, dict], path: str) -> str:
  """Training-set accuracy vs step for each randomization: fitting noise is
  possible, but slower."""
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
  for name, run in runs.items():
    ax_loss.plot(*_series(run['history'], 'train/loss'), label=name)
    ax_acc.plot(*_series(run['history'], 'eval_train/accuracy'), label=name)
  ax_loss.set(xlabel='step', ylabel='train loss', yscale='log')
  ax_acc.set(xlabel='step', ylabel='accuracy on the training set', ylim=(0, 1.02))
  ax_acc.legend(fontsize=8)
  fig.suptitle('Learning curves per randomization')
  return _save(fig, path)


def corruption_curve(levels: Sequence[float], steps: Sequence[float | None],
                     test_accuracy: Sequence[float], path: str) -> str:
  """Zhang et al.'s figure 1b/c: time to fit and test accuracy vs label noise."""
  fig, (ax_steps, ax_test) = plt.subplots(1, 2, figsize=(10, 3.6))
  ax_steps.plot(levels, [np.nan if s is None else s for s in steps], 'o-')
  ax_steps.set(xlabel='fraction of labels corrupted', ylabel='steps to 99 % train accuracy',
               title='Time to fit the training set')
  ax_test.plot(levels, test_accuracy, 'o-', color='C1')
  ax_test.axhline(0.1, color='grey', linestyle=':', label='chance')
  ax_test.set(xlabel='fraction of labels corrupted', ylabel='test accuracy',
              ylim=(0, 1), title='Generalization')
  ax_test.legend()
  return _save(fig, path)


# -- Adversarial examples ------------------------------------------------------

def adversarial_examples(x, x_adv, probs, probs_adv, title: str, path: str) -> str:
  """The lecture's figure, one row per image: original (class, confidence) |
  perturbation (amplified to the full grey range) | adversarial example."""
  x, x_adv = np.asarray(x), np.asarray(x_adv)
  probs, probs_adv = np.asarray(probs), np.asarray(probs_adv)
  fig, axes = plt.subplots(len(x), 3, figsize=(6.6, 2.1 * len(x)), squeeze=False)
  for row, ax in enumerate(axes):
    delta = x_adv[row] - x[row]
    scale = max(float(np.abs(delta).max()), 1e-12)
    panels = [(x[row], probs[row], 'original'),
              (0.5 + 0.5 * delta / scale, None, f'perturbation (x{0.5 / scale:.0f})'),
              (x_adv[row], probs_adv[row], 'adversarial')]
    for axis, (image, p, name) in zip(ax, panels):
      axis.imshow(image.squeeze(), cmap='gray', vmin=0, vmax=1)
      label = name if p is None else f'{name}: {p.argmax()} ({p.max():.0%})'
      axis.set_title(label, fontsize=9)
      axis.set_xticks([])
      axis.set_yticks([])
  fig.suptitle(title)
  return _save(fig, path)


def robust_curves(history: list[dict], path: str) -> str:
  """Clean and robust test accuracy against training step."""
  fig, ax = plt.subplots(figsize=(6, 3.8))
  ax.plot(*_series(history, 'eval/accuracy'), 'o-', label='clean')
  ax.plot(*_series(history, 'eval/robust_accuracy'), 'o-', label='under PGD')
  ax.set(xlabel='step', ylabel='test accuracy', ylim=(0, 1.02))
  ax.legend()
  return _save(fig, path)


def eot_examples(rows: dict[str, np.ndarray], predictions: dict[str, np.ndarray],
                 label: int, title: str, path: str) -> str:
  """One image per row, seen under the same random transformations (columns),
  each titled with the class the model predicts (red: fooled)."""
  names = list(rows)
  count = len(rows[names[0]])
  fig, axes = plt.subplots(len(names), count, figsize=(1.6 * count, 1.9 * len(names)),
                           squeeze=False)
  for r, name in enumerate(names):
    for t in range(count):
      ax = axes[r][t]
      ax.imshow(np.asarray(rows[name][t]).squeeze(), cmap='gray', vmin=0, vmax=1)
      predicted = int(predictions[name][t])
      ax.set_title(str(predicted), color='red' if predicted != label else 'black',
                   fontsize=10)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[r][0].set_ylabel(name, fontsize=9)
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def robustness_curve(result: dict, title: str, path: str) -> str:
  """Robust accuracy against eps, one line per attack and the worst case."""
  fig, ax = plt.subplots(figsize=(6.5, 4))
  eps = result['eps']
  for name, values in result['accuracy'].items():
    ax.plot(eps, values, 'o--', alpha=0.7, label=name)
  ax.plot(eps, result['worst_case'], 'ko-', linewidth=2, label='worst case')
  ax.axhline(result['clean_accuracy'], color='grey', linestyle=':', label='clean')
  ax.set(xlabel='eps', ylabel='robust accuracy', ylim=(0, 1.02), title=title)
  ax.legend(fontsize=8)
  return _save(fig, path)


# -- Universal approximation --------------------------------------------------

def _shown_widths(widths: Sequence[int], count: int = 4) -> list[int]:
  """About `count` widths spread over the sweep, always with the widest."""
  index = np.unique(np.linspace(0, len(widths) - 1, count).round().astype(int))
  return [widths[i] for i in index]


def approximation_fits(target: str, test: dict, train: dict, widths: Sequence[int],
                       predictions: np.ndarray, path: str) -> str:
  """The target and the fits of a few widths (1-D curves or 2-D maps)."""
  shown = _shown_widths(list(widths))
  if test['x'].shape[1] == 1:
    fig, ax = plt.subplots(figsize=(7, 4))
    x = test['x'][:, 0]
    ax.plot(x, test['y'], 'k', linewidth=2.5, label=f'target: {target}')
    ax.scatter(train['x'][:, 0], train['y'], s=3, c='grey', alpha=0.4,
               label='training points')
    for w in shown:
      ax.plot(x, predictions[list(widths).index(w)], label=f'width {w}')
    ax.set(xlabel='x', ylabel='f(x)', title='One hidden layer, growing width')
    ax.legend(fontsize=8)
    return _save(fig, path)
  side = int(round(math.sqrt(len(test['y']))))
  panels = [('target', test['y'])] + [
      (f'width {w}', predictions[list(widths).index(w)]) for w in shown]
  fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
  for ax, (name, values) in zip(axes, panels):
    ax.imshow(values.reshape(side, side).T, origin='lower', extent=(-1, 1, -1, 1),
              cmap='viridis', vmin=test['y'].min(), vmax=test['y'].max())
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f'2-D target {target!r} and one-hidden-layer fits')
  return _save(fig, path)


def error_vs_width(curves: dict[str, dict[int, float]], path: str) -> str:
  """Test MSE against width on log-log axes, one line per target."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, errors in curves.items():
    widths = sorted(w for w, e in errors.items() if e is not None)
    ax.plot(widths, [errors[w] for w in widths], 'o-', label=name)
  ax.set(xscale='log', yscale='log', xlabel='hidden width',
         ylabel='test mean squared error', title='Error falls with width')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  return _save(fig, path)


# -- Diffusion -----------------------------------------------------------------

def image_grid(images, title: str, path: str, row_labels: Sequence[str] = (),
               col_labels: Sequence[str] = ()) -> str:
  """A grid of images [rows, cols, H, W, C] in [0, 1], optional labels."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  rows, cols = images.shape[:2]
  size = 1.0 if images.shape[2] > 10 else 0.8
  fig, axes = plt.subplots(rows, cols, figsize=(cols * size + 0.8, rows * size + 0.6),
                           squeeze=False)
  for r in range(rows):
    for c in range(cols):
      ax = axes[r, c]
      image = images[r, c]
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray',
                vmin=0, vmax=1, interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0 and c < len(col_labels):
        ax.set_title(col_labels[c], fontsize=7)
      if c == 0 and r < len(row_labels):
        ax.set_ylabel(row_labels[r], fontsize=7)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def loss_curve(history: list[dict], title: str, path: str,
               ylabel: str = 'denoising loss (MSE)',
               eval_label: str = 'test (EMA parameters)', yscale: str = 'log') -> str:
  """Train and eval loss against the step."""
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  ax.plot(*_series(history, 'train/loss'), label='train (batch average)')
  ax.plot(*_series(history, 'eval/loss'), 'o-', label=eval_label)
  ax.set(xlabel='step', ylabel=ylabel, yscale=yscale, title=title)
  ax.legend()
  return _save(fig, path)


def fid_vs_steps(results: dict[str, dict[int, float]], floor: float, title: str,
                 path: str) -> str:
  """FID against the number of sampler steps, one line per sampler."""
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for name, points in results.items():
    steps = sorted(points)
    ax.plot(steps, [points[s] for s in steps], 'o-', label=name)
  ax.axhline(floor, color='grey', linestyle=':', label='real data (floor)')
  ax.set(xlabel='sampler steps (network evaluations)', ylabel='FID (project classifier)',
         xscale='log', title=title)
  ax.legend()
  return _save(fig, path)


def emergence(points: Sequence[dict], path: str, metric: str = 'eval/exact_match') -> str:
  """Final accuracy against parameters and against training FLOPs, and the
  accuracy of each size during training. `points`: one dict per model with
  'params', 'flops', 'label', 'final' (a number) and 'history'."""
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  points = sorted(points, key=lambda p: p['params'])
  for ax, x_key, x_label in ((axes[0], 'params', 'parameters (without position embeddings)'),
                             (axes[1], 'flops', 'training FLOPs (XLA count)')):
    ax.plot([p[x_key] for p in points], [p['final'] for p in points], 'o-')
    for p in points:
      ax.annotate(p['label'], (p[x_key], p['final']), textcoords='offset points',
                  xytext=(4, -10), fontsize=7)
    ax.set(xscale='log', xlabel=x_label, ylabel='exact match, held-out problems',
           ylim=(-0.03, 1.03))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
  for p in points:
    axes[2].plot(*_series(p['history'], metric), 'o-', markersize=3,
                 label=f'{p["params"]:,} params')
  axes[2].set(xlabel='training step', ylabel='exact match', ylim=(-0.03, 1.03))
  axes[2].legend(fontsize=7)
  fig.suptitle('emergence: accuracy appears past a model size')
  return _save(fig, path)
