"""The noise stages of BART denoising and the draws they make, as pure NumPy.

What each stage does and every deliberate choice against fairseq: docs/objectives.md, "BART
denoising", and the docstring of `denoising.py`, which holds the parameters and the entry points
(`make_example` runs `noise` here). Lookup tables are cached per VocabInfo object
(`vocab_tables`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.vocab import VocabInfo

if TYPE_CHECKING:  # annotations only: denoising.py imports this module
  from data_pipelines.objectives.denoising import DenoisingParams

# fairseq's span-length distribution: k < 128, tail cut after the first pmf below this.
_MAX_SPAN_WORDS = 128
_PMF_CUTOFF = 1e-7


@dataclasses.dataclass(frozen=True)
class _Tables:
  """Per-vocabulary lookup arrays (bool[V] unless noted), built once per VocabInfo."""

  special: np.ndarray
  word_start: np.ndarray  # non-special pieces that begin a word
  full_stop: np.ndarray  # sentence-ending pieces and EOS
  normal_ids: np.ndarray  # int32[N] pool of random replacements

  @classmethod
  def from_vocab(cls, vocab: VocabInfo) -> _Tables:
    special = np.asarray(vocab.is_special, bool).copy()
    special[[vocab.bos_id, vocab.eos_id, vocab.mask_id]] = True
    full_stop = np.zeros(vocab.vocab_size, bool)
    if vocab.sentence_end is not None:
      full_stop |= np.asarray(vocab.sentence_end, bool)
    full_stop[vocab.eos_id] = True
    normal_ids = np.flatnonzero(~special).astype(np.int32)
    if normal_ids.size == 0:
      raise DataError("vocabulary has no non-special ids to draw random replacements from")
    return cls(special=special, word_start=np.asarray(vocab.word_start, bool) & ~special,
               full_stop=full_stop, normal_ids=normal_ids)


# VocabInfo holds arrays, so it is unhashable; key on id() and keep a weak reference to detect
# a recycled id after the vocabulary is garbage-collected.
_TABLES: dict[int, tuple[weakref.ref, _Tables]] = {}


def vocab_tables(vocab: VocabInfo) -> _Tables:
  hit = _TABLES.get(id(vocab))
  if hit is not None and hit[0]() is vocab:
    return hit[1]
  tables = _Tables.from_vocab(vocab)
  key = id(vocab)
  _TABLES[key] = (weakref.ref(vocab, lambda _, key=key: _TABLES.pop(key, None)), tables)
  return tables


@functools.lru_cache(maxsize=64)
def _span_length_cdf(poisson_lambda: float) -> tuple[np.ndarray, float]:
  """CDF over k = 0..K-1 of fairseq's truncated Poisson (see denoising.py), and its mean."""
  k = np.arange(_MAX_SPAN_WORDS)
  # Log space without the e^-λ factor: λ^k / k! overflows float64 for large λ before k = 127.
  log_rel = k * math.log(poisson_lambda) - np.array([math.lgamma(i + 1.0) for i in k])
  tail = np.flatnonzero((log_rel - poisson_lambda < math.log(_PMF_CUTOFF)) &
                        (k > poisson_lambda))
  if tail.size:
    log_rel = log_rel[: tail[0] + 1]
  pmf = np.exp(log_rel - log_rel.max())
  pmf /= pmf.sum()
  cdf = np.cumsum(pmf)
  cdf[-1] = 1.0
  return cdf, float(np.dot(np.arange(pmf.size), pmf))


def span_lengths(budget: int, rng: np.random.Generator,
                 poisson_lambda: float) -> tuple[np.ndarray, int]:
  """Poisson span lengths summing to exactly `budget` words (fairseq's span-poisson).

  Lengths are drawn i.i.d. until their running sum reaches the budget; the last is trimmed so
  the sum is exact. Zero-length spans are counted apart (they become insertions).

  Returns:
    (int64[m] the non-zero lengths in draw order, summing to budget; the number of zeros).
  """
  if budget <= 0:
    return np.zeros(0, np.int64), 0
  cdf, mean = _span_length_cdf(float(poisson_lambda))
  # Enough draws for the budget on average plus slack; rarely a second round.
  chunk = min(4096, int(budget / max(mean, 1e-3) * 1.5) + 8)
  lengths = cdf.searchsorted(rng.random(chunk), side="right")
  total = lengths.cumsum()
  while total[-1] < budget:
    more = cdf.searchsorted(rng.random(chunk), side="right")
    lengths = np.concatenate([lengths, more])
    total = np.concatenate([total, total[-1] + more.cumsum()])
  last = int(total.searchsorted(budget))  # first index where the sum reaches the budget
  lengths = lengths[: last + 1]
  lengths[last] = budget - (total[last - 1] if last else 0)
  nonzero = lengths[lengths > 0]
  return nonzero, last + 1 - nonzero.size


def _random_or_mask(num: int, rng: np.random.Generator, random_ratio: float, tables: _Tables,
                    mask_id: int) -> np.ndarray:
  """int32[num]: each a random normal id with probability random_ratio, else mask_id."""
  u = rng.random((2, num))
  # floor(v * N) for v uniform on [0, 1) in steps of 2^-53 is uniform on [0, N) up to a
  # relative bias of N / 2^53, at a fraction of the cost of rng.integers for few draws.
  u[1] *= tables.normal_ids.size
  ids = tables.normal_ids[u[1].astype(np.intp)]
  return np.where(u[0] < random_ratio, ids, np.int32(mask_id))


def _sentence_ends(inner: np.ndarray, tables: _Tables) -> np.ndarray:
  """Exclusive end offsets (into `inner`, the tokens between <s> and </s>) of its sentences."""
  if inner.size == 0:
    return np.zeros(0, np.intp)
  stop = tables.full_stop.take(inner)
  stop[:-1] &= ~stop[1:]  # the last full stop of each run
  stop[-1] = True  # fairseq: the last span is a sentence even without a full stop
  return np.flatnonzero(stop) + 1


def count_sentences(block: np.ndarray, vocab: VocabInfo) -> int:
  """Sentences in a raw block as sentence permutation sees them (0 for an empty block)."""
  return int(_sentence_ends(np.asarray(block), vocab_tables(vocab)).size)


def _permute_sentences(x: np.ndarray, rng: np.random.Generator, ratio: float, tables: _Tables,
                       stats: dict | None) -> np.ndarray:
  """Shuffles ceil(n * ratio) of the n sentences among themselves, in place in x[1:-1]."""
  inner = x[1:-1]
  ends = _sentence_ends(inner, tables)
  n = ends.size
  k = math.ceil(n * ratio)
  if stats is not None:
    stats.update(sentences=n, permuted_sentences=k if k >= 2 else 0)
  if k < 2:
    return x
  if k == n:
    order = rng.permutation(n)
  else:  # fairseq: pick k sentences, then permute them among their own slots
    chosen = rng.permutation(n)[:k]
    order = np.arange(n)
    order[chosen] = chosen[rng.permutation(k)]
  starts = np.empty(n, np.intp)
  starts[0] = 0
  starts[1:] = ends[:-1]
  lengths = ends - starts
  new_lengths = lengths[order]
  # Output offset o of a sentence placed at out_start reads inner[starts[order] + o].
  shift = starts[order] - (new_lengths.cumsum() - new_lengths)
  index = np.repeat(shift, new_lengths)
  index += np.arange(inner.size)
  x[1:-1] = inner[index]
  return x


def _distinct(population: int, num: int, rng: np.random.Generator) -> np.ndarray:
  """A uniform ordered sample of `num` distinct ints from [0, population), num <= population."""
  if num * num <= population:
    # Few repeats expected (P <= 1/2): i.i.d. draws, redrawn on a repeat, cost two small calls
    # where a permutation of the whole population costs several microseconds.
    while True:
      out = (rng.random(num) * population).astype(np.intp)
      if num < 2 or len(set(out.tolist())) == num:
        return out
  return rng.permutation(population)[:num]


def _insert(x: np.ndarray, num: int, rng: np.random.Generator, random_ratio: float,
            tables: _Tables, vocab: VocabInfo) -> tuple[np.ndarray, np.ndarray]:
  """fairseq's add_insertion_noise with exactly `num` new tokens, never first or last.

  Returns:
    (int32[len(x) + num] the new source, bool[len(x) + num] True at the inserted tokens).
  """
  total = x.size + num
  # Positions 1..total-2 of the output, in random order: the first ones get the random ids.
  where = _distinct(total - 2, num, rng) + 1
  inserted = np.zeros(total, bool)
  inserted[where] = True
  out = np.empty(total, np.int32)
  out[~inserted] = x
  num_random = math.ceil(num * random_ratio)
  out[where[num_random:]] = vocab.mask_id
  u = rng.random(num_random) * tables.normal_ids.size
  out[where[:num_random]] = tables.normal_ids[u.astype(np.intp)]
  return out, inserted


def _infill_draws(num_words: int, rng: np.random.Generator, params: DenoisingParams,
                  tables: _Tables, vocab: VocabInfo
                  ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
  """The draws of text infilling over `num_words` candidate word starts, in fairseq's order.

  Returns:
    (int[m] starting word index of each non-zero span, distinct; int64[m] its length in words;
    the number of zero-length spans; int32[m] its <mask> or random replacement id).
  """
  budget = math.ceil(num_words * params.text_infilling)
  lengths, num_zero = span_lengths(budget, rng, params.poisson_lambda)
  starts = rng.permutation(num_words)[: lengths.size]
  replacement = _random_or_mask(lengths.size, rng, params.random_ratio, tables, vocab.mask_id)
  return starts, lengths, num_zero, replacement


def _text_infilling(x: np.ndarray, placed: np.ndarray | None, rng: np.random.Generator,
                    params: DenoisingParams, tables: _Tables, vocab: VocabInfo,
                    stats: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
  """Poisson whole-word spans, one <mask> (or random id) each; see denoising.py's docstring.

  Args:
    x: int32[L] source, <s> first, </s> last.
    placed: bool[L] marking tokens placed by noise, or None when no later stage needs it.

  Returns:
    The new source and its `placed` flags (None if `placed` was None).
  """
  length = x.size
  special = tables.special.take(x)
  special[0] = special[-1] = True
  starts_word = tables.word_start.take(x)
  starts_word[1:] |= special[:-1] & ~special[1:]  # a token after a special starts a word
  word_pos = np.flatnonzero(starts_word)
  starts, lengths, num_zero, replacement = _infill_draws(word_pos.size, rng, params, tables,
                                                         vocab)
  num_spans = lengths.size
  if stats is not None:
    stats.update(word_starts=word_pos.size, sampled_words=int(lengths.sum()), spans=num_spans,
                 zero_length_spans=num_zero)
  if num_spans == 0:
    if stats is not None:
      stats.update(covered_words=0, covered_tokens=0, surviving_spans=0, random_spans=0,
                   infill_inserts=0)
    return x, placed
  # Words between two specials form a segment; a span ends at its drawn length or at the end
  # of its segment, whichever is first. end_word == len(word_pos) means "up to </s>".
  segment = special.cumsum()[word_pos]
  end_word = np.minimum(starts + lengths, segment.searchsorted(segment[starts], side="right"))
  bound = np.empty(word_pos.size + 1, np.intp)
  bound[:-1] = word_pos
  bound[-1] = length - 1
  first, stop = word_pos[starts], bound[end_word]  # token range [first, stop), specials aside
  depth = (np.bincount(first, minlength=length + 1) - np.bincount(stop, minlength=length + 1)
           ).cumsum()
  # A start covered by another span's extension (depth >= 2 there) is deleted with it.
  survives = depth[first] == 1
  covered = depth[:length] > 0
  covered &= ~special
  keep = ~covered
  mask_pos = first[survives]
  keep[mask_pos] = True
  x[mask_pos] = replacement[survives]
  num_covered = int(np.count_nonzero(covered))
  num_survive = mask_pos.size
  num_insert = min(num_zero, num_covered - num_survive)
  x = x[keep]
  if placed is not None:
    placed[mask_pos] = True
    placed = placed[keep]
  if stats is not None:
    stats.update(covered_words=int(np.count_nonzero(covered & starts_word)),
                 covered_tokens=num_covered, surviving_spans=num_survive,
                 random_spans=int(np.count_nonzero(replacement[survives] != vocab.mask_id)),
                 infill_inserts=num_insert)
  if num_insert:
    x, inserted = _insert(x, num_insert, rng, params.random_ratio, tables, vocab)
    if placed is not None:
      new_placed = inserted.copy()
      new_placed[~inserted] = placed
      placed = new_placed
  return x, placed


def _choose_candidates(x: np.ndarray, placed: np.ndarray, ratio: float,
                       rng: np.random.Generator, tables: _Tables) -> np.ndarray:
  """ceil(n * ratio) distinct positions among the n interior, non-special, unplaced tokens."""
  cand = ~tables.special.take(x)
  cand &= ~placed
  cand[0] = cand[-1] = False
  pos = np.flatnonzero(cand)
  num = math.ceil(pos.size * ratio)
  if num == 0:
    return pos[:0]
  if num < pos.size:
    rng.shuffle(pos)
  return pos[:num]


def noise(x: np.ndarray, rng: np.random.Generator, params: DenoisingParams, tables: _Tables,
           vocab: VocabInfo, stats: dict | None) -> np.ndarray:
  """The source made from a copy `x` of the target (modified in place where possible), by
  the enabled noises in fairseq's order."""
  if params.permute_sentences > 0:
    x = _permute_sentences(x, rng, params.permute_sentences, tables, stats)
  track = params.token_masking > 0 or params.token_deletion > 0
  placed = np.zeros(x.size, bool) if track else None
  if params.text_infilling > 0:
    x, placed = _text_infilling(x, placed, rng, params, tables, vocab, stats)
  if params.token_masking > 0:
    pos = _choose_candidates(x, placed, params.token_masking, rng, tables)
    x[pos] = _random_or_mask(pos.size, rng, params.random_ratio, tables, vocab.mask_id)
    placed[pos] = True
    if stats is not None:
      stats.update(masked_tokens=pos.size,
                   random_masked_tokens=int(np.count_nonzero(x[pos] != vocab.mask_id)))
  if params.token_deletion > 0:
    pos = _choose_candidates(x, placed, params.token_deletion, rng, tables)
    keep = np.ones(x.size, bool)
    keep[pos] = False
    x = x[keep]
    if stats is not None:
      stats.update(deleted_tokens=pos.size)
  if params.insert > 0:
    num = math.ceil(x.size * params.insert)
    x, _ = _insert(x, num, rng, params.random_ratio, tables, vocab)
    if stats is not None:
      stats.update(inserted_tokens=num, random_inserted_tokens=math.ceil(num * params.random_ratio))
  if params.rotate > 0 and rng.random() < params.rotate and x.size >= 4:
    shift = 1 + int(rng.random() * (x.size - 3))  # uniform in [1, interior - 1]
    x = np.concatenate([x[:1], x[1 + shift:-1], x[1:1 + shift], x[-1:]])
    if stats is not None:
      stats.update(rotation=shift)
  return x
