"""Tests for the corpus formats of public datasets: parquet, Arrow folders (datasets'
save_to_disk), gzip / zstd JSON lines, TFDS features; read in pieces, also on gs://."""

import gzip
import itertools
import json
import os

import pytest

from data_pipelines import readers, sources
from data_pipelines.errors import DataError


@pytest.fixture(scope="module")
def docs() -> list[str]:
  """Korean and English documents (the bundled corpora), some with surrounding blanks."""
  ko = list(itertools.islice(sources.read_documents("bundled_ko"), 40))
  en = list(itertools.islice(sources.read_documents("bundled"), 40))
  return [f"  {d}\n" if i % 7 == 0 else d for i, d in enumerate(x for p in zip(ko, en) for x in p)]


def _expected(texts):
  return [t.strip() for t in texts if t.strip()]


def _jsonl_bytes(texts) -> bytes:
  return "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n"
                 for i, t in enumerate(texts)).encode()


def _parquet(path, texts, row_group_size=7):
  import pyarrow as pa
  import pyarrow.parquet as pq
  table = pa.table({"id": list(range(len(texts))), "text": texts})
  pq.write_table(table, str(path), row_group_size=row_group_size)
  return str(path)


def test_parquet_by_row_group_korean_and_english(docs, tmp_path):
  path = _parquet(tmp_path / "c.parquet", docs)
  units = sources.units(path)
  assert len(units) == -(-len(docs) // 7) > 2  # one unit per row group
  assert list(sources.read_documents(path)) == _expected(docs)
  assert any("\uac00" <= ch <= "\ud7a3" for ch in next(sources.read_documents(path)))


def test_parquet_without_text_column_names_columns(docs, tmp_path):
  path = _parquet(tmp_path / "c.parquet", docs)
  with pytest.raises(DataError, match=r"c\.parquet has no column 'body'; its columns are "
                     r"\['id', 'text'\]"):
    list(sources.read_documents(path, text_field="body"))
  with pytest.raises(DataError, match="column 'id' has type int64, expected strings"):
    list(sources.read_documents(path, text_field="id"))


def test_corrupt_parquet_named(tmp_path):
  path = tmp_path / "bad.parquet"
  path.write_bytes(b"PAR1 this is not parquet at all")
  with pytest.raises(DataError, match=r"corpus file .*bad\.parquet is not a readable parquet"):
    list(sources.read_documents(str(path)))


def test_arrow_folder_from_datasets(docs, tmp_path):
  datasets = pytest.importorskip("datasets")
  folder = tmp_path / "saved"
  datasets.Dataset.from_dict({"text": docs, "n": list(range(len(docs)))}).save_to_disk(
      str(folder), num_shards=2)
  assert len(sources.resolve_corpus(str(folder))) == 2
  assert list(sources.read_documents(str(folder))) == _expected(docs)
  with pytest.raises(DataError, match=r"no column 'body'; its columns are \['text', 'n'\]"):
    sources.units(str(folder), text_field="body")
  datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(
      str(tmp_path / "dict"))
  with pytest.raises(DataError, match=r"DatasetDict folder with splits \['train'\]; name one"):
    sources.resolve_corpus(str(tmp_path / "dict"))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".txt.gz"])
def test_compressed_lines(docs, tmp_path, suffix, monkeypatch):
  raw = (_jsonl_bytes(docs) if ".jsonl" in suffix
         else "\n\n".join(d.strip() for d in docs).encode())
  if suffix.endswith(".zst"):
    zstandard = pytest.importorskip("zstandard")
    data = zstandard.ZstdCompressor().compress(raw)
  else:
    data = gzip.compress(raw)
  path = tmp_path / f"c{suffix}"
  path.write_bytes(data)
  monkeypatch.setattr(readers, "PIECE_BYTES", 1000)  # many pieces, cut between documents
  assert len(list(readers.pieces(sources.units(str(path))[0], "text"))) > 5
  assert list(sources.read_documents(str(path))) == _expected(docs)


def test_errors_keep_line_numbers_across_pieces(tmp_path, monkeypatch):
  lines = [json.dumps({"text": f"doc {i}"}) for i in range(300)]
  lines[250] = '{"text": oops}'
  path = tmp_path / "c.jsonl.gz"
  path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
  monkeypatch.setattr(readers, "PIECE_BYTES", 500)
  with pytest.raises(DataError, match=r"c\.jsonl\.gz:251: invalid JSON"):
    list(sources.read_documents(str(path)))


def test_corrupt_gzip_named(docs, tmp_path):
  path = tmp_path / "bad.jsonl.gz"
  path.write_bytes(gzip.compress(_jsonl_bytes(docs))[:-200])  # truncated
  with pytest.raises(DataError, match=r"bad\.jsonl\.gz is not a readable gzip file"):
    list(sources.read_documents(str(path)))
  path.write_bytes(b"not gzip at all\n")
  with pytest.raises(DataError, match=r"bad\.jsonl\.gz is not a readable gzip file"):
    list(sources.read_documents(str(path)))


def test_fingerprint_changes_with_parquet_file(docs, tmp_path):
  path = _parquet(tmp_path / "c.parquet", docs)
  first = sources.fingerprint(path)
  _parquet(tmp_path / "c.parquet", docs[:-1])
  os.utime(path, ns=(1, 1))
  assert sources.fingerprint(path) != first


def test_parquet_on_gs(docs, tmp_path):
  pytest.importorskip("gcp_storage_emulator")
  import fsspec

  from tests import gcs_emulator
  path = _parquet(tmp_path / "c.parquet", docs)
  with gcs_emulator.running("bucket") as url, gcs_emulator.in_this_process(url):
    fs = fsspec.filesystem("gcs", token="anon", skip_instance_cache=True)
    fs.put_file(path, "gs://bucket/corpus/part-0.parquet")
    assert list(sources.read_documents("gs://bucket/corpus")) == _expected(docs)
    first = sources.fingerprint("gs://bucket/corpus")
    fs.put_file(path, "gs://bucket/corpus/part-0.parquet")  # rewritten: new generation
    assert sources.fingerprint("gs://bucket/corpus") != first
