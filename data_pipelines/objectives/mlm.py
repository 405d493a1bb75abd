"""Masked-LM objective (BERT / RoBERTa, optional whole-word masking) as pure NumPy.

Follows docs/objectives.md ("Masked LM"): dynamic masking with a per-record generator seeded by the
pipeline from (seed, epoch, index); an exact selection count by probabilistic rounding over the
candidate positions; specials (CLS/SEP/EOS/pad/mask/unk/sentinels) are never selected and never
drawn as random replacements; 80/10/10 mask/random/keep by default.

`make_example` is what the pipeline calls once per record; it costs a fixed ~20 small NumPy
calls per record, with per-vocabulary lookup tables built once (`vocab_tables`).
"""

from __future__ import annotations

import dataclasses
import math
import weakref

import numpy as np

from data_pipelines.vocab import IGNORE_INDEX, VocabInfo


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLMParams:
  """Masking hyper-parameters.

  Attributes:
    max_predictions: static upper bound on the number of selected tokens per sequence; the
      model gathers exactly this many positions. See `default_max_predictions`.
    mask_prob: fraction of candidate tokens (token mode) or words (whole-word mode) selected.
    mask_token_frac: probability that a selected token becomes [MASK].
    random_token_frac: probability that a selected token becomes a random non-special id; the
      rest (1 - both) keep their original id.
    whole_word: select SentencePiece words and mask all of their pieces together.
    max_ngram: whole-word mode only: select n-grams of n <= max_ngram consecutive words, n
      drawn with p proportional to 1/n (ALBERT's n-gram masking); 1 = single words.
  """

  max_predictions: int
  mask_prob: float = 0.15
  mask_token_frac: float = 0.8
  random_token_frac: float = 0.1
  whole_word: bool = False
  max_ngram: int = 1

  def __post_init__(self):
    # Invalid params would only surface as odd masks deep in a run; reject them at creation.
    self.validate()

  @property
  def keep_frac(self) -> float:
    """Probability that a selected token keeps its original id."""
    return 1.0 - self.mask_token_frac - self.random_token_frac

  def validate(self) -> None:
    """Raises ValueError (TypeError for a non-int max_predictions) with a one-line reason."""
    if not 0.0 < self.mask_prob < 1.0:
      raise ValueError(f"MLMParams.mask_prob must be in (0, 1), got {self.mask_prob}")
    if self.mask_token_frac < 0 or self.random_token_frac < 0:
      raise ValueError("MLMParams.mask_token_frac and random_token_frac must be >= 0, got "
                       f"{self.mask_token_frac} and {self.random_token_frac}")
    if self.mask_token_frac + self.random_token_frac > 1.0:
      raise ValueError("MLMParams.mask_token_frac + random_token_frac must be <= 1, got "
                       f"{self.mask_token_frac} + {self.random_token_frac}")
    if isinstance(self.max_predictions, bool) or not isinstance(self.max_predictions,
                                                                (int, np.integer)):
      raise TypeError(f"MLMParams.max_predictions must be an int, got {self.max_predictions!r}")
    if self.max_predictions < 1:
      raise ValueError(f"MLMParams.max_predictions must be >= 1, got {self.max_predictions}")
    if self.max_ngram < 1 or (self.max_ngram > 1 and not self.whole_word):
      raise ValueError(f"MLMParams.max_ngram must be >= 1, and > 1 only with whole_word, got "
                       f"{self.max_ngram} (whole_word={self.whole_word})")


def default_max_predictions(seq_len: int, mask_prob: float, whole_word: bool = False,
                            packed: bool = False) -> int:
  """The static number of positions the MLM head scores per row (CLS and SEP included).

  This is the one place the bound is computed: the training task, the FLOP count and the data
  pipeline all read it through `t5x_like.config.max_predictions`.

  Token mode: a block has n <= seq_len - 2 candidates and the objective selects
  floor(x) or floor(x) + 1 tokens with x = mask_prob * n, the latter only when x is not an
  integer, so at most ceil(mask_prob * (seq_len - 2)). This bound is tight (a block without
  specials reaches it) and selection is never truncated.

  Whole-word mode: the budget is counted in words, so the number of pieces varies with the
  lengths of the words drawn. With m = mask_prob * (seq_len - 2) expected pieces, the bound is
  ceil(m + 3 sqrt(m)): the piece count's standard deviation was measured at ~0.8 sqrt(m) on the
  bundled English and Korean corpora (7.0 at L=512, 3.4 at L=128), so this is ~4 standard
  deviations and cuts < 0.05% of the predictions at both lengths (see docs/objectives.md). A
  fixed relative margin would be too loose at L=512 and too tight at L=128. When the bound is
  exceeded whole words are dropped (see `make_example`), never split, and the count is
  reported as `dropped_by_objective`.

  Packed rows (several documents per row): each segment rounds its own count up, so k
  segments can exceed the single-block bound by up to k; 8 extra slots cover the rows seen in
  practice and the device reports the rest as dropped predictions.

  Args:
    seq_len: full model length L (the objective's block is L - 2 tokens).
    mask_prob: MLMParams.mask_prob.
    whole_word: MLMParams.whole_word.
    packed: documents are packed several to a row (data.pack_documents).

  Returns:
    An int in [1, seq_len - 2] (at least 1 even for seq_len <= 2, as MLMParams requires).
  """
  n_body = max(seq_len - 2, 0)
  expected = mask_prob * n_body
  bound = math.ceil(expected + 3.0 * math.sqrt(expected)) if whole_word else math.ceil(expected)
  if packed:
    bound += 8
  return max(1, min(bound, n_body))


@dataclasses.dataclass(frozen=True)
class VocabTables:
  """Per-vocabulary lookup arrays, built once so each record only does fancy indexing.

  Attributes:
    is_candidate: bool[V]; True for ids that may be selected (not special).
    starts_word: bool[V]; True for candidate ids whose piece begins a word.
    normal_ids: int32[N]; the non-special ids random replacements are drawn from.
  """

  is_candidate: np.ndarray
  starts_word: np.ndarray
  normal_ids: np.ndarray

  @classmethod
  def from_vocab(cls, vocab: VocabInfo) -> VocabTables:
    is_candidate = ~np.asarray(vocab.is_special, bool)
    starts_word = np.asarray(vocab.word_start, bool) & is_candidate
    normal_ids = vocab.normal_ids
    if normal_ids.size == 0:
      raise ValueError("vocabulary has no non-special ids to draw random replacements from")
    return cls(is_candidate=is_candidate, starts_word=starts_word, normal_ids=normal_ids)


# VocabInfo holds arrays, so it is unhashable; key on id() and keep a weak reference to detect
# a recycled id after the vocabulary is garbage-collected.
_TABLES: dict[int, tuple[weakref.ref, VocabTables]] = {}


def vocab_tables(vocab: VocabInfo) -> VocabTables:
  """Returns the cached `VocabTables` of `vocab` (built on first use)."""
  hit = _TABLES.get(id(vocab))
  if hit is not None and hit[0]() is vocab:
    return hit[1]
  tables = VocabTables.from_vocab(vocab)
  key = id(vocab)
  _TABLES[key] = (weakref.ref(vocab, lambda _, key=key: _TABLES.pop(key, None)), tables)
  return tables


def _probabilistic_round(x: float, rng: np.random.Generator) -> int:
  """floor(x) + Bernoulli(frac(x)): unbiased, and exactly x when x is an integer.

  Same distribution as fairseq's int(x + U); written this way because float rounding of
  x + U can reach x + 1 when x is integral and U is within an ulp of 1.
  """
  base = math.floor(x)
  return base + int(rng.random() < x - base)


def _select_tokens(cand: np.ndarray, rng: np.random.Generator, params: MLMParams,
                   ) -> tuple[np.ndarray, int]:
  """Positions (into the block) of the selected tokens, token mode.

  Args:
    cand: bool[B], True where the block token may be selected.

  Returns:
    (int[K] positions, cut): K = probabilistic_round(mask_prob * n) clipped to
    max_predictions; cut = how many the clip removed.
  """
  cand_pos = np.flatnonzero(cand)
  n = cand_pos.size
  want = _probabilistic_round(params.mask_prob * n, rng)
  num = min(want, params.max_predictions)
  if num == 0:
    return cand_pos[:0], want
  # The first `num` entries of a uniform shuffle are a uniform subset without replacement; for
  # n ~ 500 an in-place shuffle of the fresh position array is the cheapest way NumPy offers.
  rng.shuffle(cand_pos)
  return cand_pos[:num], want - num


def ngram_lengths_pmf(max_ngram: int) -> np.ndarray:
  """float[max_ngram]: P(n) for n = 1..max_ngram, proportional to 1/n (ALBERT)."""
  inverse = 1.0 / np.arange(1, max_ngram + 1)
  return inverse / inverse.sum()


def ngram_units(run_start: np.ndarray, rng: np.random.Generator, max_ngram: int) -> np.ndarray:
  """Groups W words into n-grams: int[W], the n-gram of each word (0, 1, ..., non-decreasing).

  The words are tiled left to right by n-grams whose lengths are drawn independently with
  P(n) proportional to 1/n, n <= max_ngram (one draw per word, used or not, so the generator
  advances by W draws); an n-gram never crosses a run start (`run_start`, bool[W]: the word
  follows a special such as a document's EOS or [SEP]) and is cut there.
  """
  n_words = run_start.shape[0]
  cdf = np.cumsum(ngram_lengths_pmf(max_ngram))
  lengths = np.searchsorted(cdf, rng.random(n_words) * cdf[-1], side="right") + 1
  ends = np.cumsum(lengths)
  unit_start = np.zeros(n_words, bool)
  unit_start[ends[ends < n_words]] = True
  unit_start |= run_start
  unit_start[:1] = True
  return np.cumsum(unit_start) - 1


def _select_words(block: np.ndarray, cand: np.ndarray, rng: np.random.Generator,
                  params: MLMParams, tables: VocabTables) -> np.ndarray:
  """Positions (into the block) of the selected tokens, whole-word mode.

  Args:
    block: int[B] token ids.
    cand: bool[B], True where the block token may be selected.

  Returns:
    (int[K] positions covering whole words only, K <= max_predictions; cut = the pieces of
    the budgeted words that did not fit).
  """
  n_body = block.shape[0]
  if n_body == 0:
    return np.empty(0, np.intp), 0
  follows_non_cand = np.empty(n_body, bool)
  follows_non_cand[0] = True  # the first block token follows [CLS]
  np.logical_not(cand[:-1], out=follows_non_cand[1:])
  starts = cand & (tables.starts_word[block] | follows_non_cand)
  n_words = int(np.count_nonzero(starts))
  budget = _probabilistic_round(params.mask_prob * n_words, rng)
  if budget == 0:
    return np.empty(0, np.intp), 0
  # Every candidate run begins with a start, so each candidate gets the id of its own word;
  # non-candidates get a stale id but are excluded through `cand`.
  word_of = np.cumsum(starts) - 1
  word_len = np.bincount(word_of[cand], minlength=n_words)
  if params.max_ngram > 1:
    # Units are n-grams of words; they are taken in a random order up to and including the
    # one that brings the selected words to the budget (it may overshoot by < max_ngram).
    unit_of_word = ngram_units(follows_non_cand[starts], rng, params.max_ngram)
    n_units = int(unit_of_word[-1]) + 1
    unit_len = np.bincount(unit_of_word, weights=word_len, minlength=n_units).astype(np.int64)
    unit_words = np.bincount(unit_of_word, minlength=n_units)
    order = rng.permutation(n_units)
    take = int(np.searchsorted(np.cumsum(unit_words[order]), budget, side="left")) + 1
    order = order[:take]
    word_of = unit_of_word[word_of]
    word_len, n_words = unit_len, n_units
  else:
    order = rng.permutation(n_words)[:budget]
  # Keep the longest prefix of the random order that fits; dropping from the end keeps the
  # choice uniform over words and never splits one.
  pieces = np.cumsum(word_len[order])
  fits = np.searchsorted(pieces, params.max_predictions, side="right")
  chosen = np.zeros(n_words, bool)
  chosen[order[:fits]] = True
  kept = int(pieces[fits - 1]) if fits else 0
  return np.flatnonzero(cand & chosen[word_of]), int(pieces[-1]) - kept


def make_example(block: np.ndarray, rng: np.random.Generator, params: MLMParams,
                 vocab: VocabInfo) -> dict[str, np.ndarray]:
  """Masks one block of L - 2 tokens and frames it as `[CLS] block [SEP]`.

  Selection. Candidates are the block positions whose id is not special (pad, EOS separators,
  CLS/SEP/mask/unk and sentinels are never selected).
  - Token mode: n candidates; K = floor(p n) + Bernoulli(frac(p n)) (probabilistic rounding,
    p = mask_prob), clipped to max_predictions; K positions uniform without replacement.
  - Whole-word mode: a word starts at a candidate whose piece is a word start
    (`vocab.word_start`, the SentencePiece `▁`) or at a candidate following a non-candidate
    position (a special, or [CLS] for the first token); a word is its start plus the following
    non-start candidates. With W words, the budget is floor(p W) + Bernoulli(frac(p W)) words,
    taken in a uniformly random order. If their pieces exceed max_predictions, the order is cut
    at the first word that does not fit (the longest fitting prefix is kept), so the piece count
    is <= max_predictions and no word is split.
  - N-gram mode (whole-word with max_ngram > 1, ALBERT): after the rounding draw, the words
    are tiled by n-grams (`ngram_units`: n <= max_ngram with P(n) ~ 1/n, cut at specials);
    n-grams are taken in a uniformly random order up to and including the one that reaches
    the budget of words, then cut at max_predictions pieces as above.
  Corruption. Each selected token independently becomes [MASK] with prob mask_token_frac, a
  uniform draw from `vocab.normal_ids` with prob random_token_frac (which may equal the
  original), else stays unchanged. The generator is consumed in a fixed order: the rounding
  draw, (n-gram mode: the W n-gram length draws,) the selection shuffle, then one [2, K]
  draw (action, replacement id).

  Args:
    block: int[L-2] token ids in [0, vocab_size), possibly with EOS separators or trailing pad.
    rng: the record's generator; the output is a function of (block, generator state).
    params: masking parameters.
    vocab: the vocabulary (lookup tables are cached per VocabInfo object).

  Returns:
    int32 features of shape [L]: `input_ids` (masked, framed), `attention_mask` (0 at pad),
    `token_type_ids` (zeros), `labels` (original id at selected positions, -100 elsewhere);
    and the int32 scalar `dropped_by_objective`: the selections that max_predictions cut
    (pieces of the dropped words), which the training metrics add to `dropped_predictions`.
  """
  block = np.asarray(block)
  masked, labels, cut = mask_tokens(block, rng, params, vocab)
  seq_len = block.shape[0] + 2
  input_ids = np.empty(seq_len, np.int32)
  input_ids[0] = vocab.cls_id
  input_ids[1:-1] = masked
  input_ids[-1] = vocab.sep_id
  framed_labels = np.full(seq_len, IGNORE_INDEX, np.int32)
  framed_labels[1:-1] = labels
  return {
      "input_ids": input_ids,
      # Replacements are never pad, so pad in the output is exactly the block's padding.
      "attention_mask": (input_ids != vocab.pad_id).astype(np.int32),
      "token_type_ids": np.zeros(seq_len, np.int32),
      "labels": framed_labels,
      "dropped_by_objective": np.int32(cut),
  }


def mask_tokens(tokens: np.ndarray, rng: np.random.Generator, params: MLMParams,
                vocab: VocabInfo) -> tuple[np.ndarray, np.ndarray, int]:
  """The selection and corruption of `make_example` on an unframed row body.

  `tokens` is int[n], e.g. a block, or a sentence pair `A [SEP] B`: specials in it are never
  selected and end a word (a word never spans one). The body is read as if it followed
  [CLS].

  Returns:
    (int32[n] corrupted tokens, int32[n] labels: the original id at selected positions and
    -100 elsewhere, the number of selections `max_predictions` cut).
  """
  tables = vocab_tables(vocab)
  block = np.asarray(tokens)
  if block.ndim != 1 or block.dtype.kind not in "iu":
    raise ValueError(f"block must be a 1-D integer array, got {block.dtype} {block.shape}")
  cand = tables.is_candidate.take(block)
  if params.whole_word:
    pos, cut = _select_words(block, cand, rng, params, tables)
  else:
    pos, cut = _select_tokens(cand, rng, params)

  original = block[pos]
  u, v = rng.random((2, pos.size))
  # floor(v * N) for v uniform on [0, 1) in steps of 2^-53 is uniform on [0, N) up to a
  # relative bias of N / 2^53 (< 1e-11 for real vocabularies), at a fifth of the cost of
  # rng.integers for a few dozen draws.
  v *= tables.normal_ids.size
  random_ids = tables.normal_ids[v.astype(np.intp)]
  fm = params.mask_token_frac
  corrupted = np.where(u < fm, vocab.mask_id,
                       np.where(u < fm + params.random_token_frac, random_ids, original))
  masked = block.astype(np.int32)
  labels = np.full(block.shape[0], IGNORE_INDEX, np.int32)
  labels[pos] = original
  masked[pos] = corrupted
  return masked, labels, int(cut)
