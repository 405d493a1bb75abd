"""Tests for data_pipelines.sources: every spec form and every bad input."""

import json
import os
import subprocess
import sys

import pytest

from data_pipelines import sources
from data_pipelines.errors import DataError


def _write(path, text: str | bytes):
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(text, bytes):
    path.write_bytes(text)
  else:
    path.write_text(text, encoding="utf-8")
  return str(path)


def _jsonl(records) -> str:
  return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def test_txt_documents_split_on_blank_lines(tmp_path):
  path = _write(tmp_path / "a.txt", "first doc\nline two\n\n\n  second doc  \n\n \n\nthird\n")
  assert list(sources.read_documents(path)) == ["first doc\nline two", "second doc", "third"]


def test_jsonl_field_and_empty_documents_dropped(tmp_path):
  path = _write(tmp_path / "a.jsonl",
                _jsonl([{"body": " x "}, {"body": ""}, {"body": "한국어 문서"}]) + "\n")
  assert list(sources.read_documents(path, text_field="body")) == ["x", "한국어 문서"]


def test_directory_recursive_sorted(tmp_path):
  _write(tmp_path / "d" / "b.txt", "from b")
  _write(tmp_path / "d" / "a" / "z.jsonl", _jsonl([{"text": "from a/z"}]))
  _write(tmp_path / "d" / "ignored.csv", "not read")
  assert list(sources.read_documents(str(tmp_path / "d"))) == ["from a/z", "from b"]
  assert len(sources.resolve_corpus(str(tmp_path / "d"))) == 2


def test_glob(tmp_path):
  _write(tmp_path / "g" / "2.txt", "two")
  _write(tmp_path / "g" / "1.txt", "one")
  _write(tmp_path / "g" / "x.jsonl", _jsonl([{"text": "x"}]))
  assert list(sources.read_documents(str(tmp_path / "g" / "*.txt"))) == ["one", "two"]


def test_bundled_names():
  en = sources.resolve_corpus("bundled")
  ko = sources.resolve_corpus("bundled_ko")
  assert sources.resolve_corpus("bundled_all") == en + ko
  first_ko = next(sources.read_documents("bundled_ko"))
  assert any("\uac00" <= ch <= "\ud7a3" for ch in first_ko)
  assert next(sources.read_documents("bundled")).isascii()


def test_fingerprint_stable_and_sensitive(tmp_path):
  path = _write(tmp_path / "a.txt", "hello")
  first = sources.fingerprint(path)
  assert sources.fingerprint(path) == first
  os.utime(path, ns=(1, 1))
  assert sources.fingerprint(path) != first
  assert sources.fingerprint("bundled") == sources.fingerprint("bundled")
  assert sources.fingerprint("bundled") != sources.fingerprint("bundled_ko")


def test_missing_path_named(tmp_path):
  with pytest.raises(DataError, match=r"corpus .*nope\.txt does not exist"):
    list(sources.read_documents(str(tmp_path / "nope.txt")))


def test_empty_directory_and_glob(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match=r"contains no \.txt, \.jsonl .*\.parquet or \.arrow files"):
    sources.resolve_corpus(str(tmp_path / "empty"))
  with pytest.raises(DataError, match="matches no files"):
    sources.resolve_corpus(str(tmp_path / "*.jsonl"))


def test_unsupported_extension(tmp_path):
  with pytest.raises(DataError, match=r"expected \.txt, \.jsonl .*, \.parquet or \.arrow"):
    sources.resolve_corpus(_write(tmp_path / "a.csv", "x"))


def test_empty_corpus(tmp_path):
  path = _write(tmp_path / "blank.txt", "\n  \n\n")
  with pytest.raises(DataError, match=r"blank\.txt contains no text"):
    list(sources.read_documents(path))


def test_invalid_utf8_names_line_and_offset(tmp_path):
  path = _write(tmp_path / "bad.txt", b"ok line\nsecond \xff line\n")
  with pytest.raises(DataError, match=r"bad\.txt:2: invalid UTF-8 at byte offset 15"):
    list(sources.read_documents(path))


def test_invalid_json_line(tmp_path):
  path = _write(tmp_path / "bad.jsonl", '{"text": "fine"}\n{"text": oops}\n')
  with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
    list(sources.read_documents(path))


def test_missing_field_lists_keys(tmp_path):
  path = _write(tmp_path / "f.jsonl", _jsonl([{"content": "a", "id": 1}]))
  with pytest.raises(DataError, match=r"f\.jsonl:1: no field 'text'.*\['content', 'id'\]"):
    list(sources.read_documents(path))


def test_non_object_and_non_string(tmp_path):
  with pytest.raises(DataError, match="expected a JSON object"):
    list(sources.read_documents(_write(tmp_path / "l.jsonl", "[1, 2]\n")))
  with pytest.raises(DataError, match="field 'text' is int"):
    list(sources.read_documents(_write(tmp_path / "i.jsonl", '{"text": 3}\n')))


_MAKE_TFDS = """
import sys
import tensorflow_datasets as tfds


class TinyCorpusForTests(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(4), "validation": self._generate_examples(2)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"text": f"  document {i} \ubb38\uc11c  "}


TinyCorpusForTests(data_dir=sys.argv[1], file_format="array_record").download_and_prepare()
"""


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A two-split text dataset prepared locally in array_record format (no TensorFlow).

  Built in a child process as a `__main__` builder (tfds cannot locate the code of a builder
  defined inside a test module); reading it here also shows no registration is needed.
  """
  pytest.importorskip("tensorflow_datasets")
  data_dir = tmp_path_factory.mktemp("tfds")
  script = data_dir / "make_tfds.py"
  script.write_text(_MAKE_TFDS)
  subprocess.run([sys.executable, str(script), str(data_dir)], check=True,
                 capture_output=True, cwd=str(data_dir))
  return str(data_dir)


def test_tfds_reads_prepared_split(tfds_dir):
  train = sorted(sources.read_documents("tfds:tiny_corpus_for_tests", tfds_data_dir=tfds_dir))
  assert train == [f"document {i} 문서" for i in range(4)]
  val = list(sources.read_documents("tfds:tiny_corpus_for_tests:validation",
                                    tfds_data_dir=tfds_dir))
  assert len(val) == 2
  assert "tensorflow" not in sys.modules


def _files_under(root: str) -> set[str]:
  return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


def test_tfds_not_prepared_never_downloads(tfds_dir):
  before = _files_under(tfds_dir)
  with pytest.raises(DataError, match="'mnist' is not prepared.*never downloads"):
    list(sources.read_documents("tfds:mnist", tfds_data_dir=tfds_dir))
  assert _files_under(tfds_dir) == before


def test_tfds_unknown_name_and_split(tfds_dir):
  with pytest.raises(DataError, match="cannot find dataset 'no_such_dataset_xyz'"):
    sources.fingerprint("tfds:no_such_dataset_xyz", tfds_data_dir=tfds_dir)
  with pytest.raises(DataError, match="cannot open split 'bogus'"):
    list(sources.read_documents("tfds:tiny_corpus_for_tests:bogus", tfds_data_dir=tfds_dir))


def test_tfds_feature_and_split_named(tfds_dir):
  with pytest.raises(DataError, match=r"no feature 'body'; the dataset has features \['text'\]"):
    sources.units("tfds:tiny_corpus_for_tests", "body", tfds_data_dir=tfds_dir)
  with pytest.raises(DataError, match=r"split 'bogus'.*splits \['train', 'validation'\]"):
    sources.units("tfds:tiny_corpus_for_tests:bogus", tfds_data_dir=tfds_dir)
