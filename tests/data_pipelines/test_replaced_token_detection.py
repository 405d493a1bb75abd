"""Invariants of ELECTRA's masking for replaced-token detection (docs/objectives.md)."""

from __future__ import annotations

import math

import hypothesis
import hypothesis.strategies as st
import numpy as np

from data_pipelines.objectives import replaced_token_detection as rtd
from data_pipelines.vocab import IGNORE_INDEX, VocabInfo

VOCAB = VocabInfo.synthetic(64, num_sentinels=4, seed=1)
SETTINGS = hypothesis.settings(max_examples=150, deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _block(seed: int, length: int, special_rate: float, pad_len: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  block = rng.choice(VOCAB.normal_ids, size=length)
  specials = np.concatenate([[VOCAB.eos_id, VOCAB.unk_id], VOCAB.sentinel_ids])
  hit = rng.random(length) < special_rate
  block[hit] = rng.choice(specials, size=int(hit.sum()))
  if pad_len:
    block[length - min(pad_len, length):] = VOCAB.pad_id
  return block.astype(np.int32)


blocks = st.builds(_block, seed=st.integers(0, 2**32 - 1), length=st.integers(0, 120),
                   special_rate=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
                   pad_len=st.integers(0, 20))


@SETTINGS
@hypothesis.given(block=blocks, seed=st.integers(0, 2**32 - 1))
def test_selection_count_positions_and_corruption(block, seed):
  params = rtd.RTDParams(max_predictions=rtd.default_max_predictions(block.size + 2, 0.15))
  ex = rtd.make_example(block, np.random.default_rng(seed), params, VOCAB)
  framed = np.concatenate([[VOCAB.cls_id], block, [VOCAB.sep_id]])
  selected = ex["labels"] != IGNORE_INDEX
  candidates = ~VOCAB.is_special[framed]
  tokens = int(np.sum(framed != VOCAB.pad_id))
  # count: max(1, round(0.15 n)) over the row's non-pad tokens, as far as candidates allow
  assert selected.sum() == min(max(1, round(0.15 * tokens)), candidates.sum())
  assert not np.any(selected & ~candidates)  # never [CLS]/[SEP]/pad/EOS/sentinel
  np.testing.assert_array_equal(ex["labels"][selected], framed[selected])
  np.testing.assert_array_equal(ex["input_ids"][~selected], framed[~selected])
  # selected tokens are [MASK] or unchanged, never a random replacement
  assert np.all((ex["input_ids"][selected] == VOCAB.mask_id) |
                (ex["input_ids"][selected] == framed[selected]))
  np.testing.assert_array_equal(ex["attention_mask"], framed != VOCAB.pad_id)
  assert int(ex["dropped_by_objective"]) == 0
  again = rtd.make_example(block, np.random.default_rng(seed), params, VOCAB)
  for key, value in ex.items():
    np.testing.assert_array_equal(value, again[key])


def test_mask_and_keep_fractions_are_85_15():
  """Over n selections the [MASK] share is within 4 binomial standard deviations of 0.85."""
  params = rtd.RTDParams(max_predictions=20)
  masked = total = 0
  for i in range(1000):
    block = _block(i, 126, 0.0, 0)
    ex = rtd.make_example(block, np.random.default_rng([7, i]), params, VOCAB)
    selected = ex["labels"] != IGNORE_INDEX
    masked += int(np.sum(ex["input_ids"][selected] == VOCAB.mask_id))
    total += int(selected.sum())
  assert total == 1000 * 19  # round(0.15 * 128) = 19 per row
  sd = math.sqrt(0.85 * 0.15 / total)
  assert abs(masked / total - 0.85) < 4 * sd, masked / total


def test_positions_are_uniform_over_candidates():
  """Each block position is selected with probability K / n (4 binomial sds)."""
  params = rtd.RTDParams(max_predictions=20)
  counts = np.zeros(126)
  rows = 2000
  for i in range(rows):
    ex = rtd.make_example(_block(0, 126, 0.0, 0), np.random.default_rng([3, i]), params, VOCAB)
    counts += ex["labels"][1:-1] != IGNORE_INDEX
  p = 19 / 126
  sd = math.sqrt(p * (1 - p) / rows)
  assert np.all(np.abs(counts / rows - p) < 4.5 * sd)


def test_max_predictions_clips_and_reports_the_cut():
  ex = rtd.make_example(_block(0, 126, 0.0, 0), np.random.default_rng(0),
                        rtd.RTDParams(max_predictions=5), VOCAB)
  assert np.sum(ex["labels"] != IGNORE_INDEX) == 5
  assert int(ex["dropped_by_objective"]) == 19 - 5
