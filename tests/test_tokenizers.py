"""Tokenizers: round trips, unknown characters, and what BPE training learns.

BPE is trained on a few KB of inline English, once per module. Its incremental
pair-count update is checked against a plain trainer that recounts every pair
at every step.
"""

import collections
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from frontiers_jax.lm import tokenizers as tk

SENTENCES = [
  'The quick brown fox jumps over the lazy dog.',
  'To be, or not to be, that is the question.',
  'Whether tis nobler in the mind to suffer the slings and arrows of outrageous fortune,',
  'or to take arms against a sea of troubles, and by opposing end them.',
  'All the world is a stage, and all the men and women merely players;',
  'they have their exits and their entrances, and one man in his time plays many parts.',
  'Now is the winter of our discontent made glorious summer by this sun of York.',
  'In 1599 the company built the Globe; it held 3000 people!',
  'Friends, Romans, countrymen, lend me your ears: I come to bury Caesar, not to praise him.',
]


def english(num_sentences: int, seed: int = 0) -> str:
  rng = random.Random(seed)
  lines = []
  for _ in range(num_sentences // 3):
    lines.append(' '.join(rng.choice(SENTENCES) for _ in range(3)))
  return '\n'.join(lines) + '\n'


TEXT = english(60)   # about 4 KB
VOCAB_SIZE = 400
FAST = settings(max_examples=150, deadline=None)
# Any str, lone surrogates included (`st.text` never draws them).
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_STR = st.lists(st.characters() | SURROGATES).map(''.join)


@pytest.fixture(scope='module')
def bpe() -> tk.BPETokenizer:
  return tk.train_bpe(TEXT, VOCAB_SIZE)


def all_kinds(bpe: tk.BPETokenizer) -> list[tk.Tokenizer]:
  return [tk.char_tokenizer(TEXT), tk.ByteTokenizer(), bpe]


# Round trips.

@FAST
@given(st.text(alphabet=tk.char_tokenizer(TEXT).chars))
def test_char_round_trip_over_its_vocabulary(text):
  tokenizer = tk.char_tokenizer(TEXT)
  ids = tokenizer.encode(text)
  assert ids.dtype == np.int32 and ids.shape == (len(text),)
  assert tokenizer.decode(ids) == text


@FAST
@given(st.text())
def test_byte_and_bpe_round_trip_any_text(bpe, text):
  for tokenizer in (tk.ByteTokenizer(), bpe):
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert np.all((0 <= ids) & (ids < tokenizer.vocab_size))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(list(ids)) == text


@FAST
@given(ANY_STR)
def test_byte_and_bpe_round_trip_lone_surrogates(bpe, text):
  for tokenizer in (tk.ByteTokenizer(), bpe):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize('text', ['\ud800', 'a\udfff b', '\ud83d\ude00', 'x\ud800\udc00y'])
def test_lone_surrogate_examples_round_trip(bpe, text):
  for tokenizer in (tk.ByteTokenizer(), bpe):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@FAST
@given(ANY_STR)
def test_chunks_cover_the_text(text):
  assert ''.join(tk.split_chunks(text)) == text


def test_chunks_keep_the_leading_space_with_the_word():
  assert tk.split_chunks("Hi  there, it's 42!\n") == [
      'Hi', ' ', ' there', ',', ' it', "'", 's', ' 42', '!', '\n']


def test_bytes_cut_mid_character_decode_to_replacement_character(bpe):
  ids = tk.ByteTokenizer().encode('é!')   # 'é' is two bytes
  assert tk.ByteTokenizer().decode(ids[1:]) == '\ufffd!'
  assert tk.ByteTokenizer().decode(ids[:1]) == '\ufffd'
  assert bpe.decode([0xE2, 0x82]) == '\ufffd'   # the first two of the three bytes of '€'


def test_decode_rejects_ids_outside_the_vocabulary(bpe):
  for tokenizer in all_kinds(bpe):
    with pytest.raises(ValueError, match='ids must lie in'):
      tokenizer.decode([0, tokenizer.vocab_size])
    with pytest.raises(ValueError, match='ids must lie in'):
      tokenizer.decode([-1])
    assert tokenizer.decode([]) == ''


# Characters.

def test_char_unknown_characters_are_named():
  tokenizer = tk.CharTokenizer('abc ')
  with pytest.raises(tk.UnknownCharacters) as info:
    tokenizer.encode('a cab zq\n')
  message = str(info.value)
  assert info.value.characters == '\nqz'
  assert "'q'" in message and "'z'" in message and "'\\n'" in message
  assert "'abc '" in message   # what is allowed
  assert '\n' not in message
  assert isinstance(info.value, ValueError)


def test_char_unknown_characters_message_stays_short():
  tokenizer = tk.CharTokenizer(''.join(chr(c) for c in range(200, 400)))
  with pytest.raises(tk.UnknownCharacters, match='and 16 more') as info:
    tokenizer.encode('abcdefghijklmnopqrstuvwxyz')
  assert len(info.value.characters) == 26
  assert len(str(info.value)) < 300


def test_char_vocabulary_is_sorted_and_rejects_repeats():
  assert tk.char_tokenizer('banana').chars == 'abn'
  np.testing.assert_array_equal(tk.char_tokenizer('banana').encode('nab'), [2, 0, 1])
  with pytest.raises(ValueError, match="'a'"):
    tk.CharTokenizer('aba')


# BPE.

def test_bpe_hand_checked_example():
  # 'aaabdaaabac': the pair (a, a) occurs 4 times (twice in each 'aaa'), (a, b) twice, every
  # other pair once, so 'aa' -> 256. That leaves 256 a b d 256 a b a c, where (256, a) and
  # (a, b) tie at 2 and the smaller pair (97, 98) wins: 'ab' -> 257. That leaves
  # 256 257 d 256 257 a c, where only (256, 257) repeats: 'aaab' -> 258. Then nothing repeats.
  tokenizer = tk.train_bpe('aaabdaaabac', 1000)
  a, b, c, d = map(ord, 'abcd')
  assert tokenizer.merges == [(a, a), (a, b), (256, 257)]
  assert tokenizer.vocab[256:] == [b'aa', b'ab', b'aaab']
  assert tokenizer.vocab_size == 259
  assert tokenizer.encode('aaabdaaabac').tolist() == [258, d, 258, a, c]
  assert tokenizer.encode('aaaa').tolist() == [256, 256]
  assert tokenizer.encode('bab').tolist() == [b, 257]


def test_bpe_merges_compress_the_training_text(bpe):
  ids = bpe.encode(TEXT)
  assert len(ids) < 0.5 * len(TEXT.encode())
  assert bpe.decode(ids) == TEXT


def test_bpe_vocab_size_is_respected(bpe):
  assert bpe.vocab_size == VOCAB_SIZE == len(bpe.vocab)
  assert bpe.encode(TEXT).max() < VOCAB_SIZE
  assert bpe.token_bytes().shape == (VOCAB_SIZE,)
  assert tk.train_bpe(TEXT, 256).vocab_size == 256
  assert tk.train_bpe(TEXT, 300).vocab_size == 300


def test_bpe_training_is_deterministic(bpe):
  assert tk.train_bpe(TEXT, VOCAB_SIZE).to_dict() == bpe.to_dict()


def test_bpe_rejects_a_vocabulary_below_256():
  with pytest.raises(ValueError, match='at least 256'):
    tk.train_bpe(TEXT, 255)
  with pytest.raises(ValueError, match='at least 256'):
    tk.create('bpe', TEXT)


def naive_bpe_merges(text: str, vocab_size: int) -> list[tuple[int, int]]:
  """The textbook trainer: recount every pair of every chunk at every step."""
  words = [list(chunk.encode('utf-8', 'surrogatepass')) for chunk in tk.split_chunks(text)]
  merges = []
  while 256 + len(merges) < vocab_size:
    counts = collections.Counter(p for word in words for p in zip(word, word[1:]))
    if not counts:
      break
    pair = min(counts, key=lambda p: (-counts[p], p))
    if counts[pair] < 2:
      break
    new_id = 256 + len(merges)
    merges.append(pair)
    words = [tk._merge(word, pair, new_id) for word in words]
  return merges


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet='ab c\n.é', max_size=200), st.integers(256, 300))
def test_bpe_matches_the_naive_trainer(text, vocab_size):
  assert tk.train_bpe(text, vocab_size).merges == naive_bpe_merges(text, vocab_size)


def test_bpe_matches_the_naive_trainer_on_english():
  assert tk.train_bpe(TEXT, 320).merges == naive_bpe_merges(TEXT, 320)


# All kinds.

def test_to_dict_from_dict_round_trip_through_json(bpe):
  sample = english(10, seed=1)
  for tokenizer in all_kinds(bpe):
    rebuilt = tk.from_dict(json.loads(json.dumps(tokenizer.to_dict())))
    assert type(rebuilt) is type(tokenizer) and rebuilt.kind == tokenizer.kind
    assert rebuilt.vocab_size == tokenizer.vocab_size
    np.testing.assert_array_equal(rebuilt.encode(sample), tokenizer.encode(sample))
    np.testing.assert_array_equal(rebuilt.token_bytes(), tokenizer.token_bytes())


def test_token_bytes_count_the_utf8_bytes(bpe):
  text = TEXT + 'café, naïve, 東京\n'
  for tokenizer in (tk.char_tokenizer(text), tk.ByteTokenizer(), bpe):
    sizes = tokenizer.token_bytes()
    assert sizes.shape == (tokenizer.vocab_size,)
    assert sizes[tokenizer.encode(text)].sum() == len(text.encode())


def test_create_each_kind():
  assert isinstance(tk.create('char', TEXT), tk.CharTokenizer)
  assert tk.create('byte', TEXT).vocab_size == 256
  assert tk.create('bpe', TEXT, 280).vocab_size == 280
  assert [tk.create(kind, TEXT, 280).kind for kind in tk.KINDS] == list(tk.KINDS)
  with pytest.raises(ValueError, match='allowed: char, byte, bpe'):
    tk.create('word', TEXT)
  with pytest.raises(ValueError, match='allowed: char, byte, bpe'):
    tk.from_dict({'kind': 'word'})
