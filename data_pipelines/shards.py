"""Rows of tokens as ArrayRecord records: cutting blocks, the packed-row format, shard files.

Blocks mode: a record is the raw little-endian bytes of one block (`cut_blocks`). Documents
mode: a record is one packed row, `encode_row` / `decode_row`. The layouts are described in
`prepare`'s module docstring; `ShardWriter` writes either kind into numbered shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
from array_record.python import array_record_module

from data_pipelines import packing, vocab
from data_pipelines.errors import DataError

_HEADER_DTYPE = np.dtype("<u4")  # packed records: segment count and lengths


def block_dtype(vocab_size: int) -> np.dtype:
  """Little-endian uint16 when every id fits, else int32."""
  return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<i4")


def cut_blocks(documents: Iterable[np.ndarray], block_length: int,
               separator_id: int | None = vocab.EOS_ID) -> Iterator[np.ndarray]:
  """Joins documents with `separator_id` (None: nothing) between them and yields
  [n, block_length] chunks.

  The concatenation of all yielded chunks equals the first floor(total / block_length) *
  block_length tokens of the joined stream; the final partial block is dropped.
  """
  stream = BlockStream(block_length, separator_id)
  for doc in documents:
    blocks = stream.add(np.asarray(doc))
    if len(blocks):
      yield blocks


class BlockStream:
  """Incremental `cut_blocks`: feed documents one at a time, get the blocks they complete."""

  def __init__(self, block_length: int, separator_id: int | None):
    self._length, self._separator = block_length, separator_id
    self._pending = np.zeros(0, np.int64)
    self._started = False

  def add(self, ids: np.ndarray) -> np.ndarray:
    """Returns int64[n, block_length] newly completed blocks (n may be 0)."""
    parts = [self._pending]
    if self._started and self._separator is not None:
      parts.append(np.array([self._separator]))
    self._started = True
    self._pending = np.concatenate([*parts, ids.astype(np.int64)])
    n = len(self._pending) // self._length
    blocks = self._pending[: n * self._length].reshape(n, self._length)
    self._pending = self._pending[n * self._length:]
    return blocks


def encode_row(segments: Iterable[np.ndarray], dtype: np.dtype | str) -> bytes:
  """A documents-mode record: uint32 count, uint32 lengths, then the tokens as `dtype`."""
  segments = [np.asarray(s) for s in segments]
  header = np.array([len(segments), *(len(s) for s in segments)], _HEADER_DTYPE)
  tokens = (np.concatenate(segments) if segments else np.zeros(0, np.int64))
  return header.tobytes() + tokens.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def decode_row(record: bytes, dtype: np.dtype | str) -> list[np.ndarray]:
  """Inverse of `encode_row`: the row's segments as int32 arrays.

  Raises:
    DataError: a record whose header and size disagree (not a documents-mode record).
  """
  dtype = np.dtype(dtype).newbyteorder("<")
  size = _HEADER_DTYPE.itemsize
  count = int(np.frombuffer(record[:size], _HEADER_DTYPE)[0]) if len(record) >= size else -1
  header_end = size * (count + 1)
  if count < 0 or len(record) < header_end:
    raise DataError(f"malformed packed record of {len(record)} bytes (segment count {count})")
  lengths = np.frombuffer(record[size:header_end], _HEADER_DTYPE).astype(np.int64)
  if int(lengths.sum()) * dtype.itemsize != len(record) - header_end:
    raise DataError(f"malformed packed record: {count} segments of {int(lengths.sum())} tokens "
                    f"in {len(record) - header_end} bytes of {dtype.name}")
  tokens = np.frombuffer(record[header_end:], dtype).astype(np.int32)
  return np.split(tokens, np.cumsum(lengths)[:-1]) if count else []


class ShardWriter:
  """Writes records (each a list of segments) to shards of `shard_size` records; the last
  shard stays in memory until `finish`, so a few records can still be moved to another split.

  Blocks mode (`packer` None): every record is [block], stored as the block's bytes.
  Documents mode: a record is one packed row, stored by `encode_row`.
  """

  def __init__(self, directory: str, split: str, shard_size: int, dtype: np.dtype,
               packer: packing.ChunkPacker | None = None):
    self._directory, self._split, self._shard_size, self._dtype = (directory, split,
                                                                    shard_size, dtype)
    self._packer = packer
    self.pending: list[list[np.ndarray]] = []
    self.written: list[str] = []
    self.num_blocks = 0
    self.num_segments = 0
    self.stream_tokens = [0] * len(packer.spec.capacity) if packer else []

  def add(self, records: Iterable[list[np.ndarray]]) -> None:
    for segments in records:
      if len(self.pending) == self._shard_size:
        self._write_pending()
      # A copy: packed chunks are views of whole documents.
      self.pending.append([s.astype(self._dtype) for s in segments])
      self._count(segments, 1)

  def take_last(self, k: int) -> list[list[np.ndarray]]:
    taken, self.pending = self.pending[len(self.pending) - k:], self.pending[:len(self.pending) - k]
    for segments in taken:
      self._count(segments, -1)
    return taken

  def _count(self, segments: list[np.ndarray], sign: int) -> None:
    self.num_blocks += sign
    if self._packer:
      self.num_segments += sign * len(segments)
      self.stream_tokens = [t + sign * n for t, n in
                            zip(self.stream_tokens, self._packer.measure(segments))]

  def _write_pending(self) -> None:
    path = os.path.join(self._directory, f"{self._split}-{len(self.written):05d}.partial")
    # group_size:1 keeps every record independently addressable for shuffled random access.
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for segments in self.pending:
      writer.write(encode_row(segments, self._dtype) if self._packer else segments[0].tobytes())
    writer.close()
    self.written.append(path)
    self.pending = []

  def finish(self) -> list[str]:
    """Writes the last shard and renames all to `<split>-0000i-of-0000N.array_record`."""
    if self.pending:
      self._write_pending()
    names = []
    for i, path in enumerate(self.written):
      name = f"{self._split}-{i:05d}-of-{len(self.written):05d}.array_record"
      os.rename(path, os.path.join(self._directory, name))
      names.append(name)
    return names
