"""Where documents come from: text files, JSON lines, directories, globs, bundled corpora, TFDS.

A corpus spec is a string:

  path/to/file.txt      documents separated by one or more blank lines
  path/to/file.jsonl    one JSON object per line; the document is its `text_field`
  path/to/dir           every *.txt and *.jsonl below it, sorted, recursively
  'data/*.jsonl'        a glob (recursive `**` allowed), sorted
  bundled               the bundled English corpus (Python documentation prose)
  bundled_ko            the bundled Korean corpus (LibreOffice help prose)
  bundled_all           both
  tfds:NAME[/CONFIG][:SPLIT]   a locally prepared TFDS dataset in array_record format
                               (split defaults to train; data dir from $TFDS_DATA_DIR)

Every document is stripped; empty ones are dropped. Bytes are decoded as strict UTF-8 (a
byte order mark at the start of a file is dropped).
"""

from __future__ import annotations

import glob as glob_lib
import hashlib
import json
import os
from collections.abc import Iterator

from data_pipelines import storage
from data_pipelines.errors import DataError

CORPORA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora")
BUNDLED = {
    "bundled": ("python_docs_en.jsonl",),
    "bundled_ko": ("libreoffice_help_ko.jsonl",),
    "bundled_all": ("python_docs_en.jsonl", "libreoffice_help_ko.jsonl"),
}
TEXT_SUFFIXES = (".txt", ".jsonl")
_UTF8_BOM = b"\xef\xbb\xbf"
_TFDS_PREFIX = "tfds:"


def _tfds_data_dir(data_dir: str | None) -> str | None:
  return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def resolve_corpus(spec: str) -> list[str]:
  """Returns the concrete sources of a spec: file paths in read order, or the tfds spec itself.

  Raises:
    DataError: the path does not exist, or a directory or glob matches no .txt/.jsonl file.
  """
  if not spec or not spec.strip():
    raise DataError("corpus spec is empty; expected a path, a glob, 'bundled' or 'tfds:NAME'")
  if spec.startswith(_TFDS_PREFIX):
    _parse_tfds(spec)
    return [spec]
  if spec in BUNDLED:
    return [os.path.join(CORPORA_DIR, name) for name in BUNDLED[spec]]
  if storage.is_remote(spec):
    return _resolve_remote(spec)
  if any(ch in spec for ch in "*?["):
    matches = sorted(p for p in glob_lib.glob(spec, recursive=True) if os.path.isfile(p))
    if not matches:
      raise DataError(f"corpus glob {spec!r} matches no files")
    for path in matches:
      _check_suffix(path)
    return matches
  if os.path.isdir(spec):
    found = sorted(os.path.join(dirpath, f) for dirpath, _, filenames in os.walk(spec)
                   for f in filenames if f.endswith(TEXT_SUFFIXES))
    if not found:
      raise DataError(f"corpus directory {spec} contains no .txt or .jsonl files")
    return found
  if not os.path.exists(spec):
    raise DataError(f"corpus {spec} does not exist (expected a file, directory, glob, "
                    f"'bundled', 'bundled_ko', 'bundled_all' or 'tfds:NAME[/CONFIG][:SPLIT]')")
  _check_suffix(spec)
  return [spec]


def _resolve_remote(spec: str) -> list[str]:
  """gs:// file, directory (every .txt/.jsonl below it) or glob, read through gcsfs."""
  if any(ch in spec for ch in "*?["):
    found = storage.remote_glob(spec)
    if not found:
      raise DataError(f"corpus glob {spec!r} matches no files")
  elif storage.isdir(spec):
    found = [p for p in storage.remote_files(spec) if p.endswith(TEXT_SUFFIXES)]
    if not found:
      raise DataError(f"corpus directory {spec} contains no .txt or .jsonl files")
    return found
  elif storage.isfile(spec):
    found = [spec]
  else:
    raise DataError(f"corpus {spec} does not exist")
  for path in found:
    _check_suffix(path)
  return found


def _check_suffix(path: str) -> None:
  if not path.endswith(TEXT_SUFFIXES):
    raise DataError(f"corpus file {path} has an unsupported type; expected .txt or .jsonl")


def read_documents(spec: str, text_field: str = "text",
                   tfds_data_dir: str | None = None) -> Iterator[str]:
  """Yields the stripped, non-empty documents of a corpus spec, in a deterministic order.

  Raises:
    DataError: bad spec, non-UTF-8 bytes, invalid JSON, a missing field, a TFDS dataset that
      is not prepared locally, or a corpus without any text (raised once it is exhausted).
  """
  count = 0
  for source in resolve_corpus(spec):
    if source.startswith(_TFDS_PREFIX):
      docs = _read_tfds(source, text_field, _tfds_data_dir(tfds_data_dir))
    elif source.endswith(".jsonl"):
      docs = _read_jsonl(source, text_field)
    else:
      docs = _read_txt(source)
    for doc in docs:
      doc = doc.strip()
      if doc:
        count += 1
        yield doc
  if not count:
    raise DataError(f"corpus {spec} contains no text")


def _decoded_lines(path: str) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, line) decoding strictly, so bad bytes are never hidden.

  A UTF-8 byte order mark at the very start of the file is dropped (editors on Windows write
  one); it is not text, and json.loads refuses a line that starts with it.
  """
  offset = 0
  with storage.open_file(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      skip = len(_UTF8_BOM) if number == 1 and raw.startswith(_UTF8_BOM) else 0
      try:
        yield number, raw[skip:].decode("utf-8")
      except UnicodeDecodeError as e:
        start = skip + e.start
        raise DataError(f"{path}:{number}: invalid UTF-8 at byte offset {offset + start} "
                        f"({raw[start:start + 4]!r}); expected UTF-8 text") from None
      offset += len(raw)


def _read_txt(path: str) -> Iterator[str]:
  paragraph: list[str] = []
  for _, line in _decoded_lines(path):
    if line.strip():
      paragraph.append(line.rstrip("\r\n"))
    elif paragraph:
      yield "\n".join(paragraph)
      paragraph = []
  if paragraph:
    yield "\n".join(paragraph)


def _read_jsonl(path: str, text_field: str) -> Iterator[str]:
  for number, line in _decoded_lines(path):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:
      # An integer of more than sys.get_int_max_str_digits() digits, or nesting deeper than
      # the interpreter's recursion limit: valid JSON that Python will not build.
      reason = ("nested too deeply" if isinstance(e, RecursionError)
                else str(e).splitlines()[0] if str(e) else type(e).__name__)
      raise DataError(f"{path}:{number}: unreadable JSON record ({reason})") from None
    if not isinstance(record, dict):
      raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
      raise DataError(f"{path}:{number}: no field {text_field!r}; the record has keys "
                      f"{sorted(record)}")
    text = record[text_field]
    if not isinstance(text, str):
      raise DataError(f"{path}:{number}: field {text_field!r} is {type(text).__name__}, "
                      f"expected a string")
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate escape such as "\ud800"
      raise DataError(f"{path}:{number}: field {text_field!r} holds {text[e.start:e.end]!r} "
                      f"at character {e.start}, a lone surrogate that is not text (invalid "
                      f"\\u escape); expected valid Unicode") from None
    yield text


def _parse_tfds(spec: str) -> tuple[str, str]:
  """'tfds:NAME[/CONFIG][:SPLIT]' -> ('NAME[/CONFIG]', SPLIT)."""
  body = spec[len(_TFDS_PREFIX):]
  name, _, split = body.partition(":")
  if not name:
    raise DataError(f"corpus {spec!r} names no dataset; expected tfds:NAME[/CONFIG][:SPLIT]")
  return name, split or "train"


def _tfds_builder(spec: str, data_dir: str | None):
  """Returns a builder for a prepared dataset, never downloading or preparing one."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name, _ = _parse_tfds(spec)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001 -- tfds raises many types for unknown names/configs
    raise DataError(f"corpus {spec}: TFDS cannot find dataset {name!r} "
                    f"({str(e).splitlines()[0]})") from None
  if not builder.is_prepared():
    raise DataError(f"corpus {spec}: TFDS dataset {name!r} is not prepared in "
                    f"{builder.data_dir}; prepare it there in array_record format first "
                    f"(this pipeline never downloads)")
  return builder


def _read_tfds(spec: str, text_field: str, data_dir: str | None) -> Iterator[str]:
  _, split = _parse_tfds(spec)
  builder = _tfds_builder(spec, data_dir)
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # noqa: BLE001 -- unknown split, tfrecord-only dataset, ...
    raise DataError(f"corpus {spec}: cannot open split {split!r} as a random-access "
                    f"source ({str(e).splitlines()[0]})") from None
  for index in range(len(source)):
    record = source[index]
    if text_field not in record:
      raise DataError(f"corpus {spec}: record {index} has no field {text_field!r}; keys "
                      f"{sorted(record)}")
    text = record[text_field]
    if isinstance(text, bytes):
      try:
        text = text.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"corpus {spec}: record {index} field {text_field!r} has invalid "
                        f"UTF-8 at byte offset {e.start}") from None
    yield text


def fingerprint(spec: str, tfds_data_dir: str | None = None) -> str:
  """A stable hex digest of a corpus's content identity, for cache keys.

  Bundled files are hashed by content (their mtime changes with every checkout); other files
  by path, size and mtime, which is cheap for large corpora; TFDS datasets by name, split,
  version and data dir.
  """
  digest = hashlib.sha256()
  for source in resolve_corpus(spec):
    if source.startswith(_TFDS_PREFIX):
      builder = _tfds_builder(source, _tfds_data_dir(tfds_data_dir))
      digest.update(f"{source}|{builder.version}|{builder.data_dir}".encode())
    elif storage.is_remote(source):
      digest.update(storage.stat_identity(source).encode())
    elif os.path.dirname(os.path.abspath(source)) == CORPORA_DIR:
      digest.update(os.path.basename(source).encode())
      digest.update(_file_sha256(source).encode())
    else:
      stat = os.stat(source)
      digest.update(f"{os.path.abspath(source)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
  return digest.hexdigest()


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
