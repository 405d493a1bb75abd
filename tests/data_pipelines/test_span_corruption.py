"""Invariants of the T5 span-corruption objective (docs/objectives.md, "T5 span corruption")."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
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


def _t5_counts(lengths: np.ndarray, noise_density: float, mean_noise_span_length: float,
               ) -> tuple[np.ndarray, np.ndarray]:
  """T5's random_spans_noise_mask counts, written as its TF ops in NumPy float32: round half to
  even of float32(L) * float32(d), clipped to [1, L - 1]; then of float32(n) / float32(mu), >= 1.
  """
  lengths = np.asarray(lengths, np.int64)
  n = np.rint(lengths.astype(np.float32) * np.float32(noise_density)).astype(np.int64)
  n = np.minimum(np.maximum(n, 1), lengths - 1)
  s = np.rint(n.astype(np.float32) / np.float32(mean_noise_span_length)).astype(np.int64)
  return n, np.maximum(s, 1)


def _expected_counts(length: int, params: sc.SpanCorruptionParams) -> tuple[int, int]:
  """Reference (num_noise, num_spans), for length >= 2: T5's, with s capped by n and L - n."""
  n, s = _t5_counts(np.array(length), params.noise_density, params.mean_noise_span_length)
  return int(n), int(min(s, n, length - n))


def _t5_helper(inputs_length: int, d: float, mu: float) -> tuple[int, int]:
  """T5's random_spans_helper as its plain loop: Python float64 `round`, the 0.5 hack."""
  def lengths(t: int) -> tuple[int, int]:
    n = round(t * d)
    s = round(n / mu)
    return t - n + s + 1, n + s + 1

  t = inputs_length - 1
  while lengths(t + 1)[0] <= inputs_length:
    t += 1
  inputs, targets = lengths(t)
  if d == 0.5 and targets > inputs:
    t, targets = t - 1, targets - 1
  return t, targets


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
@hypothesis.given(inputs_length=st.integers(1, 2000),
                  params=params_strategy | st.builds(sc.SpanCorruptionParams, st.just(0.5),
                                                     st.floats(1.0, 12.0)))
def test_random_spans_helper_is_t5s(inputs_length, params):
  d, mu = params.noise_density, params.mean_noise_span_length
  assert sc.random_spans_helper(inputs_length, d, mu) == _t5_helper(inputs_length, d, mu)


@pytest.mark.parametrize("inputs_length", [128, 256, 512, 1024, 2048])
def test_random_spans_helper_half_density_takes_one_off_as_t5(inputs_length):
  # T5 subtracts one raw token and one target at d == 0.5: 512 -> (766, 512), not (767, 513).
  tokens, targets = sc.random_spans_helper(inputs_length, 0.5, 3.0)
  assert (tokens, targets) == _t5_helper(inputs_length, 0.5, 3.0)
  assert (tokens, targets) == (int(1.5 * inputs_length) - 2, inputs_length)
  # The pipeline cuts those blocks too, and they corrupt to exactly (I, I).
  params = sc.SpanCorruptionParams(0.5, 3.0)
  assert sc.block_lengths(inputs_length, params) == (tokens, targets)
  assert sc.output_lengths(tokens, params) == (inputs_length, inputs_length)


def test_noise_counts_match_t5_float32_at_every_length():
  # T5 rounds float32(L) * float32(d); float64 differs at ~1% of lengths, e.g. 190 * 0.15 is
  # 28.500002 in float32 (-> 29) but 28.499999999999996 in float64 (-> 28).
  lengths = np.arange(2, 20001)
  for d, mu in [(0.15, 3.0), (0.5, 3.0), (0.3, 2.5), (0.05, 8.0)]:
    params = sc.SpanCorruptionParams(d, mu)
    n, s = _t5_counts(lengths, d, mu)
    s = np.minimum(s, np.minimum(n, lengths - n))  # our cap; never binds at these settings
    got = np.array([sc.span_counts(int(length), params) for length in lengths])
    bad = np.flatnonzero((got[:, 0] != n) | (got[:, 1] != s))
    assert bad.size == 0, (d, mu, lengths[bad[:5]].tolist(), got[bad[:5]].tolist())
    np.testing.assert_array_equal(np.stack(sc.noise_counts(lengths, params), 1), got)
  assert sc.span_counts(190, DEFAULT) == (29, 10)
  mask = sc.random_spans_noise_mask(190, np.random.default_rng(0), DEFAULT)
  assert int(mask.sum()) == 29 and len(_runs(mask)) == 20


@SETTINGS
@hypothesis.given(inputs_length=st.integers(8, 3000), params=params_strategy)
def test_block_lengths_are_exact(inputs_length, params):
  tokens, targets = sc.block_lengths(inputs_length, params)
  inputs, exact_targets = sc.output_lengths(tokens, params)
  assert targets == exact_targets
  t5_tokens, _ = sc.random_spans_helper(inputs_length, params.noise_density,
                                        params.mean_noise_span_length)
  if inputs == inputs_length and sc.output_lengths(max(t5_tokens, 2), params)[0] == inputs:
    assert tokens == t5_tokens  # T5's block whenever it corrupts to exactly I inputs
  assert inputs <= inputs_length


def test_block_lengths_size_targets_from_the_float32_counts():
  # T5's float64 helper says 190 raw tokens -> 38 targets; its float32 mask gives n=29, s=10.
  assert sc.random_spans_helper(172) == (190, 38)
  assert sc.block_lengths(172, DEFAULT) == (190, 40)


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
  _check_round_trip(block, ex, params)


def _check_round_trip(block: np.ndarray, ex: dict[str, np.ndarray],
                      params: sc.SpanCorruptionParams) -> None:
  """Exact lengths, one sentinel per span in the same order on both sides, block rebuilt."""
  length = len(block)
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


@SETTINGS
@hypothesis.given(length=st.integers(2, 700), params=params_strategy,
                  seed=st.integers(0, 2**32 - 1))
def test_random_roll_keeps_counts_lengths_and_alignment(length, params, seed):
  rolled = dataclasses.replace(params, random_roll=True)
  mask = sc.random_spans_noise_mask(length, np.random.default_rng(seed), rolled)
  n, s = _expected_counts(length, params)
  assert mask.shape == (length,) and int(mask.sum()) == n
  assert sum(1 for value, _ in _runs(mask) if value) == s  # no span cut in two by the roll
  block = _block(seed, length)
  ex = sc.make_example(block, np.random.default_rng(seed), rolled, VOCAB)
  assert (len(ex["input_ids"]), len(ex["labels"])) == sc.output_lengths(length, params)
  # S_k in the targets precedes the span S_k replaces in the inputs: substituting rebuilds.
  _, tg_segments = _split_at_sentinels(ex["labels"])
  assert tg_segments[0] == [] and all(tg_segments[1:])
  spans = dict(zip(VOCAB.sentinel_ids[:s].tolist(), tg_segments[1:]))
  rebuilt = [t for tok in ex["input_ids"][:-1].tolist() for t in spans.get(tok, [tok])]
  assert rebuilt == block.tolist()


def test_random_roll_moves_a_short_documents_single_span():
  # L <= 30 at d=0.15, mu=3 has one span: without the roll it is always the last n tokens.
  length, draws = 20, 3600
  n, s = _expected_counts(length, DEFAULT)
  assert (n, s) == (3, 1)
  fixed = {sc.random_spans_noise_mask(length, np.random.default_rng(i), DEFAULT).tobytes()
           for i in range(50)}
  assert fixed == {(np.arange(length) >= length - n).tobytes()}
  rolled = sc.SpanCorruptionParams(random_roll=True)
  starts = collections.Counter()
  for i in range(draws):
    mask = sc.random_spans_noise_mask(length, np.random.default_rng([i, 1]), rolled)
    assert int(mask.sum()) == n and len([v for v, _ in _runs(mask) if v]) == 1
    starts[int(np.argmax(mask))] += 1
  # T5's uniform offset, less the 2 offsets that would cut the span: 18 starts, equally likely.
  assert sorted(starts) == list(range(length - n + 1))
  expected = draws / (length - n + 1)
  chi2 = sum((c - expected) ** 2 / expected for c in starts.values())
  assert chi2 < 45.0  # 17 degrees of freedom: P(chi2 > 45) ≈ 2.5e-4


def test_random_roll_off_is_unchanged():
  # Outputs of make_example before random_roll existed (commit 53d969c), at the lengths where
  # its float64 counts equal the float32 ones: the roll-off path draws and builds the same.
  h = hashlib.sha256()
  for params in [DEFAULT, sc.SpanCorruptionParams(0.3, 2.5)]:
    for length in range(2, 301):
      float32 = np.rint(np.float32(length) * np.float32(params.noise_density))
      if float32 != round(length * params.noise_density):
        continue
      block = np.random.default_rng(length).choice(VOCAB.normal_ids, size=length)
      ex = sc.make_example(block.astype(np.int32), np.random.default_rng([length, 1]), params,
                           VOCAB)
      h.update(ex["input_ids"].tobytes())
      h.update(ex["labels"].tobytes())
  assert h.hexdigest() == "71c308ffa66ef67912226d90690fdfb8bc802c51115de52312156499f1303e6b"


def test_random_roll_must_be_a_bool():
  with pytest.raises(TypeError, match="random_roll must be a bool"):
    sc.SpanCorruptionParams(random_roll="yes")


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
