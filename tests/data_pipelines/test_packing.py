"""Packing invariants (OBJECTIVES.md §6): greedy and order-preserving, segment ids from 1 and 0
only in the trailing pad, positions restart per example, unpacking gives the examples back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipelines import packing
from data_pipelines.errors import DataError

lengths_st = st.lists(st.integers(0, 20), min_size=0, max_size=30)


def _examples(sizes, dec_sizes=None, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i, n in enumerate(sizes):
    ex = {"input_ids": rng.integers(6, 100, n).astype(np.int32)}
    if dec_sizes is not None:
      ex["labels"] = rng.integers(6, 100, dec_sizes[i]).astype(np.int32)
    out.append(ex)
  return out


@settings(max_examples=150, deadline=None)
@given(sizes=lengths_st, row=st.integers(1, 24))
def test_single_stream_invariants(sizes, row):
  examples = _examples(sizes)
  rows = list(packing.pack(examples, {"input_ids": row}))
  kept = [ex["input_ids"][:row] for ex in examples if len(ex["input_ids"])]
  recovered = []
  for r in rows:
    seg, pos = r["segment_ids"], r["positions"]
    assert r["input_ids"].shape == seg.shape == pos.shape == (row,)
    nonzero = np.flatnonzero(seg)
    assert len(nonzero) and np.array_equal(nonzero, np.arange(len(nonzero)))  # pad trails
    assert np.all(np.diff(seg[nonzero]) >= 0)
    assert seg[0] == 1
    assert np.all(r["input_ids"][seg == 0] == 0)
    for k in range(1, seg.max() + 1):
      assert np.array_equal(pos[seg == k], np.arange(np.sum(seg == k)))
    recovered += packing.unpack(r, "input_ids")
  assert len(recovered) == len(kept)
  for a, b in zip(recovered, kept):
    assert np.array_equal(a, b)
  # greedy: the first example of each row did not fit into the previous row
  for prev, nxt in itertools.pairwise(rows):
    used = int(np.sum(prev["segment_ids"] > 0))
    first = int(np.sum(nxt["segment_ids"] == 1))
    assert used + first > row


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 6)), max_size=20))
def test_encoder_decoder_streams_share_segments(sizes):
  examples = _examples([a for a, _ in sizes], [b for _, b in sizes], seed=1)
  rows = list(packing.pack(examples, {"input_ids": 16, "labels": 8},
                           groups={"input_ids": "", "labels": "decoder_"}))
  enc, dec = [], []
  for r in rows:
    assert r["segment_ids"].max() == r["decoder_segment_ids"].max()
    assert np.all(r["labels"][r["decoder_segment_ids"] == 0] == -100)
    enc += packing.unpack(r, "input_ids")
    dec += packing.unpack(r, "labels", "decoder_")
  assert [len(x) for x in enc] == [min(a, 16) for a, _ in sizes]
  for got, ex in zip(dec, examples):
    assert np.array_equal(got, ex["labels"][:8])


def test_missing_feature_and_bad_length():
  with pytest.raises(DataError, match="lacks features"):
    list(packing.pack([{"labels": np.ones(3, np.int32)}], {"input_ids": 8}))
  with pytest.raises(DataError, match="must be >= 1"):
    list(packing.pack([], {"input_ids": 0}))
