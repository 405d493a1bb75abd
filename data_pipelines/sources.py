"""Where documents come from: text files, JSON lines, directories, globs, bundled corpora, TFDS.

A corpus spec is a string:

  path/to/file.txt      documents separated by one or more blank lines
  path/to/file.jsonl    one JSON object per line; the document is its `text_field`
  *.txt.gz, *.jsonl.zst the same, compressed with gzip or zstd
  path/to/file.parquet  the string column `text_field` (HF datasets' parquet), by row group
  path/to/file.arrow    an Arrow IPC file or stream with the string column `text_field`
  path/to/dir           every file of the types above below it, sorted, recursively; a
                        folder written by `datasets.save_to_disk` (state.json) reads its
                        Arrow files in the order it lists them
  'data/*.jsonl'        a glob (recursive `**` allowed), sorted
  bundled               the bundled English corpus (Python documentation prose)
  bundled_ko            the bundled Korean corpus (LibreOffice help prose)
  bundled_all           both
  tfds:NAME[/CONFIG][:SPLIT]   a locally prepared TFDS dataset in array_record format
                               (split defaults to train; data dir from $TFDS_DATA_DIR)

Every document is stripped; empty ones are dropped. Bytes are decoded as strict UTF-8 (a
byte order mark at the start of a file is dropped). Paths may be on gs://. How a corpus is
cut into pieces that processes read and tokenize in parallel is `readers`.
"""

from __future__ import annotations

import glob as glob_lib
import hashlib
import json
import os
from collections.abc import Iterator

from data_pipelines import readers, storage
from data_pipelines.errors import DataError
from data_pipelines.readers import SUFFIXES

CORPORA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora")
BUNDLED = {
    "bundled": ("python_docs_en.jsonl",),
    "bundled_ko": ("libreoffice_help_ko.jsonl",),
    "bundled_all": ("python_docs_en.jsonl", "libreoffice_help_ko.jsonl"),
}
TEXT_SUFFIXES = SUFFIXES  # every file type a directory or glob picks up
_TFDS_PREFIX = readers.TFDS_PREFIX
_KINDS = ".txt, .jsonl (plain, .gz or .zst), .parquet or .arrow"


def resolve_corpus(spec: str) -> list[str]:
  """Returns the concrete sources of a spec: file paths in read order, or the tfds spec itself.

  Raises:
    DataError: the path does not exist, or a directory or glob matches no file it reads.
  """
  if not spec or not spec.strip():
    raise DataError("corpus spec is empty; expected a path, a glob, 'bundled' or 'tfds:NAME'")
  if spec.startswith(_TFDS_PREFIX):
    readers.parse_tfds(spec)
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
    saved = _saved_dataset_files(spec)
    if saved is not None:
      return saved
    found = sorted(os.path.join(dirpath, f) for dirpath, _, filenames in os.walk(spec)
                   for f in filenames if f.endswith(TEXT_SUFFIXES))
    if not found:
      raise DataError(f"corpus directory {spec} contains no {_KINDS} files")
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
    saved = _saved_dataset_files(spec)
    if saved is not None:
      return saved
    found = [p for p in storage.remote_files(spec) if p.endswith(TEXT_SUFFIXES)]
    if not found:
      raise DataError(f"corpus directory {spec} contains no {_KINDS} files")
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
    raise DataError(f"corpus file {path} has an unsupported type; expected {_KINDS}")


def _saved_dataset_files(directory: str) -> list[str] | None:
  """The Arrow files of a folder written by `datasets.save_to_disk`, in its order (None: not
  such a folder).

  Raises:
    DataError: a DatasetDict folder (one subfolder per split), or an unreadable state.json.
  """
  dict_json = storage.join(directory, "dataset_dict.json")
  if storage.exists(dict_json):
    try:
      splits = json.loads(storage.read_text(dict_json))["splits"]
    except (ValueError, KeyError, TypeError):
      splits = "?"
    raise DataError(f"corpus {directory} is a DatasetDict folder with splits {splits}; name "
                    f"one split's folder, e.g. {storage.join(directory, 'train')}")
  state = storage.join(directory, "state.json")
  if not storage.exists(state):
    return None
  try:
    names = [entry["filename"] for entry in json.loads(storage.read_text(state))["_data_files"]]
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f"{state} is not a datasets state.json (no _data_files list: {e!r})"
                    ) from None
  if not names:
    raise DataError(f"corpus {directory}: {state} lists no Arrow files")
  return [storage.join(directory, name) for name in names]


def units(spec: str, text_field: str = "text",
          tfds_data_dir: str | None = None) -> list[readers.Unit]:
  """The corpus cut into units that can be read independently (see `readers`), in order.

  Raises:
    DataError: a bad spec, a parquet / Arrow file without the text column or unreadable, a
      TFDS dataset or split that does not exist.
  """
  data_dir = readers.tfds_data_dir(tfds_data_dir)
  return [unit for source in resolve_corpus(spec)
          for unit in readers.units(source, text_field, data_dir)]


def read_documents(spec: str, text_field: str = "text",
                   tfds_data_dir: str | None = None) -> Iterator[str]:
  """Yields the stripped, non-empty documents of a corpus spec, in a deterministic order.

  Raises:
    DataError: bad spec, non-UTF-8 bytes, invalid JSON, a missing field, a TFDS dataset that
      is not prepared locally, or a corpus without any text (raised once it is exhausted).
  """
  count = 0
  for unit in units(spec, text_field, tfds_data_dir):
    for piece in readers.pieces(unit, text_field):
      docs = readers.documents(piece, text_field)
      count += len(docs)
      yield from docs
  if not count:
    raise DataError(f"corpus {spec} contains no text")


def fingerprint(spec: str, tfds_data_dir: str | None = None) -> str:
  """A stable hex digest of a corpus's content identity, for cache keys.

  Bundled files are hashed by content (their mtime changes with every checkout); other files
  by path, size and mtime, which is cheap for large corpora; TFDS datasets by name, split,
  version and data dir.
  """
  digest = hashlib.sha256()
  for source in resolve_corpus(spec):
    if source.startswith(_TFDS_PREFIX):
      builder = readers.tfds_builder(source, tfds_data_dir)
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
