"""Tokenizers: how a language model turns text into integers and back.

A language model predicts the next symbol from a fixed vocabulary, so text
must first be cut into symbols ("tokens") and each token given an id. The
choice of cut trades vocabulary size against sequence length:

  char  One token per character, the vocabulary being the characters of the
        training text (about 65 for tiny Shakespeare). Tiny vocabulary, long
        sequences, and any character it has not seen cannot be encoded at all:
        `encode` raises `UnknownCharacters`.
  byte  One token per UTF-8 byte: always exactly 256 ids, nothing is ever
        unknown, but a non-ASCII character costs 2-4 tokens.
  bpe   Byte-pair encoding (Sennrich et al. 2016; byte-level as in GPT-2).
        Start from the 256 byte tokens and repeatedly glue the most frequent
        adjacent pair of tokens into a new token, until the vocabulary has
        the requested size. Frequent words become single tokens; rare words
        fall back to pieces and, in the worst case, to bytes, so, as for
        `byte`, every string can be encoded.

BPE training, step by step. The text is first split into chunks with a
regular expression (a word with its leading space, a run of digits, a run of
punctuation, or whitespace), and merges never cross a chunk boundary: this
keeps " the" one token instead of letting "e t" glue words together. Equal
chunks are counted once with a frequency. Then, while the vocabulary is too
small: find the adjacent pair (a, b) that occurs most often (weighted by
chunk frequency; ties go to the smallest (a, b), so training is
deterministic), give it the next id t, and rewrite every chunk that contains
it with "a b" replaced by t. Only the chunks that contain the pair change, so
only their pair counts are updated (a heap with lazily discarded stale entries
finds the next maximum); this is what makes training on a megabyte of text
take seconds rather than minutes. Training stops early if no pair occurs
twice, so a tokenizer's `vocab_size` may be below the one requested.

Encoding replays the merges: within each chunk, repeatedly merge the pair
with the earliest merge (lowest new id) until no learned pair remains. Since
a merge only creates pairs that were learned later than itself, this gives
the same tokens as training did. Each distinct chunk is encoded once and
cached, and English text has few distinct chunks, so encoding is fast.

Why write our own small trainer instead of using sentencepiece? This is
teaching code: the whole algorithm reads in about sixty lines, it adds no
dependency, and being byte-level it needs no "unknown" token. At scale one
would use sentencepiece or a similar library, which are much faster and
offer unigram models and normalisation rules.

Lone surrogates. A Python str may hold code points U+D800-U+DFFF that are not
valid Unicode and have no strict UTF-8 encoding. `byte` and `bpe` encode and
decode with the 'surrogatepass' error handler, so these round-trip too:
`decode(encode(s)) == s` for every str. Decoding an arbitrary id sequence
(say, a model's sample) never fails: bytes that do not form a character,
such as a sequence cut in the middle of a multi-byte character, decode to
U+FFFD.

`token_bytes` gives the UTF-8 length of every token, so that a loss in nats
per token converts to bits per byte, which compares models with different
tokenizers: bits/byte = sum(loss) / (ln 2 * sum(token_bytes[ids])).
"""

import codecs
import collections
import heapq
import math
import re
from typing import Iterable, Sequence

import numpy as np

KINDS = ('char', 'byte', 'bpe')
NUM_BYTES = 256

Pair = tuple[int, int]

# A word with an optional leading space (letters: word characters other than
# digits and '_'), a digit run, a punctuation run (anything else that is not
# whitespace), then whitespace. `\s+(?!\S)` leaves a run's last space to the
# next word. Every character matches one alternative, so the chunks of a text
# join back to the text.
_CHUNK = re.compile(r' ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+')

# Distinct chunks a BPE tokenizer remembers before it starts over.
_CACHE_SIZE = 1 << 17


def _surrogatepass_or_replace(error: UnicodeError) -> tuple[str, int]:
  """Decode error handler: encoded surrogates pass, other bad bytes become U+FFFD."""
  try:
    return codecs.lookup_error('surrogatepass')(error)
  except UnicodeDecodeError:
    return codecs.replace_errors(error)


_DECODE_ERRORS = 'frontiers_jax.surrogatepass_or_replace'
codecs.register_error(_DECODE_ERRORS, _surrogatepass_or_replace)


def _to_bytes(text: str) -> bytes:
  return text.encode('utf-8', 'surrogatepass')


def _from_bytes(data: bytes) -> str:
  return data.decode('utf-8', _DECODE_ERRORS)


def _as_ids(ids, vocab_size: int) -> list[int]:
  """`ids` (any 1-D int sequence or array) as a list, checked against the vocabulary."""
  array = np.asarray(ids)
  if array.size == 0:
    return []
  if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f'ids must be a 1-D sequence of ints, got {array.dtype} {array.shape}')
  if array.min() < 0 or array.max() >= vocab_size:
    raise ValueError(f'ids must lie in [0, {vocab_size}), got values in '
                     f'[{array.min()}, {array.max()}]')
  return array.tolist()


def split_chunks(text: str) -> list[str]:
  """The pieces BPE works on; `''.join(split_chunks(text)) == text`."""
  return _CHUNK.findall(text)


class UnknownCharacters(ValueError):
  """Text holds characters that a `CharTokenizer` has no id for.

  Attributes:
    characters: the unknown characters, sorted, as one string.
    vocabulary: the characters the tokenizer knows.
  """

  def __init__(self, characters: Iterable[str], vocabulary: str):
    self.characters = ''.join(sorted(set(characters)))
    self.vocabulary = vocabulary
    shown = ', '.join(repr(c) for c in self.characters[:10])
    if len(self.characters) > 10:
      shown += f' and {len(self.characters) - 10} more'
    allowed = repr(vocabulary[:80]) + ('...' if len(vocabulary) > 80 else '')
    super().__init__(f'{len(self.characters)} character(s) not in the vocabulary: {shown}; '
                     f'allowed: the {len(vocabulary)} characters {allowed}')


class Tokenizer:
  """Text to int32 ids and back.

  Attributes:
    kind: 'char', 'byte' or 'bpe'.
    vocab_size: the number of ids; every id lies in [0, vocab_size).
  """

  kind: str = ''
  vocab_size: int = 0

  def encode(self, text: str) -> np.ndarray:
    """The ids of `text`, int32 [num_tokens]."""
    raise NotImplementedError

  def decode(self, ids) -> str:
    """The text of `ids`, any 1-D int sequence or array."""
    raise NotImplementedError

  def to_dict(self) -> dict:
    """A JSON-serialisable description; `from_dict` rebuilds the tokenizer."""
    raise NotImplementedError

  def token_bytes(self) -> np.ndarray:
    """int32 [vocab_size]: the UTF-8 length in bytes of each token."""
    raise NotImplementedError

  def __repr__(self) -> str:
    return f'{type(self).__name__}(vocab_size={self.vocab_size})'


class CharTokenizer(Tokenizer):
  """One id per character: id i is `chars[i]`."""

  kind = 'char'

  def __init__(self, chars: str):
    repeated = sorted(c for c, n in collections.Counter(chars).items() if n > 1)
    if repeated:
      raise ValueError(f'a character vocabulary lists each character once; repeated: '
                       f'{", ".join(map(repr, repeated))}')
    self.chars = chars
    self.vocab_size = len(chars)
    self._index = {c: i for i, c in enumerate(chars)}

  def encode(self, text: str) -> np.ndarray:
    unknown = set(text).difference(self._index)
    if unknown:
      raise UnknownCharacters(unknown, self.chars)
    return np.fromiter(map(self._index.__getitem__, text), np.int32, len(text))

  def decode(self, ids) -> str:
    return ''.join(self.chars[i] for i in _as_ids(ids, self.vocab_size))

  def to_dict(self) -> dict:
    return {'kind': self.kind, 'chars': self.chars}

  def token_bytes(self) -> np.ndarray:
    return np.array([len(_to_bytes(c)) for c in self.chars], np.int32)


def char_tokenizer(text: str) -> CharTokenizer:
  """A `CharTokenizer` whose vocabulary is the sorted set of characters of `text`."""
  return CharTokenizer(''.join(sorted(set(text))))


class ByteTokenizer(Tokenizer):
  """One id per UTF-8 byte: 256 ids, nothing unknown."""

  kind = 'byte'
  vocab_size = NUM_BYTES

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(_to_bytes(text), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    """The text of `ids`; bytes that form no character (a cut sequence) give U+FFFD."""
    return _from_bytes(bytes(_as_ids(ids, self.vocab_size)))

  def to_dict(self) -> dict:
    return {'kind': self.kind}

  def token_bytes(self) -> np.ndarray:
    return np.ones(NUM_BYTES, np.int32)


def _merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
  """`ids` with every occurrence of `pair`, left to right, replaced by `new_id`."""
  out = []
  i = 0
  while i < len(ids):
    if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
      out.append(new_id)
      i += 2
    else:
      out.append(ids[i])
      i += 1
  return out


class BPETokenizer(Tokenizer):
  """Byte-level BPE: ids 0-255 are bytes, id 256 + r is merge r of `merges`.

  Attributes:
    merges: the learned pairs in order; merge r glues tokens (a, b) into 256 + r.
    vocab: the bytes of every token, `vocab[256 + r] = vocab[a] + vocab[b]`.
  """

  kind = 'bpe'

  def __init__(self, merges: Sequence[Sequence[int]]):
    self.merges: list[Pair] = []
    self.vocab = [bytes([b]) for b in range(NUM_BYTES)]
    self._new_id: dict[Pair, int] = {}
    for a, b in merges:
      pair = (int(a), int(b))
      if not (0 <= min(pair) and max(pair) < len(self.vocab)) or pair in self._new_id:
        raise ValueError(f'merge {len(self.merges)} {pair}: each merge must join two '
                         f'existing ids in [0, {len(self.vocab)}) and appear once')
      self._new_id[pair] = len(self.vocab)
      self.merges.append(pair)
      self.vocab.append(self.vocab[pair[0]] + self.vocab[pair[1]])
    self.vocab_size = len(self.vocab)
    self._cache: dict[str, list[int]] = {}

  def _encode_chunk(self, chunk: str) -> list[int]:
    """Bytes of `chunk`, then merges applied earliest first."""
    ids = list(_to_bytes(chunk))
    while len(ids) > 1:
      pair = min(zip(ids, ids[1:]), key=lambda p: self._new_id.get(p, math.inf))
      if pair not in self._new_id:
        break
      ids = _merge(ids, pair, self._new_id[pair])
    return ids

  def _chunk_ids(self, chunk: str) -> list[int]:
    ids = self._cache.get(chunk)
    if ids is None:
      if len(self._cache) >= _CACHE_SIZE:
        self._cache.clear()
      ids = self._cache[chunk] = self._encode_chunk(chunk)
    return ids

  def encode(self, text: str) -> np.ndarray:
    ids = []
    for chunk in split_chunks(text):
      ids.extend(self._chunk_ids(chunk))
    return np.array(ids, np.int32)

  def decode(self, ids) -> str:
    """The text of `ids`; bytes that form no character (a cut sequence) give U+FFFD."""
    return _from_bytes(b''.join(self.vocab[i] for i in _as_ids(ids, self.vocab_size)))

  def to_dict(self) -> dict:
    return {'kind': self.kind, 'merges': [list(pair) for pair in self.merges]}

  def token_bytes(self) -> np.ndarray:
    return np.array([len(token) for token in self.vocab], np.int32)


def _pop_most_frequent(heap: list, counts: dict[Pair, int]) -> Pair | None:
  """The most frequent pair (smallest on ties) if it occurs at least twice.

  `heap` holds (-count, pair) entries, some stale: an entry counts only while
  it matches `counts`.
  """
  while heap:
    negative_count, pair = heapq.heappop(heap)
    if counts.get(pair) == -negative_count:
      return pair if -negative_count >= 2 else None
  return None


def train_bpe(text: str, vocab_size: int) -> BPETokenizer:
  """Learns `vocab_size - 256` merges (fewer if no pair repeats) from `text`.

  Args:
    text: the training text.
    vocab_size: the wanted number of ids, at least 256 (the bytes).

  Returns:
    The trained tokenizer; the same text and size always give the same merges.
  """
  if vocab_size < NUM_BYTES:
    raise ValueError(f'BPE vocab_size must be at least {NUM_BYTES} (one id per byte), '
                     f'got {vocab_size}')
  chunk_freqs = collections.Counter(split_chunks(text))
  words = [list(_to_bytes(chunk)) for chunk in chunk_freqs]
  freqs = list(chunk_freqs.values())
  counts: dict[Pair, int] = collections.defaultdict(int)   # pair -> occurrences in text
  where: dict[Pair, set[int]] = collections.defaultdict(set)  # pair -> words holding it
  for w, word in enumerate(words):
    for pair in zip(word, word[1:]):
      counts[pair] += freqs[w]
      where[pair].add(w)
  heap = [(-count, pair) for pair, count in counts.items()]
  heapq.heapify(heap)

  merges: list[Pair] = []
  while NUM_BYTES + len(merges) < vocab_size:
    pair = _pop_most_frequent(heap, counts)
    if pair is None:
      break
    new_id = NUM_BYTES + len(merges)
    merges.append(pair)
    changed = set()
    for w in sorted(where.pop(pair)):
      old, new = words[w], _merge(words[w], pair, new_id)
      words[w] = new
      for p in zip(old, old[1:]):
        counts[p] -= freqs[w]
        changed.add(p)
      for p in zip(new, new[1:]):
        counts[p] += freqs[w]
        where[p].add(w)
        changed.add(p)
    for p in changed:
      if counts[p] > 0:
        heapq.heappush(heap, (-counts[p], p))
      else:
        del counts[p]
  return BPETokenizer(merges)


def create(kind: str, text: str, vocab_size: int = 0) -> Tokenizer:
  """A tokenizer of `kind` for `text`; `vocab_size` is used by 'bpe' only."""
  if kind == 'char':
    return char_tokenizer(text)
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    return train_bpe(text, vocab_size)
  raise ValueError(f'unknown tokenizer kind {kind!r}; allowed: {", ".join(KINDS)}')


def from_dict(d: dict) -> Tokenizer:
  """The tokenizer that `Tokenizer.to_dict` described."""
  kind = d.get('kind')
  if kind == 'char':
    return CharTokenizer(d['chars'])
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    return BPETokenizer(d['merges'])
  raise ValueError(f'unknown tokenizer kind {kind!r}; allowed: {", ".join(KINDS)}')
