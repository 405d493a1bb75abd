"""T5 span-corruption objective as pure NumPy (OBJECTIVES.md §2).

A block of raw tokens is split into alternating non-noise / noise spans (non-noise first, noise
last). The encoder input keeps the non-noise tokens and replaces each noise span by one
sentinel; the decoder target is each sentinel followed by the noise span it stands for. Both end
in EOS. Sentinels count down from the top of the vocabulary (`VocabInfo.sentinel_ids`:
`<extra_id_0>` = vocab_size-1, then -2, ...), never above it.

Semantics follow T5's `random_spans_helper`, `random_spans_noise_mask` and
`noise_span_to_unique_sentinel` / `nonnoise_span_to_unique_sentinel`, with one deliberate
difference: the span count is also capped by the noise and non-noise token counts so that every
segment is non-empty even for extreme densities (T5 would produce empty segments there). For the
usual settings (density 0.15, mean span 3, blocks of tens of tokens or more) the cap never binds.
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np

from data_pipelines.vocab import VocabInfo


@dataclasses.dataclass(frozen=True)
class SpanCorruptionParams:
  """Span-corruption hyper-parameters.

  Attributes:
    noise_density: fraction of the block's tokens that are noise (moved to the targets).
    mean_noise_span_length: average number of tokens per noise span.
  """

  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0

  def __post_init__(self):
    # Invalid params would only surface as odd masks deep in a run; reject them at creation.
    self.validate()

  def validate(self) -> None:
    """Raises ValueError with a one-line reason when a parameter is out of range."""
    # Written as `not (in range)` so that NaN is rejected too.
    if not 0.0 < self.noise_density < 1.0:
      raise ValueError("SpanCorruptionParams.noise_density must be in (0, 1), both ends "
                       f"excluded, got {self.noise_density}")
    if not self.mean_noise_span_length >= 1.0:
      raise ValueError("SpanCorruptionParams.mean_noise_span_length must be >= 1, got "
                       f"{self.mean_noise_span_length}")


def random_spans_helper(inputs_length: int, noise_density: float = 0.15,
                        mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """Raw block length whose corrupted inputs fit `inputs_length` (T5's `random_spans_helper`).

  For a raw length t: n = round(t * d) noise tokens, s = round(n / μ) spans, inputs have
  t - n + s + 1 tokens and targets n + s + 1 (the +1 is EOS). The inputs length is
  non-decreasing in t (each step adds 1 - Δn + Δs with Δn, Δs in {0, 1}), so the largest t
  that fits is the last index of a vectorised scan. `round` is half-to-even, as in T5.

  Args:
    inputs_length: the encoder length I the pipeline must produce (EOS included), >= 1.
    noise_density: SpanCorruptionParams.noise_density.
    mean_noise_span_length: SpanCorruptionParams.mean_noise_span_length.

  Returns:
    (tokens_length, targets_length): the largest t with inputs(t) <= I, and n + s + 1 for it.
    Blocks of exactly t tokens give inputs of length inputs(t) (== I for the usual lengths,
    e.g. 512 -> (568, 114)) and targets of exactly targets_length.
  """
  SpanCorruptionParams(noise_density, mean_noise_span_length)  # validates
  if inputs_length < 1:
    raise ValueError(f"inputs_length must be >= 1 (room for EOS), got {inputs_length}")
  # inputs(t) >= t - (t d + 1/2) + 1 > t (1 - d), so no t beyond I / (1 - d) can fit.
  upper = int(np.ceil(inputs_length / (1.0 - noise_density))) + 2
  t = np.arange(upper + 1)
  n = np.round(t * noise_density)
  s = np.round(n / mean_noise_span_length)
  inputs = t - n + s + 1
  best = int(np.flatnonzero(inputs <= inputs_length)[-1])  # t = 0 always fits (inputs = 1)
  return best, int(n[best] + s[best] + 1)


def _check_length(length: int) -> None:
  """Rejects blocks with no room for one non-noise and one noise token."""
  if length < 2:
    raise ValueError(f"block too short for span corruption: {length} tokens, need >= 2 (one "
                     "non-noise and one noise token)")


def span_counts(length: int, params: SpanCorruptionParams) -> tuple[int, int]:
  """(num_noise, num_spans) for a block of `length` >= 2 tokens."""
  num_noise = min(max(round(length * params.noise_density), 1), length - 1)
  num_spans = max(round(num_noise / params.mean_noise_span_length), 1)
  # Both the noise and non-noise tokens are cut into num_spans non-empty segments.
  num_spans = min(num_spans, num_noise, length - num_noise)
  return num_noise, num_spans


def output_lengths(raw_length: int, params: SpanCorruptionParams) -> tuple[int, int]:
  """Exact (inputs, targets) lengths `make_example` gives a block of `raw_length` tokens.

  The noise count n and span count s depend only on the length and the params (see
  `random_spans_noise_mask`), so the lengths are deterministic: inputs L - n + s + 1 and
  targets n + s + 1, EOS included. Unlike `random_spans_helper`'s formula this includes the
  clipping of n to [1, L - 1] and the cap of s by n and L - n, so it is exact for every L >= 2,
  e.g. 568 -> (512, 114) at the default params.

  Args:
    raw_length: L, the number of raw tokens in the block.
    params: span-corruption parameters.

  Returns:
    (len(input_ids), len(labels)).

  Raises:
    ValueError: if raw_length < 2, as `make_example` would.
  """
  length = operator.index(raw_length)
  _check_length(length)
  num_noise, num_spans = span_counts(length, params)
  return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def _random_segment_lengths(num_items: int, num_segments: int,
                            rng: np.random.Generator) -> np.ndarray:
  """Lengths of a uniformly random composition of num_items into num_segments parts >= 1.

  Compositions correspond one-to-one to choosing num_segments - 1 of the num_items - 1 gaps
  between items as cut points, so a uniform choice without replacement is uniform over them.

  Returns:
    int[num_segments], all >= 1, summing to num_items.
  """
  cuts = rng.choice(num_items - 1, size=num_segments - 1, replace=False)
  cuts.sort()
  bounds = np.empty(num_segments + 1, np.int64)
  bounds[0] = 0
  bounds[1:-1] = cuts + 1
  bounds[-1] = num_items
  return np.diff(bounds)


def random_spans_noise_mask(length: int, rng: np.random.Generator,
                            params: SpanCorruptionParams) -> np.ndarray:
  """Noise mask with an exact noise count and span count (T5's `random_spans_noise_mask`).

  num_noise = clip(round(L d), 1, L - 1), num_spans = max(round(num_noise / μ), 1) (also
  <= num_noise and <= L - num_noise). Noise and non-noise tokens are each split into num_spans
  non-empty segments, uniformly over compositions, and interleaved non-noise first, so the mask
  starts with non-noise and ends with noise. L < 2 is raised to 2 for the draw and the mask cut
  back, as in T5. The generator is consumed in a fixed order: the non-noise cuts, then the noise
  cuts.

  Args:
    length: L, the number of raw tokens (>= 0).
    rng: the record's generator.
    params: span-corruption parameters.

  Returns:
    bool[L], True at noise positions.
  """
  orig_length = int(length)
  length = max(orig_length, 2)
  num_noise, num_spans = span_counts(length, params)
  nonnoise_lengths = _random_segment_lengths(length - num_noise, num_spans, rng)
  noise_lengths = _random_segment_lengths(num_noise, num_spans, rng)
  # [b0, a0, b1, a1, ...]: repeat False/True by the interleaved segment lengths.
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
  flags = np.tile(np.array([False, True]), num_spans)
  return np.repeat(flags, interleaved)[:orig_length]


def _replace_spans(tokens: np.ndarray, in_span: np.ndarray, sentinels: np.ndarray,
                   eos_id: int) -> np.ndarray:
  """Replaces each run of True in `in_span` by the next sentinel, drops the rest, adds EOS.

  Args:
    tokens: int[L] block.
    in_span: bool[L]; its runs are the spans to collapse.
    sentinels: int[>= number of runs] sentinel ids, used in order.
    eos_id: appended at the end.

  Returns:
    int32[L - (tokens in runs) + runs + 1].
  """
  prev = np.empty_like(in_span)
  prev[0] = False
  prev[1:] = in_span[:-1]
  first = in_span & ~prev
  out = tokens.astype(np.int32)  # a copy
  out[first] = sentinels[: int(np.count_nonzero(first))]
  kept = out[~(in_span & prev)]  # drop the span tokens after each span's first
  return np.append(kept, np.int32(eos_id)).astype(np.int32)


def make_example(block: np.ndarray, rng: np.random.Generator, params: SpanCorruptionParams,
                 vocab: VocabInfo) -> dict[str, np.ndarray]:
  """Span-corrupts one block of raw tokens into T5 encoder inputs and decoder targets.

  With noise spans N_k and the non-noise spans B_k before them (k < s, non-noise first):
    input_ids = B_0 S_0 B_1 S_1 ... B_{s-1} S_{s-1} EOS
    labels    = S_0 N_0 S_1 N_1 ... S_{s-1} N_{s-1} EOS
  with S_k = vocab.sentinel_ids[k] (vocab_size-1-k). For a block of exactly the
  `random_spans_helper` tokens_length t, the lengths are t - n + s + 1 and n + s + 1.

  Args:
    block: int[L] token ids, L >= 2 (normally the helper's tokens_length).
    rng: the record's generator; the output is a function of (block, generator state).
    params: span-corruption parameters.
    vocab: the vocabulary; must hold at least as many sentinels as spans.

  Returns:
    `input_ids`: int32[L - n + s + 1]; `labels`: int32[n + s + 1] (HF's name for T5 targets);
    `output_lengths(L, params)` gives both lengths without drawing.

  Raises:
    ValueError: if the block is not 1-D integer, has fewer than 2 tokens, or the vocab has
      fewer sentinel ids than the block has noise spans.
  """
  block = np.asarray(block)
  if block.ndim != 1 or block.dtype.kind not in "iu":
    raise ValueError(f"block must be a 1-D integer array, got {block.dtype} {block.shape}")
  length = block.shape[0]
  _check_length(length)
  # Check before drawing: ids past the sentinels would silently land on ordinary tokens.
  _, num_spans = span_counts(length, params)
  sentinels = np.asarray(vocab.sentinel_ids, np.int32)
  if sentinels.size < num_spans:
    raise ValueError(f"vocab without room for the sentinels: a block of {length} tokens has "
                     f"{num_spans} noise spans, each needing its own sentinel id, but the vocab "
                     f"has {sentinels.size} (VocabInfo.sentinel_ids)")
  noise = random_spans_noise_mask(length, rng, params)
  return {
      "input_ids": _replace_spans(block, noise, sentinels, vocab.eos_id),
      "labels": _replace_spans(block, ~noise, sentinels, vocab.eos_id),
  }
