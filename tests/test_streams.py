"""The named random streams of `frontiers_jax.streams`."""

import pathlib
import re

from frontiers_jax import streams


def test_the_random_streams_are_distinct_and_used_by_name():
  """Two uses of one stream would draw the same random numbers."""
  jax_streams = {k: v for k, v in vars(streams).items()
                 if k.isupper() and k not in ('TRAIN_COLOURS', 'TEST_COLOURS')}
  assert len(set(jax_streams.values())) == len(jax_streams)
  # No module folds a bare number into key(seed): each names its stream.
  package = pathlib.Path(streams.__file__).parent
  for path in package.rglob('*.py'):
    assert not re.search(r'fold_in\(jax\.random\.key\([^)]*\), \d', path.read_text()), path
