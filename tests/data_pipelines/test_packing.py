"""Packing invariants (docs/objectives.md, "Packing"): greedy and order-preserving, segment ids
from 1 and 0 only in the trailing pad, positions restart per example, unpacking gives the
examples back."""

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


def test_pack_one_matches_pack_and_never_trims():
  examples = _examples([3, 0, 5], [2, 0, 1], seed=2)
  lengths = {"input_ids": 10, "labels": 4}
  groups = {"input_ids": "", "labels": "decoder_"}
  row = packing.pack_one(examples, lengths, groups=groups)
  (expected,) = packing.pack(examples, lengths, groups=groups)
  assert row.keys() == expected.keys()
  for key in row:
    np.testing.assert_array_equal(row[key], expected[key])
  empty = packing.pack_one([], {"input_ids": 4})
  assert not empty["input_ids"].any() and not empty["segment_ids"].any()
  with pytest.raises(DataError, match=r"after example 2, 'input_ids' needs 11 > 10"):
    packing.pack_one(_examples([3, 2, 6]), {"input_ids": 10})
  with pytest.raises(DataError, match=r"'labels' needs 5 > 4"):
    packing.pack_one(_examples([1], [5]), lengths, groups=groups)
  with pytest.raises(DataError, match="lacks features"):
    packing.pack_one([{"labels": np.ones(3, np.int32)}], {"input_ids": 8})


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), max_size=8),
       row=st.integers(1, 24), start_id=st.integers(0, 5), batch=st.booleans())
def test_shift_right_per_segment(sizes, row, start_id, batch):
  examples = _examples([a for a, _ in sizes], [b for _, b in sizes], seed=len(sizes))
  rows = list(packing.pack(examples, {"input_ids": 32, "labels": row},
                           groups={"input_ids": "", "labels": "decoder_"}))
  if not rows:
    return
  for r in rows:
    seg, labels = r["decoder_segment_ids"], r["labels"]
    shifted = packing.shift_right_per_segment(labels, seg, start_id)
    assert shifted.dtype == np.int32 and shifted.shape == labels.shape
    assert np.all(shifted[seg == 0] == 0)  # padding stays 0 (never -100)
    for k in range(1, int(seg.max()) + 1):
      where = np.flatnonzero(seg == k)
      # One segment alone is a plain shift right with start_id in front.
      np.testing.assert_array_equal(shifted[where],
                                    np.concatenate([[start_id], labels[where][:-1]]))
  if batch:  # any leading axes: the same per row
    stacked = packing.shift_right_per_segment(np.stack([r["labels"] for r in rows]),
                                              np.stack([r["decoder_segment_ids"] for r in rows]),
                                              start_id)
    for i, r in enumerate(rows):
      np.testing.assert_array_equal(
          stacked[i], packing.shift_right_per_segment(r["labels"], r["decoder_segment_ids"],
                                                      start_id))


def test_shift_right_shape_mismatch():
  with pytest.raises(DataError, match="same shape"):
    packing.shift_right_per_segment(np.zeros(3), np.zeros(4))


@settings(max_examples=150, deadline=None)
@given(length=st.integers(0, 60), block=st.integers(1, 12), min_length=st.integers(1, 12))
def test_chunk_document(length, block, min_length):
  ids = np.arange(100, 100 + length)
  chunks = packing.chunk_document(ids, block, min_length)
  joined = np.concatenate(chunks) if chunks else ids[:0]
  np.testing.assert_array_equal(joined, ids[: len(joined)])
  assert all(min_length <= len(c) <= block for c in chunks)
  assert all(len(c) == block for c in chunks[:-1])
  # Only chunks shorter than min_length are dropped: a short tail (or all, if block is short).
  full = (length // block) * block if block >= min_length else 0
  tail = length % block if length % block >= min_length else 0
  assert len(joined) == full + tail


def _sc_lengths(r: int) -> tuple[int, int]:
  """T5 span corruption at density 0.15, mean span 3: (inputs, targets) for r raw tokens."""
  n = min(max(round(r * 0.15), 1), r - 1)
  s = min(max(round(n / 3), 1), n, r - n)
  return r - n + s + 1, n + s + 1


SPECS = {
    "mlm": packing.PackSpec("mlm", lambda r: (r + 2,), (20,)),
    "t5": packing.PackSpec("span_corruption(0.15,3.0)", _sc_lengths, (24, 8)),
    "odd": packing.PackSpec("odd", lambda r: (r + r % 3, 1 + r // 4), (21, 5), min_length=3),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@settings(max_examples=80, deadline=None)
@given(doc_lengths=st.lists(st.integers(0, 40), max_size=25))
def test_chunk_packer_greedy_in_order_within_capacity(name, doc_lengths):
  spec, block = SPECS[name], 12
  docs, start = [], 0
  for n in doc_lengths:
    docs.append(np.arange(start, start + n))
    start += n
  packer = packing.ChunkPacker(spec, block)
  rows = [row for doc in docs for row in packer.add_document(doc)] + packer.finish()
  assert packer.finish() == []
  expected = [c for doc in docs for c in packing.chunk_document(doc, block, spec.min_length)]
  got = [c for row in rows for c in row]
  assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
  assert packer.num_dropped_tokens == sum(doc_lengths) - sum(len(c) for c in expected)
  for row in rows:
    assert row  # never an empty row
    used = packer.measure(row)
    assert used == list(np.sum([spec.lengths(len(c)) for c in row], axis=0))
    assert all(u <= c for u, c in zip(used, spec.capacity))
  for prev, nxt in itertools.pairwise(rows):  # greedy: the next chunk did not fit
    used, need = packer.measure(prev), spec.lengths(len(nxt[0]))
    assert any(u + n > c for u, n, c in zip(used, need, spec.capacity))


def test_pack_spec_checks():
  with pytest.raises(DataError, match=r"a chunk of 16 raw tokens \(block_length 16\) takes 18 "
                                      r"positions of stream 0, more than its row capacity 16"):
    packing.PackSpec("mlm", lambda r: (r + 2,), (16,)).table(16)
  with pytest.raises(DataError, match=r"lengths\(4\) = \(6,\) must be 2 ints"):
    packing.PackSpec("bad", lambda r: (r + 2,), (10, 10)).table(4)
  with pytest.raises(DataError, match=r"lengths\(4\) failed or gave no sequence of ints "
                                      r"\(TypeError"):
    packing.PackSpec("bad", lambda r: None, (10,)).table(4)
  def needs_two(r):
    if r < 2:
      raise ValueError("too short")
    return (r,)

  with pytest.raises(DataError, match=r"lengths\(1\) failed .*ValueError: too short"):
    packing.PackSpec("bad", needs_two, (10,), min_length=1).table(4)
  with pytest.raises(DataError, match="below min_length 3"):
    SPECS["odd"].table(2)
  with pytest.raises(DataError, match="capacity must be"):
    packing.PackSpec("bad", lambda r: (r,), ())
  with pytest.raises(DataError, match="capacity must be"):
    packing.PackSpec("bad", lambda r: (r,), (4, 0))
  with pytest.raises(DataError, match="min_length must be >= 1"):
    packing.PackSpec("bad", lambda r: (r,), (4,), min_length=0)
  with pytest.raises(DataError, match="key must be a non-empty string"):
    packing.PackSpec("", lambda r: (r,), (4,))
  assert packing.PackSpec("list", lambda r: [r], [8]).capacity == (8,)


def test_pack_spec_fingerprint():
  spec = SPECS["mlm"]
  same = packing.PackSpec("mlm", lambda r: (r + 2,), (20,))
  assert spec.fingerprint(12) == same.fingerprint(12)
  assert spec.fingerprint(12) != spec.fingerprint(11)
  for other in (packing.PackSpec("mlm2", spec.lengths, (20,)),
                packing.PackSpec("mlm", spec.lengths, (19,)),
                packing.PackSpec("mlm", spec.lengths, (20,), min_length=1),
                packing.PackSpec("mlm", lambda r: (r + 3,), (20,))):
    assert other.fingerprint(12) != spec.fingerprint(12)
