"""Invariants of the T5 span-corruption objective (OBJECTIVES.md §2)."""

from __future__ import annotations

import collections
import math

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from data_pipelines.objectives import span_corruption as sc
from data_pipelines.vocab import VocabInfo

# Enough sentinels for any span count the property tests can reach (<= 350 at length 700).
VOCAB = VocabInfo.synthetic(1000, num_sentinels=400, seed=1)
DEFAULT = sc.SpanCorruptionParams()
SETTINGS = hypothesis.settings(max_examples=150, deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])

params_strategy = st.builds(
    sc.SpanCorruptionParams,
    noise_density=st.floats(0.01, 0.99),
    mean_noise_span_length=st.floats(1.0, 12.0))


def _expected_counts(length: int, params: sc.SpanCorruptionParams) -> tuple[int, int]:
  """Reference (num_noise, num_spans) straight from the spec, for length >= 2."""
  n = int(np.clip(round(length * params.noise_density), 1, length - 1))
  s = max(round(n / params.mean_noise_span_length), 1)
  return n, min(s, n, length - n)


def _runs(mask: np.ndarray) -> list[tuple[bool, int]]:
  """(value, run length) pairs of a bool array, written as a plain loop."""
  runs: list[tuple[bool, int]] = []
  for value in mask.tolist():
    if runs and runs[-1][0] == value:
      runs[-1] = (value, runs[-1][1] + 1)
    else:
      runs.append((value, 1))
  return runs


def _block(seed: int, length: int) -> np.ndarray:
  """int32[length] of non-special ids, so sentinels in the outputs are unambiguous."""
  return np.random.default_rng(seed).choice(VOCAB.normal_ids, size=length).astype(np.int32)


def _split_at_sentinels(seq: np.ndarray) -> tuple[list[int], list[list[int]]]:
  """Sentinels of an output (EOS stripped) and the token segments between them.

  Returns:
    (sentinels, segments) with len(segments) == len(sentinels) + 1; segments[0] precedes the
    first sentinel.
  """
  assert seq[-1] == VOCAB.eos_id
  is_sentinel = set(VOCAB.sentinel_ids.tolist())
  sentinels: list[int] = []
  segments: list[list[int]] = [[]]
  for tok in seq[:-1].tolist():
    if tok in is_sentinel:
      sentinels.append(tok)
      segments.append([])
    else:
      segments[-1].append(tok)
  return sentinels, segments


@pytest.mark.parametrize("inputs_length,expected", [
    (512, (568, 114)), (128, (141, 29)), (256, (284, 58)), (1024, (1137, 229))])
def test_random_spans_helper_known_values(inputs_length, expected):
  assert sc.random_spans_helper(inputs_length, 0.15, 3.0) == expected


@SETTINGS
@hypothesis.given(inputs_length=st.integers(1, 2000), params=params_strategy)
def test_random_spans_helper_is_the_largest_fitting_length(inputs_length, params):
  d, mu = params.noise_density, params.mean_noise_span_length

  def lengths(t):
    n = round(t * d)
    s = round(n / mu)
    return t - n + s + 1, n + s + 1

  t, targets = sc.random_spans_helper(inputs_length, d, mu)
  assert lengths(t)[0] <= inputs_length < lengths(t + 1)[0]
  assert targets == lengths(t)[1]


@SETTINGS
@hypothesis.given(length=st.integers(0, 700), params=params_strategy,
                  seed=st.integers(0, 2**32 - 1))
def test_noise_mask_exact_counts_and_shape(length, params, seed):
  mask = sc.random_spans_noise_mask(length, np.random.default_rng(seed), params)
  assert mask.dtype == bool and mask.shape == (length,)
  if length < 2:
    # Drawn at length 2 ([non-noise, noise]) and cut back.
    assert mask.tolist() == [False, True][:length]
    return
  n, s = _expected_counts(length, params)
  runs = _runs(mask)
  assert int(mask.sum()) == n
  assert sum(1 for value, _ in runs if value) == s
  # Non-noise first, noise last, alternating: 2s runs.
  assert len(runs) == 2 * s
  assert not mask[0] and mask[-1]


@pytest.mark.parametrize("inputs_length", [512, 128, 256])
@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**32 - 1))
def test_full_blocks_have_exact_lengths(inputs_length, seed):
  tokens_length, targets_length = sc.random_spans_helper(inputs_length)
  ex = sc.make_example(_block(seed, tokens_length), np.random.default_rng(seed), DEFAULT, VOCAB)
  assert ex["input_ids"].dtype == np.int32 and ex["labels"].dtype == np.int32
  assert ex["input_ids"].shape == (inputs_length,)
  assert ex["labels"].shape == (targets_length,)


@SETTINGS
@hypothesis.given(length=st.integers(2, 700), params=params_strategy,
                  seed=st.integers(0, 2**32 - 1))
def test_sentinels_lengths_and_round_trip(length, params, seed):
  block = _block(seed, length)
  ex = sc.make_example(block, np.random.default_rng(seed), params, VOCAB)
  inputs, targets = ex["input_ids"], ex["labels"]
  n, s = _expected_counts(length, params)
  assert len(inputs) == length - n + s + 1
  assert len(targets) == n + s + 1

  in_sentinels, in_segments = _split_at_sentinels(inputs)
  tg_sentinels, tg_segments = _split_at_sentinels(targets)
  # Sentinels count down from V-1, one per span, in the same order on both sides.
  assert in_sentinels == tg_sentinels == list(range(VOCAB.vocab_size - 1,
                                                    VOCAB.vocab_size - 1 - s, -1))
  # Inputs end with a sentinel (the mask ends with noise); targets start with one.
  assert in_segments[-1] == [] and tg_segments[0] == []
  assert all(in_segments[:-1]) and all(tg_segments[1:])  # every span non-empty
  rebuilt: list[int] = []
  for kept, noise in zip(in_segments[:-1], tg_segments[1:]):
    rebuilt += kept + noise
  assert rebuilt == block.tolist()


def test_same_generator_state_same_example():
  block = _block(0, 568)
  a = sc.make_example(block, np.random.default_rng(7), DEFAULT, VOCAB)
  b = sc.make_example(block, np.random.default_rng(7), DEFAULT, VOCAB)
  c = sc.make_example(block, np.random.default_rng(8), DEFAULT, VOCAB)
  for key in ("input_ids", "labels"):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["labels"], c["labels"])


def test_span_lengths_average_n_over_s():
  # Each mask's spans average exactly n/s by construction, so test the individual spans: by
  # exchangeability of a uniform composition, the k-th span alone also has mean n/s.
  length, num_masks = 568, 2000
  n, s = _expected_counts(length, DEFAULT)  # 85, 28
  rng = np.random.default_rng(0)
  per_span = np.empty((num_masks, s))
  for i in range(num_masks):
    lens = [size for value, size in _runs(sc.random_spans_noise_mask(length, rng, DEFAULT))
            if value]
    per_span[i] = lens
  assert np.allclose(per_span.mean(axis=1), n / s)
  for k in (0, s // 2, s - 1):
    col = per_span[:, k]
    tolerance = 5 * col.std(ddof=1) / math.sqrt(num_masks)  # 5 standard errors
    assert abs(col.mean() - n / s) < tolerance, (k, col.mean(), n / s, tolerance)


def test_masks_are_uniform_over_compositions():
  # L=10, d=0.5, μ=2.5: n=5, s=2; 4 compositions of 5 into 2 parts on each side -> 16 masks.
  params = sc.SpanCorruptionParams(0.5, 2.5)
  rng = np.random.default_rng(0)
  draws = 3200
  counts = collections.Counter(
      sc.random_spans_noise_mask(10, rng, params).tobytes() for _ in range(draws))
  assert len(counts) == 16
  expected = draws / 16
  chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
  assert chi2 < 40.0  # 15 degrees of freedom: P(chi2 > 40) ≈ 5e-4


@pytest.mark.parametrize("kwargs,word,value", [
    ({"noise_density": 0.0}, "noise_density", "0.0"),
    ({"noise_density": 1.0}, "noise_density", "1.0"),
    ({"noise_density": -0.1}, "noise_density", "-0.1"),
    ({"noise_density": 1.5}, "noise_density", "1.5"),
    ({"noise_density": float("nan")}, "noise_density", "nan"),
    ({"noise_density": float("inf")}, "noise_density", "inf"),
    ({"mean_noise_span_length": 0.5}, "mean_noise_span_length", "0.5"),
    ({"mean_noise_span_length": 0.0}, "mean_noise_span_length", "0.0"),
    ({"mean_noise_span_length": -3.0}, "mean_noise_span_length", "-3.0"),
    ({"mean_noise_span_length": float("nan")}, "mean_noise_span_length", "nan"),
])
def test_bad_params_raise(kwargs, word, value):
  with pytest.raises(ValueError, match=word) as info:
    sc.SpanCorruptionParams(**kwargs)
  message = str(info.value)
  assert "\n" not in message
  assert message.endswith(f"got {value}"), message  # names the offending value


@pytest.mark.parametrize("kwargs", [
    {"noise_density": 1e-9}, {"noise_density": 1 - 1e-9}, {"mean_noise_span_length": 1.0},
    {"mean_noise_span_length": 1000.0}])
def test_boundary_params_accepted(kwargs):
  sc.SpanCorruptionParams(**kwargs)


def test_helper_rejects_bad_arguments():
  with pytest.raises(ValueError, match="inputs_length"):
    sc.random_spans_helper(0)
  with pytest.raises(ValueError, match="noise_density"):
    sc.random_spans_helper(512, 1.5, 3.0)


def test_too_few_sentinels_raise():
  small = VocabInfo.synthetic(64, num_sentinels=4)
  block = np.random.default_rng(0).choice(small.normal_ids, size=568)
  with pytest.raises(ValueError, match="vocab without room for the sentinels") as info:
    sc.make_example(block, np.random.default_rng(0), DEFAULT, small)
  # 568 tokens -> n=85, s=28: the message says how many are needed and how many there are.
  assert "568 tokens has 28 noise spans" in str(info.value)
  assert "vocab has 4" in str(info.value)
  # Exactly enough sentinels is fine: 40 tokens -> n=6, s=2.
  ex = sc.make_example(block[:40], np.random.default_rng(0), DEFAULT,
                       VocabInfo.synthetic(64, num_sentinels=2))
  assert ex["labels"][0] == 63


@pytest.mark.parametrize("length", [0, 1])
def test_too_short_block_raises(length):
  with pytest.raises(ValueError, match=f"too short for span corruption: {length} tokens, need "
                     ">= 2"):
    sc.make_example(np.zeros(length, np.int32), np.random.default_rng(0), DEFAULT, VOCAB)
  with pytest.raises(ValueError, match=f"too short for span corruption: {length} tokens"):
    sc.output_lengths(length, DEFAULT)


@pytest.mark.parametrize("params", [
    DEFAULT, sc.SpanCorruptionParams(0.5, 1.0), sc.SpanCorruptionParams(0.01, 1.0),
    sc.SpanCorruptionParams(0.99, 12.0), sc.SpanCorruptionParams(0.3, 2.5),
    sc.SpanCorruptionParams(0.7, 1.0)])
def test_output_lengths_match_make_example(params):
  # Every raw length 2..600, including the extreme densities where n is clipped and s capped.
  for length in range(2, 601):
    ex = sc.make_example(_block(length, length), np.random.default_rng(length), params, VOCAB)
    expected = (len(ex["input_ids"]), len(ex["labels"]))
    assert sc.output_lengths(length, params) == expected, (length, params)
    assert sc.output_lengths(np.int64(length), params) == expected


@pytest.mark.parametrize("inputs_length", [512, 128, 256, 1024])
def test_output_lengths_of_helper_blocks(inputs_length):
  tokens_length, targets_length = sc.random_spans_helper(inputs_length)
  assert sc.output_lengths(tokens_length, DEFAULT) == (inputs_length, targets_length)


def test_output_lengths_rejects_non_integers():
  with pytest.raises(TypeError):
    sc.output_lengths(568.0, DEFAULT)


def test_two_token_block():
  ex = sc.make_example(np.array([10, 11]), np.random.default_rng(0), DEFAULT, VOCAB)
  v = VOCAB.vocab_size
  assert ex["input_ids"].tolist() == [10, v - 1, VOCAB.eos_id]
  assert ex["labels"].tolist() == [v - 1, 11, VOCAB.eos_id]
