"""Sweeps: every run checked before the first starts; comparison figures."""

import os

import pytest

from frontiers_jax import sweep
from frontiers_jax.errors import UsageError
from conftest import load


def test_a_bad_value_anywhere_stops_the_sweep_before_anything_is_written(tmp_path):
  with pytest.raises(UsageError, match="config.randomization: unknown value 'bogus'"):
    sweep.run_sweep(load('generalization.py:tiny'), str(tmp_path / 'sw'),
                    'randomization', ['none', 'bogus'])
  assert not os.path.exists(tmp_path / 'sw')


def test_sweep_over_corruption_writes_runs_figures_and_report(tmp_path):
  config = load('generalization.py:tiny', randomization='partial')
  path = sweep.run_and_report(config, str(tmp_path), 'corruption', ['0.0', '1.0'])
  for value in ('0.0', '1.0'):
    assert os.path.isfile(tmp_path / f'corruption={value}' / 'summary.json')
  assert os.listdir(tmp_path / 'figures') == ['corruption.png']
  text = open(path).read()
  assert '<td>1.0</td>' in text and 'eval/accuracy' in text
