"""Invariants of UniLM's rows and masks (docs/objectives.md, "UniLM"): the golden [L, L] masks
of the four modes, the row framing, the mode mix and the cloze statistics."""

from __future__ import annotations

import math

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from scipy import stats

from data_pipelines.objectives import unilm
from data_pipelines.vocab import IGNORE_INDEX, VocabInfo

VOCAB = VocabInfo.synthetic(64, num_sentinels=4, seed=1)
SETTINGS = hypothesis.settings(max_examples=150, deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])

# The row `[CLS] a1 a2 [SEP] b1 b2 [SEP] [PAD]`: |A| = |B| = 2, source_length = 4, one pad.
GOLDEN_PADDING = np.array([1, 1, 1, 1, 1, 1, 1, 0])
GOLDEN_SOURCE_LENGTH = 4
# Rows are queries, columns keys; 1 = may attend. No query ever sees the pad key (column 7).
GOLDEN_MASKS = {
    "bidirectional": [
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0]],
    "left_to_right": [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0]],
    "right_to_left": [
        [1, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0]],
    # source ([CLS] a1 a2 [SEP]) sees the source; b1, b2, [SEP] the source and themselves
    # and the target to their left
    "seq2seq": [
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 0]],
}


@pytest.mark.parametrize("mode", unilm.MODES)
def test_golden_masks_of_the_four_modes(mode):
  got = unilm.attention_mask_np(unilm.MODES.index(mode), GOLDEN_SOURCE_LENGTH, GOLDEN_PADDING)
  np.testing.assert_array_equal(got, np.array(GOLDEN_MASKS[mode]))


def _params(rates=(1 / 3, 1 / 6, 1 / 6, 1 / 3), length: int = 126, **kw) -> unilm.UnilmParams:
  return unilm.UnilmParams(max_predictions=unilm.default_max_predictions(length + 2, 0.15),
                           rates=rates, **kw)


def test_a_row_of_each_mode_is_framed_as_unilm_v1():
  block = np.array([10, 11, 12, 13, VOCAB.pad_id, VOCAB.pad_id], np.int32)
  one_mode = lambda m: tuple(float(k == m) for k in range(4))
  for mode in range(4):
    for seed in range(20):
      ex = unilm.make_example(block, np.random.default_rng(seed),
                              _params(one_mode(mode), mask_prob=0.01), VOCAB)
      assert int(ex["unilm_mode"]) == mode
      ids = np.where(ex["labels"] != IGNORE_INDEX, ex["labels"], ex["input_ids"])
      if mode in unilm.PAIR_MODES:
        k = int(ex["source_length"]) - 2
        assert 1 <= k <= 3
        want = [VOCAB.cls_id, *block[:k], VOCAB.sep_id, *block[k:4], VOCAB.sep_id]
        types = [0] * (k + 2) + [1] * (5 - k)
      else:
        assert int(ex["source_length"]) == 0
        want = [VOCAB.cls_id, *block[:4], VOCAB.sep_id]
        types = [0] * 6
      pad = 8 - len(want)
      np.testing.assert_array_equal(ids, want + [VOCAB.pad_id] * pad)
      np.testing.assert_array_equal(ex["token_type_ids"], types + [0] * pad)
      np.testing.assert_array_equal(ex["attention_mask"], [1] * len(want) + [0] * pad)


def _block(seed: int, length: int, special_rate: float, pad_len: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  block = rng.choice(VOCAB.normal_ids, size=length)
  specials = np.concatenate([[VOCAB.eos_id, VOCAB.unk_id], VOCAB.sentinel_ids])
  hit = rng.random(length) < special_rate
  block[hit] = rng.choice(specials, size=int(hit.sum()))
  block[length - min(pad_len, length - 1):] = VOCAB.pad_id
  return block.astype(np.int32)


blocks = st.builds(_block, seed=st.integers(0, 2**32 - 1), length=st.integers(2, 120),
                   special_rate=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
                   pad_len=st.integers(0, 20))
rates = st.tuples(*[st.sampled_from([0.0, 1.0, 2.5])] * 4).filter(lambda r: sum(r) > 0)


@SETTINGS
@hypothesis.given(block=blocks, seed=st.integers(0, 2**32 - 1), rates=rates,
                  mask_source=st.booleans())
def test_rows_masks_and_selection(block, seed, rates, mask_source):
  params = _params(rates, block.size, mask_source=mask_source)
  ex = unilm.make_example(block, np.random.default_rng([seed, 0, 1]), params, VOCAB)
  mode, source = int(ex["unilm_mode"]), int(ex["source_length"])
  assert rates[mode] > 0
  real = block[block != VOCAB.pad_id]
  if mode in unilm.PAIR_MODES:
    m = min(real.size, block.size - 1)
    k = source - 2
    assert (1 <= k < m) if m >= 2 else k == m
    framed = [VOCAB.cls_id, *real[:k], VOCAB.sep_id, *real[k:m], VOCAB.sep_id]
  else:
    assert source == 0
    framed = [VOCAB.cls_id, *real, VOCAB.sep_id]
  framed = np.array(framed + [VOCAB.pad_id] * (block.size + 2 - len(framed)))
  selected = ex["labels"] != IGNORE_INDEX
  candidates = ~VOCAB.is_special[framed]
  if mode == unilm.SEQ2SEQ and not mask_source:
    candidates[:source] = False
  assert not np.any(selected & ~candidates)  # never a special, nor the source if so set
  x = 0.15 * candidates.sum()
  assert selected.sum() in (math.floor(x), math.ceil(x))
  np.testing.assert_array_equal(ex["labels"][selected], framed[selected])
  np.testing.assert_array_equal(ex["input_ids"][~selected], framed[~selected])
  np.testing.assert_array_equal(ex["attention_mask"], framed != VOCAB.pad_id)
  assert int(ex["dropped_by_objective"]) == 0
  again = unilm.make_example(block, np.random.default_rng([seed, 0, 1]), params, VOCAB)
  for key, value in ex.items():
    np.testing.assert_array_equal(value, again[key])


def _examples(n: int, epoch: int = 0, **kw) -> list[dict[str, np.ndarray]]:
  """n rows of one 62-token block as the pipeline makes them: generator (seed, epoch, i)."""
  block = _block(7, 62, 0.05, 0)
  params = _params(length=62, **kw)
  return [unilm.make_example(block, np.random.default_rng([3, epoch, i]), params, VOCAB)
          for i in range(n)]


def test_mode_frequencies_are_inside_exact_binomial_intervals():
  n = 12000
  modes = np.array([int(ex["unilm_mode"]) for ex in _examples(n)])
  for k, p in enumerate((1 / 3, 1 / 6, 1 / 6, 1 / 3)):
    low, high = stats.binom.interval(0.999, n, p)
    assert low <= np.sum(modes == k) <= high, (unilm.MODES[k], np.sum(modes == k), low, high)
  # a mode of rate 0 is never drawn; another epoch draws other modes for the same rows
  only = _examples(500, rates=(1.0, 0.0, 0.0, 2.0))
  assert {int(ex["unilm_mode"]) for ex in only} == {0, 3}
  first = [int(ex["unilm_mode"]) for ex in _examples(200)]
  assert first != [int(ex["unilm_mode"]) for ex in _examples(200, epoch=1)]


def test_masking_rate_and_80_10_10():
  examples = _examples(4000)
  selected = want = spread = 0.0
  outcomes = np.zeros(3, np.int64)  # [MASK], random and different, unchanged
  for ex in examples:
    framed = np.where(ex["labels"] != IGNORE_INDEX, ex["labels"], ex["input_ids"])
    x = 0.15 * np.sum(~VOCAB.is_special[framed])
    want += x
    spread += (x - math.floor(x)) * (math.ceil(x) - x)  # variance of the rounding draw
    sel = ex["labels"] != IGNORE_INDEX
    selected += sel.sum()
    got, orig = ex["input_ids"][sel], ex["labels"][sel]
    outcomes += [np.sum(got == VOCAB.mask_id), np.sum((got != VOCAB.mask_id) & (got != orig)),
                 np.sum(got == orig)]
  # the count is unbiased: the total is within 4 standard deviations of 0.15 x candidates
  assert abs(selected - want) <= 4 * math.sqrt(spread) + 1e-9, (selected, want)
  total = int(outcomes.sum())
  assert total == selected and total > 20000
  same = 1.0 / VOCAB.normal_ids.size  # a random draw may hit the original
  for count, p in zip(outcomes, (0.8, 0.1 * (1 - same), 0.1 + 0.1 * same)):
    low, high = stats.binom.interval(0.999, total, p)
    assert low <= count <= high, (count, p * total, low, high)


def test_seq2seq_can_mask_the_target_only():
  examples = _examples(400, rates=(0.0, 0.0, 0.0, 1.0), mask_source=False)
  hits = 0
  for ex in examples:
    sel = np.flatnonzero(ex["labels"] != IGNORE_INDEX)
    assert np.all(sel >= int(ex["source_length"]))
    hits += sel.size
  assert hits > 0


def test_bad_params_are_refused():
  with pytest.raises(ValueError, match="rates"):
    _params((0.0, 0.0, 0.0, 0.0))
  with pytest.raises(ValueError, match="rates"):
    _params((1.0, -1.0, 0.0, 0.0))
  with pytest.raises(ValueError, match=">= 2 tokens"):
    unilm.make_example(np.array([5], np.int32), np.random.default_rng(0), _params(), VOCAB)
