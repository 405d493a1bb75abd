"""`prepare` with the In-Context Pretraining order: blocks cut from the ordered stream, shuffled;
duplicates dropped and counted; the order in the cache key and the manifest."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from data_pipelines import icp, prepare, sources
from data_pipelines.errors import DataError
from tests.data_pipelines.test_prepare import BLOCK, _all_blocks, _join
from tests.data_pipelines.test_tokenizer import tiny_documents, train_tiny

SPEC = icp.OrderSpec(k=5, seed=1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return train_tiny(str(tmp_path_factory.mktemp("tok") / "tiny"))


@pytest.fixture()
def corpus(tmp_path):
  docs = tiny_documents(200, seed=3)
  docs += [docs[10], docs[20]]  # two exact copies
  path = tmp_path / "corpus.jsonl"
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  return str(path)


def _rows(blocks: np.ndarray) -> list[tuple[int, ...]]:
  return sorted(map(tuple, blocks.tolist()))


def test_blocks_are_the_ordered_stream_shuffled(tok, corpus, tmp_path):
  manifest = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "out"), shard_size=50,
                             validation_fraction=0.1, order=SPEC)
  docs = list(sources.read_documents(corpus))
  duplicates = 0
  for split in prepare.SPLITS:
    info = manifest.splits[split]
    texts = [d for d in docs if prepare.is_validation(d, 0.1) == (split == "validation")]
    ids = [np.asarray(x, np.int64) for x in tok.encode_batch(texts)]
    spec = dataclasses.replace(SPEC, k=min(SPEC.k, len(ids) - 1))
    path, report = icp.order_documents(ids, spec, show_progress=False)
    assert info.num_documents == len(path) == len(ids) - report.num_duplicates
    assert info.num_duplicates == report.num_duplicates
    duplicates += info.num_duplicates
    stream = _join([ids[i] for i in path])  # every kept document once: tokens conserved
    assert info.num_tokens == len(stream)
    blocks = _all_blocks(manifest, split)
    expected = stream[: info.num_blocks * BLOCK].reshape(-1, BLOCK)
    assert _rows(blocks) == _rows(expected)
    if split == "train":
      assert not np.array_equal(blocks, expected)  # shuffled
      assert manifest.order["report"]["train"]["num_paths"] == report.num_paths
  assert duplicates == 2
  assert {k: v for k, v in manifest.order.items() if k != "report"} == SPEC.fingerprint()
  again = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "again"), shard_size=50,
                          validation_fraction=0.1, order=SPEC)
  np.testing.assert_array_equal(_all_blocks(again, "train"), _all_blocks(manifest, "train"))


def test_order_in_cache_key_and_checked(tok, corpus, tmp_path):
  keys = {prepare.cache_key(corpus, tok, BLOCK, order=o)
          for o in (None, SPEC, dataclasses.replace(SPEC, k=6),
                    dataclasses.replace(SPEC, seed=2), dataclasses.replace(SPEC, dedup=0.8))}
  assert len(keys) == 5
  assert prepare.cache_key(corpus, tok, BLOCK, order=SPEC).split("-")[-2] == "icp"
  root = str(tmp_path / "cache")
  made = prepare.ensure_prepared(root, corpus, tok, BLOCK, order=SPEC)
  reused = prepare.ensure_prepared(root, corpus, tok, BLOCK, order=SPEC)
  assert reused.directory == made.directory
  with pytest.raises(DataError, match="holds documents in the ICP order k=5.*needs corpus order"):
    prepare.check_manifest(made, tok, BLOCK)


def test_one_document_corpus_refused(tok, tmp_path):
  path = tmp_path / "one.jsonl"
  path.write_text(json.dumps({"text": " ".join(tiny_documents(30))}) + "\n")
  with pytest.raises(DataError, match="has 1 document; use data.order=random"):
    prepare.prepare(str(path), tok, BLOCK, str(tmp_path / "out"), order=SPEC)
  assert not list(tmp_path.glob("out*"))
