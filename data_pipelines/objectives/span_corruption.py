"""T5 span-corruption objective as pure NumPy.

Reference semantics and every deliberate deviation: docs/objectives.md, "T5 span corruption".

A block of raw tokens is split into alternating non-noise / noise spans (non-noise first, noise
last). The encoder input keeps the non-noise tokens and replaces each noise span by one
sentinel; the decoder target is each sentinel followed by the noise span it stands for. Both end
in EOS. Sentinels count down from the top of the vocabulary (`VocabInfo.sentinel_ids`:
`<extra_id_0>` = vocab_size-1, then -2, ...), never above it.

Semantics follow T5 (google-research/text-to-text-transfer-transformer, t5/data/preprocessors.py:
`random_spans_helper`, `random_spans_noise_mask`, `noise_span_to_unique_sentinel` /
`nonnoise_span_to_unique_sentinel`):

- Counts: num_noise = round(float32(L) * float32(d)) and num_spans =
  round(float32(num_noise) / float32(mu)), rounded half to even, in float32 as T5's
  `random_spans_noise_mask` does (float64 differs at ~1% of lengths, e.g. 190 -> 28 vs 29).
- `random_spans_helper` is T5's, float64 Python rounding and the "minor hack" at
  noise_density == 0.5 included (512 -> (766, 512)).
- `random_roll` (off by default, as in T5) rotates the mask by a random offset so that short
  blocks, which have a single noise span that would always sit at the end, get it anywhere.

Deliberate differences, each for a correct fixed-shape pipeline:

- The span count is also capped by the noise and non-noise token counts so that every segment
  is non-empty even for extreme densities (T5 would produce empty segments there). For the usual
  settings (density 0.15, mean span 3, blocks of tens of tokens or more) the cap never binds.
- `random_roll` draws T5's uniform offset conditioned on not cutting a noise span in two (T5
  can split the wrapped span, giving num_spans + 1 spans and one token more in each output), so
  the output lengths stay `output_lengths(L)` and the rows keep their fixed shapes. The targets
  are built as `S_k N_k` pairs, so each target sentinel announces the span it replaces in the
  inputs even when a rolled mask starts with noise (T5's `nonnoise_span_to_unique_sentinel`
  misaligns them there). Without the roll both constructions give identical outputs.
- `block_lengths` (what the pipeline cuts) takes T5's tokens_length but the exact targets
  length of the float32 counts, which can exceed the float64 helper's by a few tokens (172 ->
  190 raw tokens, targets 40 vs 38), so no target is ever truncated.

Documents: the pipeline's blocks for this objective concatenate documents with no separator
between them, as T5's `reduce_concat_tokens` (see `data_pipelines.prepare`), so no target
teaches the decoder to emit EOS before its end.
"""

from __future__ import annotations

import dataclasses
import functools
import operator

import numpy as np

from data_pipelines.vocab import VocabInfo


@dataclasses.dataclass(frozen=True)
class SpanCorruptionParams:
  """Span-corruption hyper-parameters.

  Attributes:
    noise_density: fraction of the block's tokens that are noise (moved to the targets).
    mean_noise_span_length: average number of tokens per noise span.
    random_roll: rotate each mask by a random offset that keeps its noise spans whole (T5's
      `random_roll`, off by default as in T5); see `random_spans_noise_mask`.
  """

  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  random_roll: bool = False

  def __post_init__(self):
    # Invalid params would only surface as odd masks deep in a run; reject them at creation.
    self.validate()

  def validate(self) -> None:
    """Raises ValueError (TypeError for a non-bool random_roll) with a one-line reason."""
    # Written as `not (in range)` so that NaN is rejected too.
    if not 0.0 < self.noise_density < 1.0:
      raise ValueError("SpanCorruptionParams.noise_density must be in (0, 1), both ends "
                       f"excluded, got {self.noise_density}")
    if not self.mean_noise_span_length >= 1.0:
      raise ValueError("SpanCorruptionParams.mean_noise_span_length must be >= 1, got "
                       f"{self.mean_noise_span_length}")
    if not isinstance(self.random_roll, (bool, np.bool_)):
      raise TypeError(f"SpanCorruptionParams.random_roll must be a bool, got "
                      f"{self.random_roll!r}")


def random_spans_helper(inputs_length: int, noise_density: float = 0.15,
                        mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """T5's `random_spans_helper`: raw block length whose corrupted inputs fit `inputs_length`.

  For a raw length t: n = round(t * d) noise tokens, s = round(n / mu) spans (float64, half to
  even, as T5's Python `round`), inputs have t - n + s + 1 tokens and targets n + s + 1 (the +1
  is EOS). The inputs length is non-decreasing in t (each step adds 1 - dn + ds with dn, ds in
  {0, 1}), so T5's loop ends at the largest t that fits: the last index of a vectorised scan.
  At d == 0.5, where the targets would come out one longer than the inputs, T5 takes one raw
  token off and reports one target fewer (its "minor hack" to keep both a round number:
  512 -> (766, 512), not (767, 513)); so do we.

  The pipeline cuts `block_lengths` blocks, which differ from these only where T5's float64
  formula disagrees with its own float32 mask (see there).

  Args:
    inputs_length: the encoder length I (EOS included), >= 1.
    noise_density: SpanCorruptionParams.noise_density.
    mean_noise_span_length: SpanCorruptionParams.mean_noise_span_length.

  Returns:
    (tokens_length, targets_length) exactly as T5's helper, e.g. 512 -> (568, 114).
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
  targets = int(n[best] + s[best] + 1)
  if noise_density == 0.5 and targets > inputs[best]:
    # T5 assumes one raw token fewer is one target fewer; it reports that, not a recount.
    best, targets = best - 1, targets - 1
  return best, targets


def block_lengths(inputs_length: int, params: SpanCorruptionParams) -> tuple[int, int]:
  """(raw tokens per block, targets length) the pipeline uses for encoder inputs of I.

  The raw length is T5's `random_spans_helper` tokens_length whenever a block of it corrupts
  to exactly I inputs (every usual length, e.g. 512 -> 568 at d = 0.15, 766 at d = 0.5);
  otherwise (tiny I, float32 counts, or the d = 0.5 hack leaving I - 1 inputs) the largest raw
  length that does; failing that (extreme params, e.g. mu = 1 with d > 0.5 gives only odd
  inputs lengths) the largest whose inputs fit. The targets length is the exact one of
  `output_lengths` (float32 counts), which can exceed T5's float64 figure (172 -> 190 raw
  tokens: targets 40 where T5 says 38 and would truncate).

  Args:
    inputs_length: the encoder length I (EOS included), >= 8 in the pipeline.
    params: span-corruption parameters.

  Returns:
    (tokens_length t >= 2, output_lengths(t)[1]); `output_lengths(t)[0]` is I except in the
    last case above.
  """
  tokens, _ = random_spans_helper(inputs_length, params.noise_density,
                                  params.mean_noise_span_length)
  if tokens < 2 or output_lengths(tokens, params)[0] != inputs_length:
    upper = int(np.ceil(inputs_length / (1.0 - params.noise_density))) + 2
    lengths = np.arange(2, upper + 1)
    num_noise, num_spans = noise_counts(lengths, params)
    inputs = lengths - num_noise + num_spans + 1
    exact = np.flatnonzero(inputs == inputs_length)
    fits = exact if exact.size else np.flatnonzero(inputs <= inputs_length)
    tokens = int(lengths[fits[-1]]) if fits.size else 2
  return tokens, output_lengths(tokens, params)[1]


def _check_length(length: int) -> None:
  """Rejects blocks with no room for one non-noise and one noise token."""
  if length < 2:
    raise ValueError(f"block too short for span corruption: {length} tokens, need >= 2 (one "
                     "non-noise and one noise token)")


def noise_counts(lengths: np.ndarray, params: SpanCorruptionParams,
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Vectorised (num_noise, num_spans) for blocks of `lengths` >= 2 tokens.

  T5 computes both in float32 (`tf.round(to_float(length) * noise_density)`, half to even),
  so we do too: float64 gives another count at ~1% of lengths (190 -> 28.499... vs 28.500002).

  Args:
    lengths: int[...] block lengths, each >= 2.
    params: span-corruption parameters.

  Returns:
    int64[...] noise counts in [1, L - 1] and int64[...] span counts in [1, min(n, L - n)].
  """
  lengths = np.asarray(lengths, np.int64)
  density = np.float32(params.noise_density)
  num_noise = np.round(lengths.astype(np.float32) * density).astype(np.int64)
  num_noise = np.clip(num_noise, 1, lengths - 1)
  num_spans = np.round(num_noise.astype(np.float32)
                       / np.float32(params.mean_noise_span_length)).astype(np.int64)
  # Both the noise and non-noise tokens are cut into num_spans non-empty segments.
  num_spans = np.minimum(np.maximum(num_spans, 1), np.minimum(num_noise, lengths - num_noise))
  return num_noise, num_spans


def span_counts(length: int, params: SpanCorruptionParams) -> tuple[int, int]:
  """(num_noise, num_spans) for a block of `length` >= 2 tokens (see `noise_counts`)."""
  return _span_counts(int(length), params.noise_density, params.mean_noise_span_length)


@functools.lru_cache(maxsize=4096)
def _span_counts(length: int, noise_density: float, mean_noise_span_length: float,
                 ) -> tuple[int, int]:
  # Cached: a pipeline sees few distinct lengths, and the float32 NumPy scalar arithmetic
  # costs ~12 us a call, a sixth of a 568-token make_example (called twice per record).
  num_noise, num_spans = noise_counts(np.int64(length), SpanCorruptionParams(
      noise_density=noise_density, mean_noise_span_length=mean_noise_span_length))
  return int(num_noise), int(num_spans)


def output_lengths(raw_length: int, params: SpanCorruptionParams) -> tuple[int, int]:
  """Exact (inputs, targets) lengths `make_example` gives a block of `raw_length` tokens.

  The noise count n and span count s depend only on the length and the params (see
  `random_spans_noise_mask`), so the lengths are deterministic: inputs L - n + s + 1 and
  targets n + s + 1, EOS included, with or without `random_roll`. Unlike
  `random_spans_helper`'s formula this uses the mask's float32 counts, the clipping of n to
  [1, L - 1] and the cap of s by n and L - n, so it is exact for every L >= 2, e.g.
  568 -> (512, 114) at the default params.

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

  num_noise and num_spans as `noise_counts` (float32, clipped and capped). Noise and non-noise
  tokens are each split into num_spans non-empty segments, uniformly over compositions, and
  interleaved non-noise first, so the mask starts with non-noise and ends with noise. L < 2 is
  raised to 2 for the draw and the mask cut back, as in T5.

  With `params.random_roll` the mask is then rotated (element i moves to i + offset mod L) by
  T5's uniform offset in [0, L) conditioned on not cutting a noise span in two: the start is
  drawn uniformly among the L - (num_noise - num_spans) positions not strictly inside a noise
  span. The rotated mask has the same noise count, span count and span lengths, may start with
  noise or end with non-noise, and a single span lands anywhere in a short block instead of
  always at its end.

  The generator is consumed in a fixed order: the non-noise cuts, the noise cuts, then (roll
  only) the start; without the roll the draws are those of earlier versions.

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
  mask = np.repeat(flags, interleaved)[:orig_length]
  if params.random_roll and orig_length >= 2:
    # A start p inside a span (noise at p - 1 and p, cyclically) would split it in two.
    starts = np.flatnonzero(~(mask & np.roll(mask, 1)))
    mask = np.roll(mask, -int(starts[rng.integers(starts.size)]))
  return mask


def _span_starts(in_span: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(first, rest): bool[L] masks of each run's first position and of its other positions."""
  prev = np.empty_like(in_span)
  prev[0] = False
  prev[1:] = in_span[:-1]
  return in_span & ~prev, in_span & prev


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
  first, rest = _span_starts(in_span)
  out = tokens.astype(np.int32)  # a copy
  out[first] = sentinels[: int(np.count_nonzero(first))]
  return np.append(out[~rest], np.int32(eos_id)).astype(np.int32)


def _span_targets(tokens: np.ndarray, noise: np.ndarray, sentinels: np.ndarray,
                  eos_id: int) -> np.ndarray:
  """The noise spans, each after its sentinel, then EOS: S_0 N_0 S_1 N_1 ... EOS.

  Args:
    tokens: int[L] block.
    noise: bool[L] noise mask with s runs.
    sentinels: int[>= s] sentinel ids, used in order (the inputs' order).
    eos_id: appended at the end.

  Returns:
    int32[n + s + 1]. For a mask that starts with non-noise and ends with noise this is T5's
    `nonnoise_span_to_unique_sentinel`; for a rolled one it keeps S_k before N_k where T5's
    would put a noise span first with no sentinel and shift every later one.
  """
  if not noise[0] and noise[-1]:
    # Non-noise first, noise last (every unrolled mask): B_k -> S_k keeps S_k before N_k, and
    # collapsing the non-noise runs is twice as fast as inserting the sentinels.
    return _replace_spans(tokens, ~noise, sentinels, eos_id)
  first, _ = _span_starts(noise)
  spans = tokens[noise].astype(np.int32)
  # Where each span's first token sits among the noise tokens: insert its sentinel before it.
  at = np.flatnonzero(first[noise])
  out = np.insert(spans, at, sentinels[: at.size])
  return np.append(out, np.int32(eos_id)).astype(np.int32)


def make_example(block: np.ndarray, rng: np.random.Generator, params: SpanCorruptionParams,
                 vocab: VocabInfo) -> dict[str, np.ndarray]:
  """Span-corrupts one block of raw tokens into T5 encoder inputs and decoder targets.

  With noise spans N_k and the non-noise spans B_k before them (k < s, non-noise first):
    input_ids = B_0 S_0 B_1 S_1 ... B_{s-1} S_{s-1} EOS
    labels    = S_0 N_0 S_1 N_1 ... S_{s-1} N_{s-1} EOS
  with S_k = vocab.sentinel_ids[k] (vocab_size-1-k), S_k in the targets announcing the span
  S_k replaces in the inputs. With `params.random_roll` the mask may start with a noise span
  (input_ids then start with S_0) or end with a non-noise one; the lengths do not change. For a
  block of exactly the `block_lengths` tokens_length t, they are t - n + s + 1 and n + s + 1.

  Args:
    block: int[L] token ids, L >= 2 (normally `block_lengths`' tokens_length).
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
      "labels": _span_targets(block, noise, sentinels, vocab.eos_id),
  }
