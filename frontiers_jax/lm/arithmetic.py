"""The arithmetic task of the emergence experiment: n-digit addition as text.

Every problem is one fixed-length string of characters,

  "123+456=0579"   (digits = 3: operands and the sum zero-padded to 3 and 4 digits)
  "123+456=9750"   (the same with `reverse=True`: the sum written last digit first)

so a batch is a plain [N, 3n + 3] array of character ids and the answer always
occupies the last n + 1 positions. The model is trained by next-token
prediction with the loss on the answer only (the operands are random: nothing
in them can be predicted). A problem is solved when greedy decoding from
"123+456=" writes the whole answer, which is the same as every answer digit
being the most likely one under teacher forcing (by induction over the digits),
so exact-match accuracy needs a single forward pass.

Writing the sum reversed lets the model produce each digit after the digits
it depends on (the carries come from the right), which makes addition much
easier to learn (Lee et al. 2023, "Teaching arithmetic to small transformers").

Train and test problems are drawn deterministically from the seed; the test
problems are held out: no (a, b) pair of the test set is ever trained on.
"""

import numpy as np

from frontiers_jax.errors import check
from frontiers_jax.lm.tokenizers import CharTokenizer

ALPHABET = '0123456789+='
_TEST, _TRAIN = 0, 1  # independent numpy streams (with the seed)


def tokenizer() -> CharTokenizer:
  return CharTokenizer(ALPHABET)


def sequence_length(digits: int) -> int:
  """Characters of one problem: a + b = and the (digits + 1)-digit sum."""
  return 3 * digits + 3


def answer_length(digits: int) -> int:
  return digits + 1


def format_problem(a: int, b: int, digits: int, reverse: bool) -> str:
  answer = f'{a + b:0{digits + 1}d}'
  return f'{a:0{digits}d}+{b:0{digits}d}=' + (answer[::-1] if reverse else answer)


def read_answer(text: str, reverse: bool) -> int | None:
  """The number a model wrote as its answer (None if it is not all digits)."""
  digits = text[::-1] if reverse else text
  return int(digits) if digits.isdigit() else None


def _distinct_pairs(rng: np.random.Generator, count: int, space: int,
                    exclude: np.ndarray | None = None) -> np.ndarray:
  """`count` distinct codes a * 10^n + b, none in `exclude`, in drawn order."""
  codes = np.empty(0, np.int64)
  while len(codes) < count:
    draw = rng.integers(0, space, 2 * (count - len(codes)) + 16)
    if exclude is not None:
      draw = draw[~np.isin(draw, exclude)]
    merged = np.concatenate([codes, draw])
    _, first = np.unique(merged, return_index=True)
    codes = merged[np.sort(first)]  # keep the first occurrence of each
  return codes[:count]


def make_splits(digits: int, num_train: int, num_test: int, seed: int,
                reverse: bool) -> dict[str, dict[str, np.ndarray]]:
  """{'train': ..., 'test': ...}, each {'tokens': int32 [N, 3n+3], 'weights':
  float32 [N, 3n+2]} (1 on the targets that are answer digits)."""
  check(1 <= digits <= 9, 'config.data.digits', f'{digits} is not allowed',
        'give 1 to 9')
  space = 10 ** (2 * digits)
  check(num_train + num_test <= space, 'config.data.num_train',
        f'{num_train} training + {num_test} test problems exceed the {space} '
        f'distinct {digits}-digit problems', f'give at most {space} in all')
  test = _distinct_pairs(np.random.default_rng((seed, _TEST)), num_test, space)
  train = _distinct_pairs(np.random.default_rng((seed, _TRAIN)), num_train, space,
                          exclude=test)
  return {'train': encode_pairs(train, digits, reverse),
          'test': encode_pairs(test, digits, reverse)}


def encode_pairs(codes: np.ndarray, digits: int, reverse: bool) -> dict[str, np.ndarray]:
  tok = tokenizer()
  a, b = np.divmod(codes, 10 ** digits)
  tokens = np.stack([tok.encode(format_problem(int(x), int(y), digits, reverse))
                     for x, y in zip(a, b)]).astype(np.int32)
  weights = np.zeros((len(codes), sequence_length(digits) - 1), np.float32)
  weights[:, -answer_length(digits):] = 1
  return {'tokens': tokens, 'weights': weights}
