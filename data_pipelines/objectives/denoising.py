"""BART denoising objective as pure NumPy, with fairseq's per-example semantics.

Reference semantics and every deliberate deviation: docs/objectives.md, "BART denoising".

The target is the clean block framed as `<s> block </s>`; the source is the target passed through
the noises of fairseq's `DenoisingDataset` in its order, each skipped when its ratio is 0:

  sentence permutation -> text infilling -> token masking -> token deletion -> insertion
  -> rotation.

fairseq runs one whole-word masking pass whose `mask_length` / `replace_length` select text
infilling (span-poisson, 1), token masking (subword, 1) or token deletion (subword, 0); here the
three are separate stages with their own ratios, so they compose.

Choices where fairseq gives no answer for our blocks, or where we deviate on purpose:

- Specials inside a block (the EOS between concatenated documents, pad, unk, ...) are never
  selected, masked, deleted or replaced, and are barriers for text infilling: a span covers
  whole words from its start and stops at the next special, as fairseq's spans stop at the final
  `</s>`, so it is shorter than drawn when it reaches one. The token after a special starts a
  word even without a word-start piece (as in `mlm.py`). Sentence permutation moves a special
  with its sentence (the EOS ending a document ends its sentence); rotation shifts it with the
  interior.
- Overlapping spans follow fairseq: every span masks its first token and deletes the rest of
  its words; a span start inside another span's extension is deleted with it. So each group of
  spans chained by overlap leaves one `<mask>`, while spans that merely touch leave adjacent
  masks. Span starts are distinct word starts (drawn without replacement).
- Zero-length Poisson spans become insertions at the end of the infilling stage (fairseq); their
  count is capped at (covered tokens - surviving spans), so the source after the masking stages
  is never longer than the target. This binds only for blocks of a few words and keeps
  `len(source) <= max_source_length(len(target), params)` for fixed-shape rows. Exactly that
  many tokens are inserted (fairseq recomputes the count as ceil(len * n / len), which float
  rounding can push to n + 1).
- Insertions, from zero-length spans or the insertion noise, follow fairseq's
  `add_insertion_noise`: ceil(n * random_ratio) of the n inserted tokens are random, the rest
  `<mask>`, so a single insertion is random whenever random_ratio > 0 (reproduced, not fixed).
  Masks placed by spans or token masking are random per mask with probability random_ratio.
- Random replacement tokens are uniform over `vocab.normal_ids` (never a special or sentinel);
  fairseq draws any id >= 1.
- Token masking and deletion choose among the non-special interior tokens that no earlier stage
  has placed (a `<mask>` or random token from infilling is never masked or deleted again).
- Rotation shifts the interior by s uniform in [1, n - 1] for n interior tokens, always a real
  cyclic shift; skipped when n < 2. fairseq's `add_rolling_noise` draws its offset from
  [1, L - 1] for L = n + 2 tokens, and both ends are no-ops there (offset 1 moves nothing,
  offset L - 1 moves the whole interior back onto itself), so fairseq rotates with probability
  rotate * (n - 1) / (n + 1); ours is fairseq's distribution given that a rotation happened.
- The Poisson span lengths follow fairseq's truncation (k = 0..127, cut after the first k > λ
  whose pmf is < 1e-7). fairseq's loop also stops at k = 0 when e^-λ < 1e-7 (λ > ~16), making
  every span zero-length; that collapse is not reproduced. λ must be >= 0.01.
- A sentence ends after a run of full stops (pieces in `vocab.sentence_end`, and EOS), so
  `?!` or `.</s>` stay together, and at the token before the final `</s>`. (fairseq ends it at
  the first stop of a run, the rest opening the next sentence, and leaves a last token that
  follows a full stop outside every sentence.)

Every draw comes from the record's generator in a fixed order, so the output is a function of
(block, generator state). `make_example` costs a fixed few dozen NumPy calls per record, no
Python loop per token, span or sentence; lookup tables are cached per VocabInfo object.

The noise stages are in `denoising_noises.py`; this module holds the parameters, the length
bounds and the entry points.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.objectives.denoising_noises import (
  count_sentences,
  noise,
  span_lengths,
  vocab_tables,
)
from data_pipelines.vocab import VocabInfo

# The public names, with the noise-module helpers callers have always used from here.
__all__ = ["DenoisingParams", "count_sentences", "make_example", "max_source_length",
           "min_block_length", "noise_with_stats", "span_lengths"]

_RATIOS = ("text_infilling", "token_masking", "token_deletion", "permute_sentences", "rotate",
           "insert", "random_ratio")
_MIN_LAMBDA = 0.01


@dataclasses.dataclass(frozen=True)
class DenoisingParams:
  """BART noise hyper-parameters (fairseq flag in brackets); 0 turns a noise off.

  Attributes:
    text_infilling: fraction of word starts masked by Poisson whole-word spans, one <mask>
      per span [--mask with --mask-length span-poisson --replace-length 1].
    token_masking: fraction of non-special tokens replaced by <mask>, each its own span.
    token_deletion: fraction of non-special tokens deleted.
    permute_sentences: fraction of sentences shuffled among themselves [--permute-sentences].
    rotate: probability of rotating the document [--rotate].
    insert: inserted tokens as a fraction of the source length [--insert].
    random_ratio: fraction of masks / inserted tokens that are a random normal token instead
      of <mask> [--mask-random; BART-large used 0.1].
    poisson_lambda: mean span length (in words) of text infilling [--poisson-lambda];
      >= 0.01 (fairseq takes any λ > 0, but tiny ones only draw empty spans).
  """

  text_infilling: float = 0.3
  token_masking: float = 0.0
  token_deletion: float = 0.0
  permute_sentences: float = 1.0
  rotate: float = 0.0
  insert: float = 0.0
  random_ratio: float = 0.1
  poisson_lambda: float = 3.0

  def __post_init__(self):
    # Invalid params would only surface as odd noise deep in a run; reject them at creation.
    self.validate()

  def validate(self) -> None:
    """Raises DataError with a one-line reason naming the field and its value."""
    for name in _RATIOS + ("poisson_lambda",):
      value = getattr(self, name)
      is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
      if name == "poisson_lambda":
        # Written as `not (in range)` so that NaN is rejected too.
        # Below the minimum nearly every drawn span is empty and filling the word budget
        # takes ~budget / λ draws.
        if not (is_number and math.isfinite(value) and value >= _MIN_LAMBDA):
          raise DataError(f"DenoisingParams.poisson_lambda must be a finite number >= "
                          f"{_MIN_LAMBDA}, got {value!r}")
      elif not (is_number and 0.0 <= value <= 1.0):
        raise DataError(f"DenoisingParams.{name} must be a number in [0, 1], got {value!r}")


def min_block_length(params: DenoisingParams) -> int:
  """Smallest raw block (without <s> and </s>) `make_example` accepts: 1 for every params.

  Noises that need more than a block offers are skipped: permutation below 2 sentences,
  rotation below 2 interior tokens, masking and deletion without candidates.
  """
  del params  # every noise degrades gracefully; kept so callers need not special-case
  return 1


def max_source_length(target_length: int, params: DenoisingParams) -> int:
  """Upper bound on len(source) for a target of `target_length` tokens (<s> and </s> included).

  The masking stages never lengthen the source (see the module docstring on the insertion cap)
  and the insertion noise adds ceil(len * insert) tokens to a source of len <= target_length.
  The bound is reached whenever the masking stages are off.
  """
  target_length = operator.index(target_length)
  return target_length + math.ceil(target_length * params.insert)


def _target(block: np.ndarray, params: DenoisingParams, vocab: VocabInfo) -> np.ndarray:
  block = np.asarray(block)
  if block.ndim != 1 or block.dtype.kind not in "iu":
    raise DataError(f"block must be a 1-D integer array, got {block.dtype} {block.shape}")
  minimum = min_block_length(params)
  if block.size < minimum:
    raise DataError(f"block too short for denoising: {block.size} tokens, need >= {minimum}")
  target = np.empty(block.size + 2, np.int32)
  target[0] = vocab.bos_id
  target[1:-1] = block
  target[-1] = vocab.eos_id
  return target


def make_example(block: np.ndarray, rng: np.random.Generator, params: DenoisingParams,
                 vocab: VocabInfo) -> dict[str, np.ndarray]:
  """Noises one raw block into a BART (source, target) pair.

  Args:
    block: int[B] token ids, B >= min_block_length(params); may hold EOS between documents.
    rng: the record's generator; the output is a function of (block, generator state).
    params: noise parameters.
    vocab: the vocabulary (lookup tables are cached per VocabInfo object).

  Returns:
    `input_ids`: int32[S] the source, <s> first and </s> last,
      S <= max_source_length(B + 2, params); `labels`: int32[B + 2] the clean `<s> block </s>`.
    The decoder input (labels shifted right) is built by the pipeline.

  Raises:
    DataError: if the block is not 1-D integer or is shorter than min_block_length(params).
  """
  target = _target(block, params, vocab)
  source = noise(target.copy(), rng, params, vocab_tables(vocab), vocab, None)
  return {"input_ids": source, "labels": target}


def noise_with_stats(block: np.ndarray, rng: np.random.Generator, params: DenoisingParams,
                     vocab: VocabInfo) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """`make_example` (same draws, same output) plus counts of what each enabled noise did.

  Counts (a key is present only when its stage ran): sentences, permuted_sentences;
  word_starts, sampled_words (== ceil(word_starts * text_infilling)), spans (non-zero),
  zero_length_spans, covered_words, covered_tokens, surviving_spans (masks left by spans),
  random_spans (of those, random ids), infill_inserts (zero-length spans kept after the cap);
  masked_tokens, random_masked_tokens; deleted_tokens; inserted_tokens,
  random_inserted_tokens; rotation (the shift, present only when rotated).
  """
  target = _target(block, params, vocab)
  stats: dict[str, int] = {}
  source = noise(target.copy(), rng, params, vocab_tables(vocab), vocab, stats)
  return {"input_ids": source, "labels": target}, stats
