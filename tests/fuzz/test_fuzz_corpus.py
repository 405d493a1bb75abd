"""Property-based fuzzing of the corpus reader (`data_pipelines.sources`) and of data
preparation (`data_pipelines.prepare`, `pretrain data prepare`).

Property: a corpus file is either read into documents (each a non-empty, stripped `str` that
encodes as UTF-8) or refused with a `DataError` whose message is one line naming the file
(and `file:line` for a bad line). `pretrain data prepare` exits 0, or 2 with one `error:`
line, and a prepared cache that existed before a refused run is left byte for byte as it was.
The bundled tokenizer is used throughout; no tokenizer is trained here.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest
from hypothesis import currently_in_test_context, event, given
from hypothesis import strategies as st

from data_pipelines import prepare, sources
from data_pipelines.errors import DataError
from data_pipelines.tokenizer import load_tokenizer
from tests.fuzz._common import assert_cli_error, assert_one_line, fuzz, run_cli, snapshot

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_WORDS = st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "the", "river", "map",
                                   "안녕하세요", "naïve", "Straße", "\t", "  "]),
                  max_size=12).map(" ".join)


@st.composite
def text_lines(draw) -> bytes:
  """Bytes of one line of a .txt corpus: text in some encoding, damaged or not."""
  text = draw(st.one_of(_TEXT, _WORDS, st.sampled_from(["", " ", "\t", "\x00", "a\x00b"])))
  how = draw(st.integers(0, 9))
  if how == 0:
    return draw(st.binary(max_size=20))
  if how == 1:
    return text.encode("latin-1", "replace")
  if how == 2:
    return text.encode("utf-16")
  if how == 3:  # an invalid UTF-8 sequence in the middle of valid text
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"]))
    data = text.encode("utf-8")
    cut = draw(st.integers(0, len(data)))
    return data[:cut] + bad + data[cut:]
  return text.encode("utf-8")


@st.composite
def jsonl_lines(draw) -> bytes:
  """Bytes of one line of a .jsonl corpus: a record, a damaged record or not JSON at all."""
  field = draw(st.sampled_from(["text", "text", "body", ""]))
  value = draw(st.one_of(_TEXT, _WORDS, st.none(), st.booleans(), st.integers(),
                         st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
  record = {field: value}
  if draw(st.booleans()):
    record[draw(st.text(max_size=5))] = draw(_TEXT)
  line = json.dumps(record, ensure_ascii=draw(st.booleans()))
  how = draw(st.integers(0, 11))
  if how == 0:  # truncated JSON
    return line[:draw(st.integers(0, max(0, len(line) - 1)))].encode("utf-8")
  if how == 1:
    return draw(st.binary(max_size=20))
  if how == 2:  # not an object
    return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=5),
                                     st.integers(), st.none()))).encode()
  if how == 3:  # JSON escapes that are not text: lone surrogates, NUL
    esc = draw(st.sampled_from(["\\ud800", "\\udfff", "\\u0000", "\\ud83d\\ude00"]))
    return ('{"text": "a' + esc + 'b"}').encode()
  if how == 4:  # raw control characters / NUL inside a JSON string
    return b'{"text": "a\x00b\x01c"}'
  if how == 5:
    return line.encode("utf-16")
  if how == 6:
    return line.encode("latin-1", "replace") + b"\xe9"
  if how == 7:  # deep nesting and a huge integer: valid JSON Python will not build
    return draw(st.sampled_from([b'{"text": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                                 b'{"text": "a", "x": ' + b"9" * 5000 + b"}",
                                 b'{"text": 1e999}', b'{"text": NaN}']))
  return line.encode("utf-8")


def clean_lines(name: str) -> st.SearchStrategy[bytes]:
  """A well-formed line (a paragraph, or a record with a string text) of several words."""
  words = st.lists(_WORDS, min_size=1, max_size=4).map(" ".join)
  if name.endswith(".txt"):
    return words.map(str.encode)
  return words.map(lambda w: json.dumps({"text": w}, ensure_ascii=False).encode())


@st.composite
def corpus_files(draw, clean: bool = False) -> tuple[str, bytes]:
  """(file name, bytes) of a whole corpus file; `clean`: mostly well-formed lines, enough
  text to fill blocks, and now and then one damaged line."""
  name = draw(st.sampled_from(["corpus.txt", "corpus.jsonl"]))
  damaged = text_lines() if name.endswith(".txt") else jsonl_lines()
  if clean:
    lines = draw(st.lists(clean_lines(name), min_size=5, max_size=25))
    if draw(st.integers(0, 2)) == 0:
      lines.insert(draw(st.integers(0, len(lines))), draw(damaged))
  else:
    lines = draw(st.lists(st.one_of(clean_lines(name), damaged), max_size=6))
  eol = draw(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r"]))
  data = eol.join(lines) + draw(st.sampled_from([b"", eol]))
  prefix = draw(st.sampled_from([b""] * 5 + [b"\xef\xbb\xbf", b"\xff\xfe", b"\x00"]))
  return name, prefix + data


def _event(name: str) -> None:
  if currently_in_test_context():  # the parametrized cases call read_or_refuse too
    event(name)


def read_or_refuse(path: str, text_field: str = "text") -> list[str] | None:
  """Reads the corpus; checks the documents, or the error line, against the property."""
  try:
    docs = list(sources.read_documents(path, text_field))
  except DataError as e:
    message = str(e)
    assert_one_line(message)
    assert path in message, message
    _event("DataError")
    return None
  _event("documents")
  assert docs
  for doc in docs:
    assert isinstance(doc, str) and doc and doc == doc.strip()
    doc.encode("utf-8")  # valid Unicode: no lone surrogates
  return docs


# --------------------------------------------------------------------------- the reader


@fuzz(200)
@given(corpus=corpus_files())
def test_corpus_file_is_read_or_refused_with_one_line(corpus):
  name, data = corpus
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
      f.write(data)
    read_or_refuse(path)


@fuzz(100)
@given(data=st.binary(max_size=300), name=st.sampled_from(["corpus.txt", "corpus.jsonl"]))
def test_random_bytes_are_read_or_refused_with_one_line(data, name):
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
      f.write(data)
    read_or_refuse(path)


@fuzz(40)
@given(good=st.lists(_WORDS.filter(str.strip), min_size=1, max_size=3),
       bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]),
       crlf=st.booleans())
def test_invalid_utf8_is_named_by_file_and_line(good, bad, crlf):
  """A bad byte sequence after some good lines: the error names file:line of that line."""
  eol = b"\r\n" if crlf else b"\n"
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "corpus.txt")
    with open(path, "wb") as f:
      f.write(eol.join(line.encode() for line in good) + eol + b"ok " + bad + b" ok" + eol)
    with pytest.raises(DataError) as info:
      list(sources.read_documents(path))
    assert_one_line(str(info.value))
    assert f"{path}:{len(good) + 1}: invalid UTF-8" in str(info.value)


@pytest.mark.parametrize("data, expected", [
  (b"", None), (b"\n\n\r\n", None), (b"\xef\xbb\xbf", None),
  (b"\xef\xbb\xbfhello\r\n\r\nworld\r\n", ["hello", "world"]),
  (b"a\x00b\n", ["a\x00b"]),
], ids=["zero_length", "blank", "bom_only", "bom_crlf", "nul"])
def test_txt_edge_cases(tmp_path, data, expected):
  path = str(tmp_path / "corpus.txt")
  with open(path, "wb") as f:
    f.write(data)
  assert read_or_refuse(path) == expected


@pytest.mark.parametrize("data, expected", [
  (b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n', ["a", "b"]),
  (b'{"text": "a\\ud800"}\n', "lone surrogate"),
  (b'{"text": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "nested too deeply"),
  (b'{"text": "a", "x": ' + b"9" * 5000 + b"}\n", "unreadable JSON record"),
  (b'{"text": "a"', "invalid JSON"),
  (b'{"text": null}\n', "is NoneType"),
  (b'{"body": "a"}\n', "no field 'text'"),
], ids=["bom_crlf", "surrogate", "deep", "huge_int", "truncated", "null", "missing"])
def test_jsonl_edge_cases(tmp_path, data, expected):
  path = str(tmp_path / "corpus.jsonl")
  with open(path, "wb") as f:
    f.write(data)
  if isinstance(expected, list):
    assert read_or_refuse(path) == expected
  else:
    with pytest.raises(DataError, match=expected) as info:
      list(sources.read_documents(path))
    assert_one_line(str(info.value))
    assert f"{path}:1:" in str(info.value)


def test_huge_single_line_is_one_document(tmp_path):
  path = str(tmp_path / "corpus.txt")
  with open(path, "wb") as f:
    f.write(b"word " * 1_000_000)  # one 5 MB line
  docs = read_or_refuse(path)
  assert docs is not None and len(docs) == 1 and len(docs[0]) == 5_000_000 - 1


# --------------------------------------------------------------------------- preparation


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer("bundled")


@fuzz(40)
@given(corpus=st.one_of(corpus_files(), corpus_files(clean=True)),
       block_length=st.sampled_from([2, 3, 8]))
def test_prepare_builds_or_refuses_and_leaves_no_partial_output(tokenizer, corpus,
                                                                 block_length):
  name, data = corpus
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
      f.write(data)
    out_dir = os.path.join(tmp, "prepared")
    try:
      manifest = prepare.prepare(path, tokenizer, block_length, out_dir)
    except DataError as e:
      assert_one_line(str(e))
      assert path in str(e)
      assert sorted(os.listdir(tmp)) == [name]  # no tmp dir or half-written output left
      event("DataError")
    else:
      event("prepared")
      assert manifest.splits["train"].num_blocks >= 1
      assert prepare.load_manifest(out_dir).splits == manifest.splits


@pytest.fixture(scope="module")
def prepared_cache(tmp_path_factory):
  """A cache with one prepared corpus, made by `pretrain data prepare` (exit 0)."""
  root = tmp_path_factory.mktemp("fuzz_cache")
  corpus = str(root / "good.jsonl")
  with open(corpus, "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"text": f"document {i}: the river map of alpha and beta."}) + "\n" for i in range(60))
  cache = str(root / "cache")
  code, out, _ = run_cli(prepare_argv(corpus, cache))
  assert code == 0
  assert os.path.isfile(os.path.join(json.loads(out)["directory"], "manifest.json"))
  return corpus, cache


def prepare_argv(corpus: str, cache: str) -> list[str]:
  return ["data", "prepare", "--config", "bert_tiny", f"data.corpus={corpus}",
          f"data.cache_dir={cache}", "data.seq_len=16", "model.max_position_embeddings=16"]


@fuzz(8)
@given(corpus=corpus_files(clean=True))
def test_cli_prepare_exits_0_or_2_and_keeps_the_cache(prepared_cache, corpus):
  """A fuzzed corpus next to an existing cache: exit 0 (the corpus is prepared) or exit 2 with
  one `error:` line naming the file, and on error the cache is exactly as before."""
  _, cache = prepared_cache
  name, data = corpus
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
      f.write(data)
    before = snapshot(cache)
    code, out, err = run_cli(prepare_argv(path, cache))
    if code == 0:
      event("exit 0")
      assert os.path.isfile(os.path.join(json.loads(out)["directory"], "manifest.json"))
    else:
      event("exit 2")
      line = assert_cli_error(code, err)
      assert path in line
      assert out == ""
      assert snapshot(cache) == before


@pytest.mark.parametrize("data", [
  b"\xff\xfe\x00bad", b'{"text": "ok"}\n{"text": 3}\n', b'{"text": "a\\udc00"}\n', b"",
], ids=["utf16_bytes", "non_string_field", "surrogate", "zero_length"])
def test_cli_prepare_refuses_a_corpus_that_went_bad_without_touching_its_cache(prepared_cache,
                                                                               data):
  """The corpus that filled the cache is overwritten with bad bytes: exit 2, one line naming
  it, the cache unchanged."""
  good, cache = prepared_cache
  with open(good, "rb") as f:
    original = f.read()
  before = snapshot(cache)
  try:
    with open(good, "wb") as f:
      f.write(data)
    code, out, err = run_cli(prepare_argv(good, cache))
  finally:
    with open(good, "wb") as f:
      f.write(original)
  line = assert_cli_error(code, err)
  assert good in line and out == ""
  assert snapshot(cache) == before
