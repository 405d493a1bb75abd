"""`pretrain data prepare` on the corpus formats of public datasets, on several workers and on
Beam: bad input is one `error:` line (exit 2) and leaves nothing in the cache."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os

import pytest

from tests.data_pipelines.test_prepare_parallel import fingerprint_dir
from tests.data_pipelines.test_sources import tfds_dir  # noqa: F401  (a fixture)
from tests.pretrain.conftest import run_cli
from tests.pretrain.test_cli_errors import EXIT_BAD_INPUT, assert_one_error

_HAS_BEAM = importlib.util.find_spec("apache_beam") is not None


def _prepare(capsys, corpus: str, cache: str, *extra: str) -> tuple[int, str, str]:
  return run_cli(capsys, ["data", "prepare", "--config", "bert_tiny", f"data.corpus={corpus}",
                          f"data.cache_dir={cache}", *extra])


def _parquet(path, texts, column="text"):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({column: texts, "id": list(range(len(texts)))}), str(path),
                 row_group_size=10)
  return str(path)


def _refused(capsys, tmp_path, corpus: str, *needles: str, extra=()) -> None:
  cache = tmp_path / "cache"
  code, _, err = _prepare(capsys, corpus, str(cache), *extra)
  assert code == EXIT_BAD_INPUT, err
  assert_one_error(err, *needles)
  assert not cache.exists() or os.listdir(cache) == []


def test_parquet_without_text_field(capsys, tmp_path, corpus):
  path = _parquet(tmp_path / "c.parquet", ["한국어 문서 하나", "two"], column="content")
  _refused(capsys, tmp_path, path, "c.parquet", "no column 'text'", "['content', 'id']")


def test_corrupt_parquet_and_gzip_named(capsys, tmp_path, corpus):
  bad = tmp_path / "bad.parquet"
  bad.write_bytes(b"PAR1 not a parquet file")
  _refused(capsys, tmp_path, str(bad), "bad.parquet", "not a readable parquet file")
  folder = tmp_path / "mixed"
  folder.mkdir()
  with open(corpus, "rb") as f:
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(f.read()))
  (folder / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "fine"}\n' * 50)[:-30])
  _refused(capsys, tmp_path, str(folder), "b.jsonl.gz", "not a readable gzip file",
           extra=["data.prepare_workers=2"])


def test_tfds_dataset_or_split_missing(capsys, tmp_path, monkeypatch, tfds_dir):  # noqa: F811
  monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
  _refused(capsys, tmp_path, "tfds:no_such_dataset_xyz", "cannot find dataset "
           "'no_such_dataset_xyz'")
  _refused(capsys, tmp_path, "tfds:tiny_corpus_for_tests:bogus", "split 'bogus'",
           "['train', 'validation']")


@pytest.mark.skipif(_HAS_BEAM, reason="apache-beam is installed")
def test_beam_not_installed(capsys, tmp_path, corpus):
  _refused(capsys, tmp_path, corpus, "--runner beam needs Apache Beam", "pip install",
           extra=["--runner", "beam"])


def test_korean_parquet_two_workers_like_one(capsys, tmp_path, corpus):
  with open(corpus, encoding="utf-8") as f:
    docs = [json.loads(line)["text"] for line in f]
  path = _parquet(tmp_path / "ko.parquet", docs)
  dirs = []
  for workers in (1, 2):
    code, out, err = _prepare(capsys, path, str(tmp_path / f"cache{workers}"),
                              f"data.prepare_workers={workers}")
    assert code == 0, err
    dirs.append(json.loads(out)["directory"])
  assert fingerprint_dir(dirs[0]) == fingerprint_dir(dirs[1])


@pytest.mark.beam
def test_beam_runner_like_local_and_errors(capsys, tmp_path, corpus):
  code, out, err = _prepare(capsys, corpus, str(tmp_path / "local"))
  assert code == 0, err
  local = json.loads(out)["directory"]
  code, out, err = _prepare(capsys, corpus, str(tmp_path / "beam"), "--runner", "beam",
                            "--beam-options=--direct_num_workers=1")
  assert code == 0, err
  assert os.path.basename(json.loads(out)["directory"]) == os.path.basename(local)
  assert fingerprint_dir(json.loads(out)["directory"]) == fingerprint_dir(local)
  folder = tmp_path / "bad"
  folder.mkdir()
  (folder / "b.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 broken")
  _refused(capsys, tmp_path, str(folder), "b.jsonl.gz", "not a readable gzip file",
           extra=["--runner", "beam"])
  _refused(capsys, tmp_path, corpus, "--runner beam", "data.pack_documents=true",
           extra=["data.pack_documents=true", "--runner", "beam"])
