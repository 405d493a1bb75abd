"""Tests for data_pipelines.prepare: counts, round trip, atomicity, cache keys, errors."""

import hashlib
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipelines import packing, prepare, shards, sources, tokenizer, vocab
from data_pipelines.errors import DataError
from tests.data_pipelines.test_tokenizer import tiny_documents, train_tiny

BLOCK = 16


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return train_tiny(str(tmp_path_factory.mktemp("tok") / "tiny"))


@pytest.fixture()
def corpus(tmp_path):
  path = tmp_path / "corpus.jsonl"
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in tiny_documents(200, seed=3)))
  return str(path)


def _join(docs) -> np.ndarray:
  """Documents joined with EOS between them: the stream `prepare` cuts into blocks."""
  parts = []
  for i, doc in enumerate(docs):
    parts += ([[vocab.EOS_ID]] if i else []) + [np.asarray(doc, np.int64)]
  return np.concatenate(parts)


def _all_blocks(manifest: prepare.Manifest, split: str) -> np.ndarray:
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  source = array_record_data_source.ArrayRecordDataSource(manifest.shard_paths(split))
  return np.stack([np.frombuffer(source[i], manifest.dtype) for i in range(len(source))])


def test_counts_and_concatenation_round_trip(tok, corpus, tmp_path):
  manifest = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "out"), shard_size=50,
                             validation_fraction=0.1)
  assert manifest.dtype == "uint16" and manifest.vocab_size == tok.vocab_size
  docs = list(sources.read_documents(corpus))
  assert sum(s.num_documents for s in manifest.splits.values()) == len(docs)
  for split in prepare.SPLITS:
    info = manifest.splits[split]
    in_split = [d for d in docs if prepare.is_validation(d, 0.1) == (split == "validation")]
    assert info.num_documents == len(in_split) > 0
    stream = _join(tok.encode_batch(in_split))
    assert info.num_tokens == len(stream)
    assert info.num_blocks == len(stream) // BLOCK
    blocks = _all_blocks(manifest, split)
    assert blocks.shape == (info.num_blocks, BLOCK)
    np.testing.assert_array_equal(blocks.reshape(-1), stream[: info.num_blocks * BLOCK])
  n_shards = -(-manifest.splits["train"].num_blocks // 50)
  assert manifest.splits["train"].shards == [
      f"train-{i:05d}-of-{n_shards:05d}.array_record" for i in range(n_shards)]
  assert prepare.load_manifest(str(tmp_path / "out")).to_json() == manifest.to_json()


def test_validation_assignment_is_by_text_not_order():
  texts = [f"document {i}" for i in range(2000)]
  chosen = {t for t in texts if prepare.is_validation(t, 0.05)}
  assert chosen == {t for t in reversed(texts) if prepare.is_validation(t, 0.05)}
  assert 50 < len(chosen) < 150


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=20),
       block_length=st.integers(2, 25))
def test_cut_blocks_property(lengths, block_length):
  rng = np.random.default_rng(len(lengths))
  docs = [rng.integers(6, 100, size=n) for n in lengths]
  stream = _join(docs)
  chunks = list(prepare.cut_blocks(docs, block_length))
  blocks = np.concatenate(chunks) if chunks else np.zeros((0, block_length), np.int64)
  assert blocks.shape == (len(stream) // block_length, block_length)
  np.testing.assert_array_equal(blocks.reshape(-1), stream[: blocks.size])


def test_crash_leaves_no_prepared_dir(tok, corpus, tmp_path, monkeypatch):
  out = str(tmp_path / "out")

  def boom(self, texts):
    raise RuntimeError("simulated crash")

  monkeypatch.setattr(tokenizer.Tokenizer, "encode_batch", boom)
  with pytest.raises(RuntimeError, match="simulated crash"):
    prepare.prepare(corpus, tok, BLOCK, out)
  assert os.listdir(tmp_path) == ["corpus.jsonl"]


def test_failed_reprepare_keeps_previous(tok, corpus, tmp_path, monkeypatch):
  out = str(tmp_path / "out")
  first = prepare.prepare(corpus, tok, BLOCK, out)
  monkeypatch.setattr(shards.ShardWriter, "finish", lambda self: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    prepare.prepare(corpus, tok, BLOCK, out)
  assert prepare.load_manifest(out).to_json() == first.to_json()
  assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl", "out"]


def test_blocks_without_separator(tok, corpus, tmp_path):
  # T5's reduce_concat_tokens: documents back to back, no EOS between them.
  manifest = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "out"), separator_id=None,
                             validation_fraction=0.1)
  assert manifest.separator_id is None
  assert prepare.load_manifest(manifest.directory).separator_id is None
  assert "no separator between documents" in manifest.summary()
  docs = list(sources.read_documents(corpus))
  for split in prepare.SPLITS:
    info = manifest.splits[split]
    in_split = [d for d in docs if prepare.is_validation(d, 0.1) == (split == "validation")]
    stream = np.concatenate([np.asarray(ids, np.int64) for ids in tok.encode_batch(in_split)])
    assert info.num_tokens == len(stream) and info.num_blocks == len(stream) // BLOCK
    np.testing.assert_array_equal(_all_blocks(manifest, split).reshape(-1),
                                  stream[: info.num_blocks * BLOCK])


def test_separator_choice_is_in_the_cache_key_and_checked(tok, corpus, tmp_path):
  separated = prepare.cache_key(corpus, tok, BLOCK)
  assert separated == prepare.cache_key(corpus, tok, BLOCK, separated=True)
  bare = prepare.cache_key(corpus, tok, BLOCK, separated=False)
  assert bare != separated and bare.startswith(f"corpus.jsonl-L{BLOCK}-")
  # Documents mode has no separators either way: one key.
  assert (prepare.cache_key(corpus, tok, BLOCK, pack=MLM_SPEC, separated=False)
          == prepare.cache_key(corpus, tok, BLOCK, pack=MLM_SPEC))
  root = str(tmp_path / "cache")
  with_eos = prepare.ensure_prepared(root, corpus, tok, BLOCK)
  without = prepare.ensure_prepared(root, corpus, tok, BLOCK, separated=False)
  assert without.directory != with_eos.directory
  assert with_eos.separator_id == vocab.EOS_ID and without.separator_id is None
  with pytest.raises(DataError, match=r"holds blocks of documents concatenated with a separator "
                                      r"between them \(no packing\), but the run needs blocks of "
                                      r"documents concatenated with no separator"):
    prepare.check_manifest(with_eos, tok, BLOCK, separated=False)
  with pytest.raises(DataError, match="holds blocks of documents concatenated with no separator"):
    prepare.check_manifest(without, tok, BLOCK, separated=True)
  prepare.check_manifest(without, tok, BLOCK)  # None: either


def test_ensure_prepared_caches_and_key_is_deterministic(tok, corpus, tmp_path):
  root = str(tmp_path / "cache")
  first = prepare.ensure_prepared(root, corpus, tok, BLOCK)
  mtime = os.path.getmtime(os.path.join(first.directory, prepare.MANIFEST_NAME))
  second = prepare.ensure_prepared(root, corpus, tok, BLOCK)
  assert second.directory == first.directory
  assert os.path.getmtime(os.path.join(second.directory, prepare.MANIFEST_NAME)) == mtime
  key = prepare.cache_key(corpus, tok, BLOCK)
  assert key == prepare.cache_key(corpus, tok, BLOCK)
  assert key != prepare.cache_key(corpus, tok, BLOCK + 1)
  assert key != prepare.cache_key(corpus, tok, BLOCK, validation_fraction=0.1)
  os.utime(corpus, ns=(1, 1))
  assert key != prepare.cache_key(corpus, tok, BLOCK)


def test_manifest_tokenizer_mismatch(tok, corpus, tmp_path):
  manifest = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "out"))
  other = tokenizer.load_tokenizer("bundled")
  with pytest.raises(DataError, match=r"prepared data at .*out was made with tokenizer "
                                      rf"{tok.sha256[:12]}.*but the run uses {other.sha256[:12]}"):
    prepare.check_manifest(manifest, other)
  with pytest.raises(DataError, match="has block_length 16, but the run needs 32"):
    prepare.check_manifest(manifest, tok, 32)


def test_ensure_prepared_rejects_foreign_manifest(tok, corpus, tmp_path):
  root = str(tmp_path / "cache")
  manifest = prepare.ensure_prepared(root, corpus, tok, BLOCK)
  path = os.path.join(manifest.directory, prepare.MANIFEST_NAME)
  with open(path) as f:
    raw = json.load(f)
  raw["tokenizer_sha256"] = "f" * 64
  with open(path, "w") as f:
    json.dump(raw, f)
  with pytest.raises(DataError, match="was made with tokenizer ffffffffffff"):
    prepare.ensure_prepared(root, corpus, tok, BLOCK)


def test_too_few_tokens(tok, tmp_path):
  path = tmp_path / "small.txt"
  path.write_text("the fox\n\nthe dog\n")
  with pytest.raises(DataError, match=r"small\.txt has \d+ tokens, too few .* length 64"):
    prepare.prepare(str(path), tok, 64, str(tmp_path / "out"))


def test_empty_validation_borrows_train_tail(tok, corpus, tmp_path):
  manifest = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "out"), validation_fraction=0.0)
  train, val = manifest.splits["train"], manifest.splits["validation"]
  assert val.num_documents == 0 and val.num_blocks == val.borrowed_from_train >= 1
  assert train.num_blocks + val.num_blocks == train.num_tokens // BLOCK
  whole = np.concatenate([_all_blocks(manifest, "train"), _all_blocks(manifest, "validation")])
  stream = _join(tok.encode_batch(list(sources.read_documents(corpus))))
  np.testing.assert_array_equal(whole.reshape(-1), stream[: whole.size])


def test_missing_and_bad_manifest(tmp_path):
  with pytest.raises(DataError, match="manifest.json is missing"):
    prepare.load_manifest(str(tmp_path))
  (tmp_path / "manifest.json").write_text('{"format_version": 99}')
  with pytest.raises(DataError, match="format_version 99"):
    prepare.load_manifest(str(tmp_path))
  (tmp_path / "manifest.json").write_text("{not json")
  with pytest.raises(DataError, match="not a valid manifest"):
    prepare.load_manifest(str(tmp_path))


def test_bad_arguments(tok, corpus, tmp_path):
  with pytest.raises(DataError, match="block_length must be >= 2"):
    prepare.prepare(corpus, tok, 1, str(tmp_path / "o"))
  with pytest.raises(DataError, match="validation_fraction"):
    prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "o"), validation_fraction=1.5)


def test_bundled_corpus_with_bundled_tokenizer(tmp_path):
  tok = tokenizer.load_tokenizer("bundled")
  manifest = prepare.ensure_prepared(str(tmp_path), "bundled", tok, 512)
  assert manifest.splits["train"].num_blocks > 900 and manifest.splits["validation"].num_blocks
  assert manifest.tokenizer_sha256 == tok.sha256 and manifest.dtype == "uint16"


# Documents mode ("packing"): chunks of <= BLOCK tokens packed greedily into rows.

def _sc_lengths(r: int) -> tuple[int, int]:
  """T5 span corruption at density 0.15, mean span 3: (inputs, targets) for r raw tokens."""
  n = min(max(round(r * 0.15), 1), r - 1)
  s = min(max(round(n / 3), 1), n, r - n)
  return r - n + s + 1, n + s + 1


MLM_SPEC = packing.PackSpec("mlm", lambda r: (r + 2,), (40,))
T5_SPEC = packing.PackSpec("span_corruption(0.15,3.0)", _sc_lengths, (30, 9), min_length=3)


def _all_rows(manifest: prepare.Manifest, split: str) -> list[list[np.ndarray]]:
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  source = array_record_data_source.ArrayRecordDataSource(manifest.shard_paths(split))
  return [prepare.decode_row(source[i], manifest.dtype) for i in range(len(source))]


def _used(spec: packing.PackSpec, row) -> np.ndarray:
  return np.sum([spec.lengths(len(c)) for c in row], axis=0)


@pytest.mark.parametrize("spec", [MLM_SPEC, T5_SPEC], ids=["mlm", "t5"])
def test_documents_mode_rows(tok, corpus, tmp_path, spec):
  manifest = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "out"), shard_size=50,
                             validation_fraction=0.1, pack=spec)
  assert manifest.packed and manifest.packing == {
      "key": spec.key, "capacity": list(spec.capacity), "min_length": spec.min_length,
      "lengths_sha256": spec.fingerprint(BLOCK)}
  assert prepare.load_manifest(str(tmp_path / "out")).to_json() == manifest.to_json()
  docs = list(sources.read_documents(corpus))
  for split in prepare.SPLITS:
    info = manifest.splits[split]
    in_split = tok.encode_batch(
        [d for d in docs if prepare.is_validation(d, 0.1) == (split == "validation")])
    rows = _all_rows(manifest, split)
    assert len(rows) == info.num_blocks > 0 and info.borrowed_from_train == 0  # record 1:1 row
    segments = [s for row in rows for s in row]
    # Walking the documents in order: each document's chunks come next, in order, and join
    # back to its ids; only a tail shorter than min_length is left out.
    k = 0
    for ids in in_split:
      got = []
      while k < len(segments) and sum(map(len, got)) < len(ids):
        if not np.array_equal(segments[k], ids[sum(map(len, got)):][: len(segments[k])]):
          break
        got.append(segments[k])
        k += 1
      assert all(len(c) == BLOCK for c in got[:-1]) and all(spec.min_length <= len(c) <= BLOCK
                                                            for c in got)
      dropped = len(ids) - sum(map(len, got))
      assert dropped == 0 or (dropped < spec.min_length and dropped == len(ids) % BLOCK)
    assert k == len(segments)
    assert info.num_documents == len(in_split)
    assert info.num_tokens == sum(map(len, in_split))
    assert info.num_dropped_tokens == info.num_tokens - sum(map(len, segments))
    assert info.num_segments == len(segments)
    used = [_used(spec, row) for row in rows]
    assert info.stream_tokens == list(np.sum(used, axis=0))
    assert all(np.all(u <= spec.capacity) for u in used)  # every row within capacity
    for u, nxt in zip(used, rows[1:]):  # greedy: the next row's first chunk did not fit
      assert np.any(u + spec.lengths(len(nxt[0])) > spec.capacity)
  assert len(manifest.splits["train"].shards) > 1
  assert "chunks in" in manifest.summary() and "fill" in manifest.summary()


def test_documents_mode_borrows_validation_rows(tok, corpus, tmp_path):
  manifest = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "out"), validation_fraction=0.0,
                             pack=MLM_SPEC)
  train, val = manifest.splits["train"], manifest.splits["validation"]
  assert val.num_documents == 0 and val.num_blocks == val.borrowed_from_train >= 1
  rows = _all_rows(manifest, "train") + _all_rows(manifest, "validation")
  assert train.num_segments + val.num_segments == sum(map(len, rows))
  assert [a + b for a, b in zip(train.stream_tokens, val.stream_tokens)] == list(
      np.sum([_used(MLM_SPEC, r) for r in rows], axis=0))
  ids = tok.encode_batch(list(sources.read_documents(corpus)))
  chunks = [c for doc in ids for c in packing.chunk_document(doc, BLOCK, MLM_SPEC.min_length)]
  segments = [s for row in rows for s in row]
  assert len(segments) == len(chunks)
  assert all(np.array_equal(a, b) for a, b in zip(segments, chunks))


def test_documents_mode_errors(tok, corpus, tmp_path):
  path = tmp_path / "small.txt"
  path.write_text("the fox\n\nthe dog\n")
  with pytest.raises(DataError, match=r"small\.txt has \d+ tokens in \d+ chunks of 2 to 64 "
                                      r"tokens, too few to make one train and one validation row "
                                      r"\(packing 'mlm'"):
    prepare.prepare(str(path), tok, 64, str(tmp_path / "out"),
                    pack=packing.PackSpec("mlm", lambda r: (r + 2,), (66,)))
  with pytest.raises(DataError, match=r"a chunk of 16 raw tokens \(block_length 16\) takes 18 "
                                      r"positions of stream 0, more than its row capacity 16"):
    prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "out"),
                    pack=packing.PackSpec("mlm", lambda r: (r + 2,), (16,)))
  assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl", "small.txt"]


def test_cache_key_by_mode(tok, corpus):
  blocks = prepare.cache_key(corpus, tok, BLOCK)
  # Blocks mode keeps the key it had before documents mode existed (existing caches stay valid).
  identity = json.dumps([prepare.FORMAT_VERSION, sources.fingerprint(corpus), tok.sha256, BLOCK,
                         0.02])
  assert blocks == f"corpus.jsonl-L{BLOCK}-" + hashlib.sha256(identity.encode()).hexdigest()[:16]
  packed = prepare.cache_key(corpus, tok, BLOCK, pack=MLM_SPEC)
  assert packed.startswith(f"corpus.jsonl-L{BLOCK}-mlm-") and packed != blocks
  assert packed == prepare.cache_key(corpus, tok, BLOCK,
                                     pack=packing.PackSpec("mlm", lambda r: (r + 2,), (40,)))
  others = [packing.PackSpec("mlm2", MLM_SPEC.lengths, (40,)),
            packing.PackSpec("mlm", MLM_SPEC.lengths, (41,)),
            packing.PackSpec("mlm", MLM_SPEC.lengths, (40,), min_length=1),
            packing.PackSpec("mlm", lambda r: (r + 3,), (40,)),  # same key, other lengths
            T5_SPEC]
  keys = {prepare.cache_key(corpus, tok, BLOCK, pack=p) for p in others}
  assert len(keys) == len(others) and packed not in keys and blocks not in keys
  assert T5_SPEC.key not in prepare.cache_key(corpus, tok, BLOCK, pack=T5_SPEC)  # sanitised
  assert "span_corruption_0.15_3.0_" in prepare.cache_key(corpus, tok, BLOCK, pack=T5_SPEC)


def test_check_manifest_refuses_other_mode(tok, corpus, tmp_path):
  root = str(tmp_path / "cache")
  blocks = prepare.ensure_prepared(root, corpus, tok, BLOCK)
  packed = prepare.ensure_prepared(root, corpus, tok, BLOCK, pack=MLM_SPEC)
  assert packed.directory != blocks.directory and packed.packed and not blocks.packed
  mtime = os.path.getmtime(os.path.join(packed.directory, prepare.MANIFEST_NAME))
  again = prepare.ensure_prepared(root, corpus, tok, BLOCK, pack=MLM_SPEC)
  assert again.directory == packed.directory
  assert os.path.getmtime(os.path.join(again.directory, prepare.MANIFEST_NAME)) == mtime
  prepare.check_manifest(packed, tok, BLOCK, MLM_SPEC)
  with pytest.raises(DataError, match=r"holds blocks of concatenated documents \(no packing\), "
                                      r"but the run needs documents packed for 'mlm' into rows "
                                      r"of \(40,\)"):
    prepare.check_manifest(blocks, tok, BLOCK, MLM_SPEC)
  with pytest.raises(DataError, match=r"holds documents packed for 'mlm' .* but the run needs "
                                      r"blocks of concatenated documents"):
    prepare.check_manifest(packed, tok, BLOCK)
  with pytest.raises(DataError, match=r"but the run needs documents packed for 'span_corr"):
    prepare.check_manifest(packed, tok, BLOCK, T5_SPEC)
  with pytest.raises(DataError, match=r"into rows of \(40,\) .* needs .* rows of \(48,\)"):
    prepare.check_manifest(packed, tok, BLOCK, packing.PackSpec("mlm", MLM_SPEC.lengths, (48,)))
  with pytest.raises(DataError, match=r"packed with lengths of 'mlm' that differ from the run's"):
    prepare.check_manifest(packed, tok, BLOCK, packing.PackSpec("mlm", lambda r: (r + 3,), (40,)))
  # A cache whose manifest disagrees with its key (edited, or an older lengths) is refused too.
  path = os.path.join(packed.directory, prepare.MANIFEST_NAME)
  with open(path) as f:
    raw = json.load(f)
  raw["packing"]["lengths_sha256"] = "0" * 64
  with open(path, "w") as f:
    json.dump(raw, f)
  with pytest.raises(DataError, match="differ from the run's"):
    prepare.ensure_prepared(root, corpus, tok, BLOCK, pack=MLM_SPEC)
  raw["packing"] = {"key": "mlm"}
  with open(path, "w") as f:
    json.dump(raw, f)
  with pytest.raises(DataError, match="not a valid manifest .*packing must be null or an object"):
    prepare.load_manifest(packed.directory)


@pytest.mark.parametrize("dtype", ["uint16", "int32"])
def test_encode_decode_row(dtype):
  segments = [np.array([5, 6, 7]), np.array([65535 if dtype == "uint16" else 2**31 - 1]),
              np.array([9, 10])]
  record = prepare.encode_row(segments, dtype)
  assert len(record) == 4 * 4 + 6 * np.dtype(dtype).itemsize
  decoded = prepare.decode_row(record, dtype)
  assert len(decoded) == 3 and all(d.dtype == np.int32 for d in decoded)
  for a, b in zip(decoded, segments):
    np.testing.assert_array_equal(a, b)
  assert prepare.decode_row(prepare.encode_row([], dtype), dtype) == []
  with pytest.raises(DataError, match="malformed packed record"):
    prepare.decode_row(record[:-1], dtype)
  with pytest.raises(DataError, match="malformed packed record"):
    prepare.decode_row(b"\x09\x00\x00\x00", dtype)
