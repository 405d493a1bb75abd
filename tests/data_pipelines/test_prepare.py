"""Tests for data_pipelines.prepare: counts, round trip, atomicity, cache keys, errors."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipelines import prepare, sources, tokenizer, vocab
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
  monkeypatch.setattr(prepare._ShardWriter, "finish", lambda self: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    prepare.prepare(corpus, tok, BLOCK, out)
  assert prepare.load_manifest(out).to_json() == first.to_json()
  assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl", "out"]


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
