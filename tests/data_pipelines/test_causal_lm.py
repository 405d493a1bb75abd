"""Causal and prefix LM examples and rows (docs/objectives.md, "Causal and prefix LM"): a
document alone gets exactly HF's shifted-loss targets, packed documents never predict across
their boundary, and the prefix split is uniform with the loss on the suffix only."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from data_pipelines.errors import DataError
from data_pipelines.objectives import causal_lm
from data_pipelines.vocab import IGNORE_INDEX, VocabInfo
from t5x_like import config as config_lib
from t5x_like.config import ConfigError
from t5x_like.objectives import causal_lm as record
from t5x_like.objectives import prefix_lm as prefix_record

VOCAB = VocabInfo.synthetic(200)


def _config(cls: type = record.CausalLMConfig, pack: bool = True, seq_len: int = 16,
            **objective):
  """The sections the objective's data side reads (checked by the section itself)."""
  config = types.SimpleNamespace(objective=cls(**objective), data=config_lib.DataConfig(
      seq_len=seq_len, pack_documents=pack))
  config.objective.check(config)
  return config


def test_a_sequence_gives_hfs_shifted_targets():
  seq = np.arange(10, 20, dtype=np.int32)
  ex = causal_lm.make_example(seq, np.random.default_rng(0), causal_lm.CausalLMParams())
  np.testing.assert_array_equal(ex["input_ids"], seq[:-1])
  np.testing.assert_array_equal(ex["labels"], seq[1:])
  # HF's LM loss on `seq` alone: logits[:-1] against seq[1:], len(seq) - 1 terms
  assert np.sum(ex["labels"] != IGNORE_INDEX) == len(seq) - 1
  with pytest.raises(DataError, match="needs >= 2 tokens"):
    causal_lm.make_example(seq[:1], np.random.default_rng(0), causal_lm.CausalLMParams())


def test_blocks_mode_rows_are_full():
  config = _config(pack=False)
  assert record.block_length(config) == 17  # L + 1: all L positions have a target
  make = record.make_example(config, VOCAB)
  block = np.arange(30, 47, dtype=np.int32)
  ex = make(block, np.random.default_rng(0))
  assert ex["input_ids"].shape == ex["labels"].shape == (16,)
  assert np.all(ex["labels"] != IGNORE_INDEX)


@pytest.mark.parametrize("add_bos", [False, True])
def test_packed_documents_never_predict_across_their_boundary(add_bos):
  config = _config(add_bos=add_bos, seq_len=32)
  make, row_of = record.make_example(config, VOCAB), record.pack_row(config, VOCAB)
  rng = np.random.default_rng(3)
  docs = [rng.integers(10, 190, n).astype(np.int32) for n in (5, 9, 7)]
  assert sum(len(d) + add_bos for d in docs) <= 32  # they fit in one row
  assert record.pack_spec(config, "causal_lm").lengths(5) == (5 + add_bos,)
  row = row_of([make(d, rng) for d in docs])
  seg, pos, ids, labels = row["segment_ids"], row["positions"], row["input_ids"], row["labels"]
  for k, doc in enumerate(docs, 1):
    at = seg == k
    seq = np.concatenate([[VOCAB.bos_id] if add_bos else [], doc, [VOCAB.eos_id]])
    np.testing.assert_array_equal(ids[at], seq[:-1])
    np.testing.assert_array_equal(labels[at], seq[1:])  # last input predicts EOS, no more
    np.testing.assert_array_equal(pos[at], np.arange(len(seq) - 1))
  # every scored position predicts the next token of its own document
  scored = np.flatnonzero(labels != IGNORE_INDEX)
  inner = scored[scored + 1 < len(ids)]
  same = seg[inner + 1] == seg[inner]
  np.testing.assert_array_equal(labels[inner[same]], ids[inner[same] + 1])
  # where the next position starts another document (or padding), the label is its EOS
  assert np.all(labels[inner[~same]] == VOCAB.eos_id)
  assert np.all(labels[seg == 0] == IGNORE_INDEX) and np.all(ids[seg == 0] == VOCAB.pad_id)


def test_prefix_split_is_uniform_and_the_loss_is_on_the_suffix():
  p = causal_lm.CausalLMParams(prefix=True)
  n, draws = 9, 8000
  rng = np.random.default_rng(0)
  seq = np.arange(100, 100 + n, dtype=np.int32)
  counts = np.zeros(n, np.int64)
  for _ in range(draws):
    ex = causal_lm.make_example(seq, rng, p)
    k = int(ex["prefix"].sum())
    counts[k] += 1
    assert 1 <= k <= n - 1
    np.testing.assert_array_equal(ex["prefix"], np.arange(n - 1) < k)
    # targets: s[k:], predicted from positions k-1 .. n-2
    scored = ex["labels"] != IGNORE_INDEX
    np.testing.assert_array_equal(scored, np.arange(n - 1) >= k - 1)
    np.testing.assert_array_equal(ex["labels"][scored], seq[k:])
  # each of the n-1 split points has probability 1/(n-1); 5 binomial sigmas each
  expected = draws / (n - 1)
  sigma = math.sqrt(draws * (1 / (n - 1)) * (1 - 1 / (n - 1)))
  assert np.all(np.abs(counts[1:] - expected) < 5 * sigma), counts


def test_prefix_rows_carry_the_prefix_feature():
  config = _config(prefix_record.PrefixLMConfig, seq_len=24)
  make, row_of = record.make_example(config, VOCAB, prefix=True), record.pack_row(
      config, VOCAB, prefix=True)
  rng = np.random.default_rng(1)
  row = row_of([make(np.arange(20, 28), rng), make(np.arange(40, 50), rng)])
  for k in (1, 2):
    at = row["segment_ids"] == k
    prefix = row["prefix"][at]
    # a prefix is the first inputs of its document, then only suffix
    cut = int(prefix.sum())
    assert cut >= 1 and np.all(prefix[:cut] == 1) and np.all(prefix[cut:] == 0)
  assert np.all(row["prefix"][row["segment_ids"] == 0] == 0)


def test_add_bos_needs_packed_documents():
  with pytest.raises(ConfigError, match="objective.add_bos needs data.pack_documents=true"):
    _config(pack=False, add_bos=True)
