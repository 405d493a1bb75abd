"""A corpus read in independent pieces, so that processes (or Beam workers) can read and
tokenize them in any order while the documents keep one order.

A corpus (`sources.resolve_corpus`) is cut into *units*, found from metadata alone: a line
file (.txt / .jsonl, plain, .gz or .zst), one row group of a parquet file, one Arrow file (as
`datasets.save_to_disk` writes them), one range of records of a TFDS split. `pieces(unit)`
reads a unit in order and yields *pieces*: a line file cut at document boundaries into pieces
of about `PIECE_BYTES` of text (one big file, compressed or not, still feeds every worker), an
Arrow file cut into slices of its text column; a parquet row group or a TFDS range is one
piece, read where it is turned into documents. `documents(piece, text_field)` returns a
piece's stripped, non-empty documents. The documents of all pieces of all units, in order,
are `sources.read_documents`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

from data_pipelines import storage
from data_pipelines.errors import DataError

PIECE_BYTES = 1 << 20  # text per piece: ~0.1-0.5 s of tokenizing, small to ship
ARROW_PIECE_ROWS = 2048
TFDS_UNIT_RECORDS = 4096
LINE_SUFFIXES = tuple(base + comp for base in (".txt", ".jsonl") for comp in ("", ".gz", ".zst"))
COLUMNAR_SUFFIXES = (".parquet", ".arrow")
SUFFIXES = LINE_SUFFIXES + COLUMNAR_SUFFIXES
TFDS_PREFIX = "tfds:"
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True)
class Unit:
  """A part of a corpus that can be read on its own.

  kind: lines | parquet | arrow | tfds. path: the file (tfds: the spec). start, stop: parquet:
  the row group (start); tfds: the record range.
  """
  kind: str
  path: str
  start: int = 0
  stop: int = 0
  data_dir: str | None = None  # tfds


@dataclasses.dataclass(frozen=True)
class Piece:
  """What one worker turns into documents: lines: whole lines of decompressed bytes from byte
  `offset` (1-based line number `line`); arrow: a slice of the text column; else nothing."""
  unit: Unit
  data: Any = None
  line: int = 1
  offset: int = 0


def unit_kind(path: str) -> str:
  if path.startswith(TFDS_PREFIX):
    return "tfds"
  if path.endswith(".parquet"):
    return "parquet"
  if path.endswith(".arrow"):
    return "arrow"
  return "lines"


def units(source: str, text_field: str, tfds_data_dir: str | None = None) -> list[Unit]:
  """The units of one resolved source (a file path or a tfds spec), checking that the text
  field exists (a parquet or Arrow column, a TFDS feature) before anything is tokenized."""
  kind = unit_kind(source)
  if kind == "parquet":
    parquet = _parquet_file(source)
    meta = parquet.metadata
    _check_column(source, parquet.schema_arrow, text_field)
    return [Unit("parquet", source, i) for i in range(meta.num_row_groups)
            if meta.row_group(i).num_rows]
  if kind == "arrow":
    with storage.open_file(source, "rb") as f:
      _check_column(source, _arrow_reader(source, f).schema, text_field)
    return [Unit("arrow", source)]
  if kind == "tfds":
    data = _tfds_source(source, tfds_data_dir)
    features = _tfds_builder(source, tfds_data_dir).info.features
    if text_field not in features:
      raise DataError(f"corpus {source}: no feature {text_field!r}; the dataset has features "
                      f"{sorted(features)} (set data.text_field)")
    n = len(data)
    return [Unit("tfds", source, i, min(n, i + TFDS_UNIT_RECORDS), tfds_data_dir)
            for i in range(0, n, TFDS_UNIT_RECORDS)]
  return [Unit("lines", source)]


def pieces(unit: Unit, text_field: str) -> Iterator[Piece]:
  if unit.kind == "lines":
    yield from _line_pieces(unit)
  elif unit.kind == "arrow":
    yield from _arrow_pieces(unit, text_field)
  else:
    yield Piece(unit)


def documents(piece: Piece, text_field: str) -> list[str]:
  """The stripped, non-empty documents of a piece, in order."""
  unit = piece.unit
  if unit.kind == "lines":
    lines = _decoded_lines(piece)
    texts = _read_jsonl(lines, unit.path, text_field) if ".jsonl" in unit.path else _read_txt(
        lines)
  elif unit.kind == "parquet":
    texts = _column_texts(_read_row_group(unit.path, unit.start, text_field))
  elif unit.kind == "arrow":
    texts = _column_texts(piece.data)
  else:
    texts = _read_tfds(unit, text_field)
  return [t for t in (text.strip() for text in texts) if t]


# Line files ----------------------------------------------------------------------------------

def _open_text_stream(path: str):
  raw = storage.open_file(path, "rb")
  if path.endswith(".gz"):
    return gzip.GzipFile(fileobj=raw, mode="rb")
  if path.endswith(".zst"):
    try:
      import zstandard  # pylint: disable=import-outside-toplevel
    except ImportError:
      raw.close()
      raise DataError(f"corpus file {path} is zstd-compressed, which needs the zstandard "
                      f"package: pip install zstandard (or this project's [prepare] extra)"
                      ) from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                       closefd=True)
  return raw


def _read_block(f, path: str) -> bytes:
  try:
    return f.read(PIECE_BYTES)
  except (OSError, EOFError, zlib.error) as e:
    what = "gzip" if path.endswith(".gz") else "zstd" if path.endswith(".zst") else "text"
    raise DataError(f"corpus file {path} is not a readable {what} file "
                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
  except Exception as e:  # zstandard.ZstdError, without importing zstandard first
    if type(e).__name__ != "ZstdError":
      raise
    raise DataError(f"corpus file {path} is not a readable zstd file ({e})") from None


def _cut(data: bytes, jsonl: bool) -> int:
  """Where `data` may be cut between documents (0: nowhere): after the last line of a JSON
  lines file, after the last blank line of a text file."""
  if jsonl:
    return data.rfind(b"\n") + 1
  cuts = [i + len(sep) for sep in (b"\n\n", b"\n\r\n") if (i := data.rfind(sep)) >= 0]
  return max(cuts, default=0)


def _line_pieces(unit: Unit) -> Iterator[Piece]:
  jsonl = ".jsonl" in unit.path
  line, offset, carry = 1, 0, b""
  with _open_text_stream(unit.path) as f:
    while True:
      block = _read_block(f, unit.path)
      data = carry + block
      if not block:
        if data:
          yield Piece(unit, data, line, offset)
        return
      cut = _cut(data, jsonl)
      if cut <= 0:  # one document longer than a block: read on
        carry = data
        continue
      yield Piece(unit, data[:cut], line, offset)
      line += data.count(b"\n", 0, cut)
      offset += cut
      carry = data[cut:]


def _decoded_lines(piece: Piece) -> Iterator[tuple[int, str]]:
  """(1-based line number, line), decoded strictly so bad bytes are never hidden. A UTF-8 byte
  order mark at the very start of a file is dropped (not text; json.loads refuses it)."""
  path, offset = piece.unit.path, piece.offset
  parts = piece.data.split(b"\n")  # lines end at \n only, as a binary file iterates
  last = parts.pop()
  for number, raw in enumerate([p + b"\n" for p in parts] + ([last] if last else []),
                               piece.line):
    skip = len(_UTF8_BOM) if offset == 0 and raw.startswith(_UTF8_BOM) else 0
    try:
      yield number, raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
      start = skip + e.start
      raise DataError(f"{path}:{number}: invalid UTF-8 at byte offset {offset + start} "
                      f"({raw[start:start + 4]!r}); expected UTF-8 text") from None
    offset += len(raw)


def _read_txt(lines: Iterator[tuple[int, str]]) -> Iterator[str]:
  paragraph: list[str] = []
  for _, line in lines:
    if line.strip():
      paragraph.append(line.rstrip("\r\n"))
    elif paragraph:
      yield "\n".join(paragraph)
      paragraph = []
  if paragraph:
    yield "\n".join(paragraph)


def _read_jsonl(lines: Iterator[tuple[int, str]], path: str, text_field: str) -> Iterator[str]:
  for number, line in lines:
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


# Parquet and Arrow ---------------------------------------------------------------------------

def _first_line(e: BaseException) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


def _parquet_file(path: str):
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  try:
    return pq.ParquetFile(storage.open_file(path, "rb") if storage.is_remote(path) else path)
  except (OSError, pa.ArrowException) as e:  # bad magic bytes, bad footer, truncated
    raise DataError(f"corpus file {path} is not a readable parquet file ({_first_line(e)})"
                    ) from None


def _read_row_group(path: str, index: int, text_field: str):
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  parquet = _parquet_file(path)
  try:
    return parquet.read_row_group(index, columns=[text_field]).column(0)
  except (OSError, pa.ArrowException) as e:  # a corrupt page, a bad compression stream
    raise DataError(f"corpus file {path}: row group {index} is not readable "
                    f"({_first_line(e)})") from None


def _check_column(path: str, schema, text_field: str) -> None:
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  if text_field not in schema.names:
    raise DataError(f"corpus file {path} has no column {text_field!r}; its columns are "
                    f"{schema.names} (set data.text_field)")
  kind = schema.field(text_field).type
  if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
          or pa.types.is_string_view(kind)):
    raise DataError(f"corpus file {path}: column {text_field!r} has type {kind}, expected "
                    f"strings")


def _column_texts(column) -> list[str]:
  """A string column's values; nulls are empty documents (dropped)."""
  return [text or "" for text in column.to_pylist()]


def _arrow_reader(path: str, f):
  """Arrow IPC: the stream format (`datasets`' files), else the file format."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  try:
    return pa.ipc.open_stream(f)
  except pa.ArrowInvalid:
    f.seek(0)
    try:
      return pa.ipc.open_file(f)
    except pa.ArrowInvalid as e:
      raise DataError(f"corpus file {path} is not a readable Arrow file ({_first_line(e)})"
                      ) from None


def _arrow_pieces(unit: Unit, text_field: str) -> Iterator[Piece]:
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  if storage.is_remote(unit.path):
    f = storage.open_file(unit.path, "rb")
  else:
    f = pa.memory_map(unit.path)  # zero-copy: slices are shipped, not parsed, here
  with f:
    reader = _arrow_reader(unit.path, f)
    batches = (reader if isinstance(reader, pa.ipc.RecordBatchStreamReader)
               else (reader.get_batch(i) for i in range(reader.num_record_batches)))
    try:
      for batch in batches:
        column = batch.column(batch.schema.get_field_index(text_field))
        for start in range(0, len(column), ARROW_PIECE_ROWS):
          yield Piece(unit, column.slice(start, ARROW_PIECE_ROWS))
    except pa.ArrowInvalid as e:
      raise DataError(f"corpus file {unit.path} is not a readable Arrow file "
                      f"({_first_line(e)})") from None


# TFDS ----------------------------------------------------------------------------------------

def parse_tfds(spec: str) -> tuple[str, str]:
  """'tfds:NAME[/CONFIG][:SPLIT]' -> ('NAME[/CONFIG]', SPLIT)."""
  body = spec[len(TFDS_PREFIX):]
  name, _, split = body.partition(":")
  if not name:
    raise DataError(f"corpus {spec!r} names no dataset; expected tfds:NAME[/CONFIG][:SPLIT]")
  return name, split or "train"


def tfds_data_dir(data_dir: str | None) -> str | None:
  return data_dir or os.environ.get("TFDS_DATA_DIR") or None


@functools.cache
def _tfds_builder(spec: str, data_dir: str | None):
  """A builder for a prepared dataset, never downloading or preparing one."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  name, _ = parse_tfds(spec)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001 -- tfds raises many types for unknown names/configs
    raise DataError(f"corpus {spec}: TFDS cannot find dataset {name!r} "
                    f"({_first_line(e)})") from None
  if not builder.is_prepared():
    raise DataError(f"corpus {spec}: TFDS dataset {name!r} is not prepared in "
                    f"{builder.data_dir}; prepare it there in array_record format first "
                    f"(this pipeline never downloads)")
  return builder


def tfds_builder(spec: str, data_dir: str | None = None):
  return _tfds_builder(spec, tfds_data_dir(data_dir))


@functools.cache
def _tfds_source(spec: str, data_dir: str | None):
  _, split = parse_tfds(spec)
  builder = _tfds_builder(spec, data_dir)
  try:
    return builder.as_data_source(split=split)
  except Exception as e:  # noqa: BLE001 -- unknown split, tfrecord-only dataset, ...
    splits = sorted(builder.info.splits)
    raise DataError(f"corpus {spec}: cannot open split {split!r} as a random-access source "
                    f"(the dataset has splits {splits}; {_first_line(e)})") from None


def _read_tfds(unit: Unit, text_field: str) -> Iterator[str]:
  source = _tfds_source(unit.path, unit.data_dir)
  for index in range(unit.start, unit.stop):
    record = source[index]
    text = record[text_field]
    if isinstance(text, bytes):
      try:
        text = text.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"corpus {unit.path}: record {index} field {text_field!r} has invalid "
                        f"UTF-8 at byte offset {e.start}") from None
    yield text
