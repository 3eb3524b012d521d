"""The benchmark harness: timing protocol, table, the rows' names."""

import pytest

torch = pytest.importorskip('torch', reason='the benchmark needs torch (pip install -e .[bench])')

from frontiers_jax import bench  # noqa: E402
from frontiers_jax.bench import harness  # noqa: E402
from conftest import CONFIGS  # noqa: E402


def test_measure_interleaves_modes_and_times_the_first_call_apart():
  calls = []
  runners = {mode: (lambda mode=mode: calls.append(mode)) for mode in harness.MODES}
  row = harness.Row('fake', runners, flops=2e9)
  results = harness.measure(row, {'jax': 1e12, 'torch': 2e12}, warmup=1, repeats=3,
                            say=lambda _: None)
  # First calls (compile), one warm-up round, then three interleaved rounds.
  assert calls[:3] == list(harness.MODES)
  assert calls[3:] == list(harness.MODES) * 4
  by_mode = {r.mode: r for r in results}
  assert set(by_mode) == set(harness.MODES)
  for r in results:
    assert 0 <= r.min_ms <= r.median_ms <= r.max_ms
    assert r.flops_per_s == pytest.approx(2e9 / (r.median_ms / 1e3))
  assert by_mode['jax'].mfu == pytest.approx(by_mode['jax'].flops_per_s / 1e12)
  assert by_mode['torch_eager'].mfu == pytest.approx(by_mode['torch_eager'].flops_per_s / 2e12)
  table = harness.markdown(results)
  assert table.count('| fake |') == 3 and '1.00x' in table


def test_torch_matmul_peak_is_a_plausible_rate():
  assert 1e8 < harness.torch_matmul_peak(n=256, chain=2) < 1e15


def test_rows_build_and_their_jax_and_eager_runners_run():
  from frontiers_jax.bench import run
  build = run.builders(CONFIGS)
  assert list(build) == list(bench.ROWS)  # launch/bench.py's default: every row
  assert set(build) == {'cnn_train', 'pgd10', 'unet_train', 'ddim50', 'gpt_train_0.8M',
                        'gpt_train_10M', 'gpt_decode_b1', 'gpt_decode_b8'}
  row = build['cnn_train']()
  assert set(row.runners) == set(harness.MODES) and row.flops > 0
  row.runners['jax']()
  row.runners['torch_eager']()


def test_unknown_row_is_a_one_line_error_before_any_work(tmp_path):
  from frontiers_jax.bench import run
  from frontiers_jax.errors import UsageError
  with pytest.raises(UsageError, match="unknown row 'nope'"):
    run.main(['cnn_train', 'nope'], quick=True, out=str(tmp_path / 'b.json'),
             configs_dir=CONFIGS)
  assert not (tmp_path / 'b.json').exists()


def test_decode_row_counts_its_tokens_and_runs():
  from frontiers_jax import config as config_lib
  from frontiers_jax.bench import rows
  config = config_lib.load_config(f'{CONFIGS}/lm.py:shakespeare_char_cpu')
  config_lib.apply_overrides(config, [('model.num_layers', '1'), ('model.width', '32')])
  row = rows.gpt_decode('decode', config, batch_size=2, prompt_length=4)
  assert row.tokens == 2 * (64 - 4) and row.flops > 0
  row.runners['jax']()
  row.runners['torch_eager']()
  results = harness.measure(row, {'jax': 1e12, 'torch': 1e12}, warmup=0, repeats=1,
                            say=lambda _: None)
  for r in results:
    assert r.tokens_per_s == pytest.approx(row.tokens / (r.median_ms / 1e3))
  assert '| decode | jax |' in harness.markdown(results)
