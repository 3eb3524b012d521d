"""The lecture tour and its self-contained HTML report."""

import base64
import os
import re

import pytest

from frontiers_jax import report
from frontiers_jax import tour
from conftest import CONFIGS


def test_report_inlines_figures_and_escapes_text(tmp_path):
  png = tmp_path / 'a.png'
  png.write_bytes(b'\x89PNG fake bytes')
  path = report.write(str(tmp_path / 'r.html'), 'T <1>', [report.Section(
      'S & s', ['x < y'], [str(png)], [['k', 'v'], ['a', 0.123456], ['b', None]])])
  text = open(path).read()
  assert '<h1>T &lt;1&gt;</h1>' in text and '<h2>S &amp; s</h2>' in text
  assert '<p>x &lt; y</p>' in text
  assert base64.b64encode(png.read_bytes()).decode() in text  # inlined, not linked
  assert '<td>0.1235</td>' in text and '<td>—</td>' in text


# 2.5 min on a slow day, all on one worker: run by `make test-matrix` (CI runs it).
@pytest.mark.matrix
def test_quick_tour_writes_one_self_contained_report(tmp_path, fast_compile, capsys):
  path = tour.run_tour(str(tmp_path / 'demo'), CONFIGS, quick=True)
  assert path == str(tmp_path / 'demo' / 'report.html')
  # Which experiment is next, on stderr, then all of them done.
  said = [line for line in capsys.readouterr().err.splitlines() if line.startswith('[demo]')]
  assert said[0] == '[demo] next: approximation: 0/7 experiments done (0.0%)'
  assert '[demo] next: lm: 4/7 experiments done (57.1%)' in said[4]
  assert said[-1].startswith('[demo] all: 7/7 experiments done (100.0%)  in ')
  text = open(path).read()
  assert 'Universal approximation' in text and 'Rethinking generalization' in text
  assert 'Adversarial examples' in text and 'Diffusion models' in text
  assert 'Language models' in text
  assert 'Uncertainty' in text and 'AUROC' in text
  images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
  assert len(images) >= 5
  assert all(base64.b64decode(i)[:4] == b'\x89PNG' for i in images)
  assert 'src="http' not in text and 'src="/' not in text  # nothing external
  # The sweep figures are written beside the runs, too.
  assert os.path.isfile(tmp_path / 'demo' / 'generalization' / 'figures' /
                        'randomization_bars.png')
  assert '<td>random_labels</td>' in text
  assert 'Algorithmic bias' in text and '<td>dbvae</td>' in text
