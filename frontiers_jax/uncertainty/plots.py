"""Figures of the uncertainty workload, drawn from `evaluate_uncertainty`
results ({method: result}), one panel per method."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

SCORE_LABELS = {'entropy': 'predictive entropy (nats)', 'mutual_info': 'mutual information',
                'vacuity': 'vacuity K / S'}


def _panels(count: int, width: float = 4.2, height: float = 3.6):
  fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
  return fig, axes[0]


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def regression_bands(results: dict[str, dict], path: str) -> str:
  """Data, true curve, predictive mean, and mean +- 2 std bands: aleatoric
  (orange) and epistemic (blue), on [-6, 6] with the training range shaded."""
  fig, axes = _panels(len(results))
  for ax, (method, r) in zip(axes, results.items()):
    x, mean = np.asarray(r['x']), np.asarray(r['mean'])
    aleatoric, epistemic = np.asarray(r['aleatoric_std']), np.asarray(r['epistemic_std'])
    ax.axvspan(-r['train_range'], r['train_range'], color='0.93', zorder=0,
               label='training range')
    ax.scatter(r['train_x'], r['train_y'], s=2, color='0.55', zorder=1, label='data')
    ax.fill_between(x, mean - 2 * aleatoric, mean + 2 * aleatoric, color='C1', alpha=0.25,
                    zorder=2, label='aleatoric +-2 std')
    ax.fill_between(x, mean - 2 * epistemic, mean + 2 * epistemic, color='C0', alpha=0.35,
                    zorder=3, label='epistemic +-2 std')
    ax.plot(x, r['truth'], 'k--', lw=1, zorder=4, label='y = x^3')
    ax.plot(x, mean, color='C3', lw=1.5, zorder=5, label='predictive mean')
    ratio = r.get('epistemic_ratio')
    title = method if ratio is None else f'{method}: epistemic std out/in {ratio:.1f}x'
    ax.set(xlim=(x[0], x[-1]), ylim=(-150, 150), xlabel='x', title=title)
  axes[0].set_ylabel('y')
  axes[0].legend(fontsize=7, loc='upper left')
  return _save(fig, path)


def ood_histograms(results: dict[str, dict], path: str) -> str:
  """Each method's main uncertainty score on in- vs out-of-distribution
  test images (normalized histograms), titled with its AUROC."""
  fig, axes = _panels(len(results))
  for ax, (method, r) in zip(axes, results.items()):
    name = r['primary_score']
    h = r['histograms'][name]
    edges = np.asarray(h['edges'])
    for key, label, color in (('in', f'{r["data"]} test (in)', 'C0'),
                              ('out', f'{r["ood"]} (out)', 'C3')):
      counts = np.asarray(h[key], np.float64)
      ax.stairs(counts / max(counts.sum(), 1), edges, fill=True, alpha=0.45, color=color,
                label=label)
    ax.set(xlabel=SCORE_LABELS.get(name, name), ylabel='fraction of images',
           title=f'{method}: AUROC {r["auroc"][name]:.3f}')
    ax.legend(fontsize=7)
  return _save(fig, path)


def reliability_diagrams(results: dict[str, dict], path: str) -> str:
  """Accuracy per confidence bin (bars) and the bin's mean confidence (dots)
  against the diagonal (perfect calibration); empty bins are left out."""
  fig, axes = _panels(len(results))
  for ax, (method, r) in zip(axes, results.items()):
    rel = r['reliability']
    count = np.asarray(rel['count'])
    bins = len(count)
    centers = (np.arange(bins) + 0.5) / bins
    full = count > 0
    ax.bar(centers[full], np.asarray(rel['accuracy'])[full], width=1 / bins, color='C0',
           edgecolor='k', lw=0.5, label='accuracy')
    ax.plot(centers[full], np.asarray(rel['confidence'])[full], 'o', color='C3', ms=4,
            label='mean confidence')
    ax.plot([0, 1], [0, 1], 'k--', lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel='confidence', ylabel='accuracy',
           title=f'{method}: ECE {r["ece"]:.4f}')
    ax.legend(fontsize=7, loc='upper left')
  return _save(fig, path)
