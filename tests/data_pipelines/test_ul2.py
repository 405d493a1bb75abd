"""UL2's denoisers and the mixture draw (pure NumPy): exact lengths per denoiser, sentinel
re-interleaving gives the raw block back, the S-denoiser's prefix + suffix is the block, and
members are drawn at their rates."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from data_pipelines.objectives import mixture, span_corruption, ul2
from data_pipelines.vocab import VocabInfo

PARADIGMS = {ul2.NLU: 6, ul2.NLG: 7, ul2.S2S: 8}
SPAN_DENOISERS = [d for d in ul2.UL2_DENOISERS if not d.prefix_lm]
S_DENOISER = next(d for d in ul2.UL2_DENOISERS if d.prefix_lm)


@pytest.fixture(scope="module")
def vocab() -> VocabInfo:
  v = VocabInfo.synthetic(1000, num_sentinels=200)
  is_special = v.is_special.copy()
  is_special[list(PARADIGMS.values())] = True
  return dataclasses.replace(v, is_special=is_special, paradigm_ids=tuple(PARADIGMS.items()))


def _block(rng: np.random.Generator, vocab: VocabInfo, n: int) -> np.ndarray:
  return rng.choice(vocab.normal_ids, size=n).astype(np.int32)


def test_raw_lengths_are_t5s_random_spans_helper_at_512():
  expected = {"R1": (568, 114), "R2": (588, 100), "X1": (766, 512), "X2": (908, 512),
              "X3": (600, 92), "X4": (1006, 512)}
  for d in SPAN_DENOISERS:
    assert ul2.lengths(512, d) == expected[d.label], d
    assert span_corruption.random_spans_helper(512, d.noise_density,
                                               d.mean_noise_span_length) == expected[d.label]
  assert ul2.lengths(512, S_DENOISER) == (511, 511)


def _reinterleave(inputs: np.ndarray, targets: np.ndarray, sentinels: set[int]) -> list[int]:
  """B_0 S_0 B_1 S_1 ... and S_0 N_0 S_1 N_1 ... -> B_0 N_0 B_1 N_1 ...: the raw block."""
  def spans(ids: np.ndarray) -> tuple[list[list[int]], list[int]]:
    parts, order = [[]], []
    for t in ids.tolist():
      if t in sentinels:
        order.append(t)
        parts.append([])
      else:
        parts[-1].append(t)
    return parts, order
  kept, s_in = spans(inputs)
  noise, s_out = spans(targets)
  assert s_in == s_out  # the same sentinels in the same order
  assert noise[0] == []  # targets start with a sentinel
  out: list[int] = []
  for k, part in enumerate(kept):
    out += part
    if k + 1 < len(noise):
      out += noise[k + 1]
  return out


@pytest.mark.parametrize("inputs_length", [512, 127, 64])
@pytest.mark.parametrize("denoiser", SPAN_DENOISERS, ids=lambda d: d.label)
def test_span_denoiser_lengths_sentinels_and_reinterleaving(vocab, denoiser, inputs_length):
  raw, targets = ul2.lengths(inputs_length, denoiser)
  sentinels = set(vocab.sentinel_ids.tolist())
  for seed in range(5):
    rng = np.random.default_rng(seed)
    block = _block(rng, vocab, raw)
    ex = ul2.make_example(block, rng, denoiser, vocab)
    inputs, labels = ex["input_ids"], ex["labels"]
    assert len(inputs) == inputs_length + 1  # the paradigm token
    assert len(labels) == targets
    assert inputs[0] == PARADIGMS[denoiser.paradigm]
    assert inputs[-1] == labels[-1] == vocab.eos_id
    body, tail = inputs[1:-1], labels[:-1]
    n_in = np.isin(body, list(sentinels)).sum()
    assert n_in == np.isin(tail, list(sentinels)).sum()
    assert n_in == span_corruption.span_counts(raw, denoiser.span_params)[1]
    assert _reinterleave(body, tail, sentinels) == block.tolist()
  bare = ul2.make_example(block, np.random.default_rng(0), denoiser, vocab, paradigm=False)
  assert len(bare["input_ids"]) == inputs_length


def test_s_denoiser_prefix_and_suffix_are_the_block(vocab):
  raw, longest = ul2.lengths(64, S_DENOISER)
  splits = []
  for seed in range(400):
    rng = np.random.default_rng(seed)
    block = _block(rng, vocab, raw)
    ex = ul2.make_example(block, rng, S_DENOISER, vocab)
    inputs, labels = ex["input_ids"], ex["labels"]
    assert inputs[0] == PARADIGMS[ul2.S2S]
    assert inputs[-1] == labels[-1] == vocab.eos_id
    assert np.concatenate([inputs[1:-1], labels[:-1]]).tolist() == block.tolist()
    assert len(inputs) <= 64 and len(labels) <= longest
    splits.append(len(inputs) - 2)
  # T5's random_prefix_noise_mask: the prefix length is uniform over 1 .. n - 1.
  assert min(splits) == 1 and max(splits) == raw - 1
  counts = np.bincount(splits, minlength=raw)[1:]
  assert stats.chisquare(counts).pvalue > 0.001


def test_paradigm_token_missing_from_the_vocab_is_named(vocab):
  bare = dataclasses.replace(vocab, paradigm_ids=())
  with pytest.raises(ValueError, match=r"no paradigm token \[NLU\] \(it has none\)"):
    ul2.make_example(np.arange(10, 30), np.random.default_rng(0), ul2.UL2_DENOISERS[0], bare)


def _interval(n: int, p: float, level: float = 0.999) -> tuple[int, int]:
  """The central binomial interval holding a count with probability >= level."""
  tail = (1 - level) / 2
  return int(stats.binom.ppf(tail, n, p)), int(stats.binom.isf(tail, n, p))


@pytest.mark.parametrize("rates", [[1] * 7, [2, 2, 1, 1, 1, 1, 2], [0.5, 0.25, 0.25]])
def test_member_frequencies_are_within_the_binomial_interval(rates):
  n = 20_000
  cumulative = np.cumsum(mixture.probabilities(rates))
  drawn = np.array([mixture.draw_member(np.random.default_rng([0, 0, i]), cumulative)
                    for i in range(n)])
  counts = np.bincount(drawn, minlength=len(rates))
  for k, p in enumerate(mixture.probabilities(rates)):
    lo, hi = _interval(n, p)
    assert lo <= counts[k] <= hi, (k, p, counts[k], lo, hi)


def test_window_is_a_uniform_contiguous_slice():
  block = np.arange(100)
  starts = []
  for i in range(3000):
    w = mixture.window(block, 30, np.random.default_rng(i))
    assert len(w) == 30 and np.array_equal(w, np.arange(w[0], w[0] + 30))
    starts.append(int(w[0]))
  assert min(starts) == 0 and max(starts) == 70
  assert stats.chisquare(np.bincount(starts, minlength=71)).pvalue > 0.001
  assert mixture.window(block, 100, np.random.default_rng(0)) is block


def test_rates_must_be_positive():
  for bad in ([], [1, 0], [1, -2], [float("nan")]):
    with pytest.raises(ValueError):
      mixture.probabilities(bad)


def test_mixture_is_deterministic_per_generator(vocab):
  members = [mixture.Member(1.0, ul2.lengths(64, d)[0],
                            lambda b, r, d=d: ul2.make_example(b, r, d, vocab))
             for d in ul2.UL2_DENOISERS]
  make = mixture.make_mixture(members)
  block = _block(np.random.default_rng(0), vocab, mixture.block_length(members))
  for i in range(20):
    k1, a = make(block, np.random.default_rng([3, 1, i]))
    k2, b = make(block, np.random.default_rng([3, 1, i]))
    assert k1 == k2 and all(np.array_equal(a[f], b[f]) for f in a)


# UL2's decoder-only form: `[paradigm] inputs targets` as one prefix-LM row.


@pytest.mark.parametrize("row", [127, 63])
@pytest.mark.parametrize("denoiser", SPAN_DENOISERS, ids=lambda d: d.label)
def test_decoder_form_is_inputs_then_targets_with_the_loss_on_the_targets(vocab, denoiser, row):
  raw, inputs_length = ul2.decoder_lengths(row, denoiser.span_params)
  sentinels = set(vocab.sentinel_ids.tolist())
  # the longest raw window that fits: one more token would not
  n_in, n_out = span_corruption.output_lengths(raw + 1, denoiser.span_params)
  assert n_in + n_out - 1 > row
  for seed in range(5):
    rng = np.random.default_rng(seed)
    block = _block(rng, vocab, raw)
    enc = ul2.make_example(block, np.random.default_rng(seed), denoiser, vocab, paradigm=False)
    ex = ul2.prepend(ul2.decoder_example(block, np.random.default_rng(seed),
                                         denoiser.span_params, vocab),
                     PARADIGMS[denoiser.paradigm])
    ids, labels, prefix = ex["input_ids"], ex["labels"], ex["prefix"]
    assert len(ids) == len(labels) == len(prefix) <= row + 1  # + the paradigm token
    k = len(enc["input_ids"]) + 1  # [paradigm] inputs
    assert k == inputs_length + 1
    # the sequence read is [paradigm] inputs targets; labels are the next tokens
    seq = np.concatenate([[PARADIGMS[denoiser.paradigm]], enc["input_ids"], enc["labels"]])
    assert ids.tolist() == seq[:-1].tolist()
    assert prefix.tolist() == [1] * k + [0] * (len(ids) - k)
    # loss exactly on the targets: the last prefix position predicts the first target
    scored = labels != -100
    assert scored.tolist() == [False] * (k - 1) + [True] * (len(ids) - k + 1)
    assert labels[scored].tolist() == enc["labels"].tolist()
    body, tail = enc["input_ids"][:-1], enc["labels"][:-1]
    assert _reinterleave(body, tail, sentinels) == block.tolist()


def test_decoder_prefix_lm_gets_the_paradigm_token_in_its_prefix(vocab):
  ex = {"input_ids": np.array([10, 11, 12, 13], np.int32),
        "labels": np.array([-100, 12, 13, 14], np.int32),
        "prefix": np.array([1, 1, 0, 0], np.int32)}
  out = ul2.prepend(ex, PARADIGMS[ul2.S2S])
  assert out["input_ids"].tolist() == [8, 10, 11, 12, 13]
  assert out["labels"].tolist() == [-100, -100, 12, 13, 14]
  assert out["prefix"].tolist() == [1, 1, 1, 0, 0]
