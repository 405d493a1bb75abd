"""`prepare` with several worker processes (and on Beam's DirectRunner) makes the same prepared
data, byte for byte, as one process; bad input in a worker is one DataError, nothing kept."""

import gzip
import hashlib
import itertools
import json
import os

import pytest

from data_pipelines import prepare, readers, sources
from data_pipelines.errors import DataError
from tests.data_pipelines.test_tokenizer import train_tiny

BLOCK = 24


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return train_tiny(str(tmp_path_factory.mktemp("tok") / "tiny"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  """A directory of parquet (several row groups), gzip JSON lines and text, Korean and
  English (the bundled corpora)."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  root = tmp_path_factory.mktemp("corpus")
  docs = [d for pair in zip(itertools.islice(sources.read_documents("bundled_ko"), 60),
                            itertools.islice(sources.read_documents("bundled"), 60))
          for d in pair]
  pq.write_table(pa.table({"text": docs[:40]}), str(root / "a.parquet"), row_group_size=9)
  (root / "b.jsonl.gz").write_bytes(gzip.compress("".join(
      json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs[40:90]).encode()))
  (root / "c.txt").write_text("\n\n".join(docs[90:]), encoding="utf-8")
  return str(root)


def fingerprint_dir(directory: str) -> dict[str, str]:
  """sha256 of every file; the manifest without its creation time and tokenizer path."""
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    if name == prepare.MANIFEST_NAME:
      manifest = json.loads(data)
      del manifest["created"]
      data = json.dumps(manifest, sort_keys=True).encode()
    out[name] = hashlib.sha256(data).hexdigest()
  return out


@pytest.mark.parametrize("mode", ["blocks", "no_separator"])
def test_two_workers_same_bytes_as_one(tok, corpus, tmp_path, monkeypatch, mode):
  monkeypatch.setattr(readers, "PIECE_BYTES", 4096)  # many pieces per file
  kwargs = {"shard_size": 1000, "validation_fraction": 0.1,
            "separator_id": None if mode == "no_separator" else 1}
  one = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "one"), workers=1, **kwargs)
  two = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "two"), workers=2, **kwargs)
  assert len(one.splits["train"].shards) > 2 and one.splits["validation"].num_blocks > 0
  assert fingerprint_dir(one.directory) == fingerprint_dir(two.directory)


def test_packed_documents_same_with_two_workers(tok, corpus, tmp_path):
  from data_pipelines import packing
  pack = packing.PackSpec(key="mlm", lengths=lambda r: (r + 2,), capacity=(BLOCK + 8,))
  one = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "one"), pack=pack, workers=1)
  two = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "two"), pack=pack, workers=2)
  assert fingerprint_dir(one.directory) == fingerprint_dir(two.directory)


def test_corrupt_file_in_a_worker_is_named_and_nothing_kept(tok, corpus, tmp_path):
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in os.listdir(corpus):
    os.symlink(os.path.join(corpus, name), bad / name)
  (bad / "d.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
  cache = tmp_path / "cache"
  cache.mkdir()
  with pytest.raises(DataError, match=r"d\.jsonl\.gz is not a readable gzip file"):
    prepare.prepare(str(bad), tok, BLOCK, str(cache / "out"), workers=2)
  assert os.listdir(cache) == []


@pytest.mark.beam
@pytest.mark.parametrize("fraction,separator", [(0.1, 1), (0.0, None)])
def test_beam_direct_runner_same_bytes(tok, corpus, tmp_path, monkeypatch, fraction, separator):
  from data_pipelines import beam_prepare
  monkeypatch.setattr(readers, "PIECE_BYTES", 4096)
  kwargs = {"shard_size": 1000, "validation_fraction": fraction, "separator_id": separator}
  one = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "one"), workers=1, **kwargs)
  beam = beam_prepare.prepare_beam(corpus, tok, BLOCK, str(tmp_path / "beam"), **kwargs)
  assert beam.to_json() | {"created": ""} == one.to_json() | {"created": ""}
  assert fingerprint_dir(one.directory) == fingerprint_dir(beam.directory)
  if fraction == 0.0:  # no validation documents: train's last blocks were moved
    assert one.splits["validation"].borrowed_from_train > 0


def test_tokenizers_pickle_as_their_files(tok, tmp_path):
  """Worker processes get the tokenizer by pickle: it is loaded again from its files."""
  import pickle

  from data_pipelines.tokenizer import HFTokenizer
  from tests.data_pipelines.test_hf_tokenizer import _metaspace_dir
  texts = ["한국어 문서 하나", "an English document"]
  for tokenizer in (tok, HFTokenizer(_metaspace_dir(tmp_path / "hf"))):
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy.sha256 == tokenizer.sha256
    assert [list(x) for x in copy.encode_batch(texts)] == [
        list(x) for x in tokenizer.encode_batch(texts)]


@pytest.mark.beam
def test_beam_writes_a_gs_cache_manifest_last(tok, corpus, tmp_path):
  import fsspec

  from data_pipelines import beam_prepare
  from tests import gcs_emulator
  local = prepare.prepare(corpus, tok, BLOCK, str(tmp_path / "one"), shard_size=4000)
  with gcs_emulator.running("bucket") as url, gcs_emulator.in_this_process(url):
    remote = "gs://bucket/prepared/key"
    manifest = beam_prepare.prepare_beam(corpus, tok, BLOCK, remote, shard_size=4000)
    assert manifest.directory == remote
    fs = fsspec.filesystem("gcs", token="anon", skip_instance_cache=True)
    names = sorted(os.path.basename(p) for p in fs.find("bucket/prepared/key"))
    assert names == sorted(os.listdir(local.directory))  # no plan or temporary file left
    fs.get("bucket/prepared/key", str(tmp_path / "down"), recursive=True)
  assert fingerprint_dir(str(tmp_path / "down")) == fingerprint_dir(local.directory)
