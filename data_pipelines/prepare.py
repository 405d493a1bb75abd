"""Corpus -> token ids -> fixed-length blocks -> ArrayRecord shards + manifest.json.

Documents are split into train and validation by a stable hash of their text, encoded, and
concatenated per split with a separator (EOS) between documents — RoBERTa's FULL-SENTENCES
packing: a block may cross document boundaries. The stream is cut into blocks of
`block_length` tokens and the final partial block is dropped. One ArrayRecord record is the
raw little-endian bytes of one block (uint16 when the vocabulary fits, else int32).

The output directory appears atomically: it is built under `<out_dir>.tmp-<pid>` and renamed
into place, so a crash never leaves a directory with a manifest that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator

import numpy as np
from array_record.python import array_record_module

from data_pipelines import sources, vocab
from data_pipelines.errors import DataError
from data_pipelines.tokenizer import Tokenizer

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "validation")
_ENCODE_BATCH = 512  # documents per encode_batch call: enough to keep sp threads busy
_FALLBACK_VALIDATION_FRACTION = 0.01
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  """One split's shards (file names relative to the manifest) and counts.

  num_tokens counts the split's token stream, separators included, before the final partial
  block is dropped; num_blocks = floor(num_tokens / block_length) unless blocks were moved.
  """

  shards: list[str]
  num_blocks: int
  num_tokens: int
  num_documents: int
  borrowed_from_train: int = 0


@dataclasses.dataclass(frozen=True)
class Manifest:
  """What a prepared directory holds; written as manifest.json."""

  format_version: int
  corpus: str
  corpus_fingerprint: str
  tokenizer_sha256: str
  tokenizer_path: str
  vocab_size: int
  block_length: int
  dtype: str
  separator_id: int
  validation_fraction: float
  splits: dict[str, SplitInfo]
  created: str
  directory: str = ""  # where it was loaded from; not stored

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    del out["directory"]
    return out

  def shard_paths(self, split: str) -> list[str]:
    if split not in self.splits:
      raise DataError(f"prepared data at {self.directory} has no split {split!r}; "
                      f"expected one of {sorted(self.splits)}")
    return [os.path.join(self.directory, s) for s in self.splits[split].shards]

  def summary(self) -> str:
    parts = [f"{name}: {s.num_documents} documents, {s.num_tokens} tokens, {s.num_blocks} "
             f"blocks" for name, s in self.splits.items()]
    return (f"prepared {self.corpus} (block length {self.block_length}, {self.dtype}) at "
            f"{self.directory}: " + "; ".join(parts))


def block_dtype(vocab_size: int) -> np.dtype:
  """Little-endian uint16 when every id fits, else int32."""
  return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<i4")


def is_validation(text: str, validation_fraction: float) -> bool:
  """Stable split assignment from the document's text, independent of corpus order."""
  h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
  return h < validation_fraction * 2.0**64


def cut_blocks(documents: Iterable[np.ndarray], block_length: int,
               separator_id: int = vocab.EOS_ID) -> Iterator[np.ndarray]:
  """Joins documents with `separator_id` between them and yields [n, block_length] chunks.

  The concatenation of all yielded chunks equals the first floor(total / block_length) *
  block_length tokens of the joined stream; the final partial block is dropped.
  """
  stream = _Stream(block_length, separator_id)
  for doc in documents:
    blocks = stream.add(np.asarray(doc))
    if len(blocks):
      yield blocks


class _ShardWriter:
  """Writes blocks to shards of `shard_size` records; the last shard stays in memory until
  `finish`, so a few blocks can still be moved to another split."""

  def __init__(self, directory: str, split: str, shard_size: int, dtype: np.dtype):
    self._directory, self._split, self._shard_size, self._dtype = (directory, split,
                                                                    shard_size, dtype)
    self.pending: list[np.ndarray] = []
    self.written: list[str] = []
    self.num_blocks = 0

  def add(self, blocks: np.ndarray) -> None:
    for block in blocks:
      if len(self.pending) == self._shard_size:
        self._write_pending()
      self.pending.append(block.astype(self._dtype))
      self.num_blocks += 1

  def take_last(self, k: int) -> list[np.ndarray]:
    taken, self.pending = self.pending[len(self.pending) - k:], self.pending[:len(self.pending) - k]
    self.num_blocks -= len(taken)
    return taken

  def _write_pending(self) -> None:
    path = os.path.join(self._directory, f"{self._split}-{len(self.written):05d}.partial")
    # group_size:1 keeps every record independently addressable for shuffled random access.
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for block in self.pending:
      writer.write(block.tobytes())
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


def prepare(corpus_spec: str, tokenizer: Tokenizer, block_length: int, out_dir: str,
            validation_fraction: float = 0.02, shard_size: int = 4096,
            separator_id: int = vocab.EOS_ID, text_field: str = "text") -> Manifest:
  """Tokenizes a corpus into block shards under `out_dir` and returns its manifest.

  Raises:
    DataError: bad arguments, a bad corpus (see sources.read_documents), or a corpus too
      small to fill one block per split.
  """
  if block_length < 2:
    raise DataError(f"block_length must be >= 2, got {block_length}")
  if not 0.0 <= validation_fraction < 1.0:
    raise DataError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  if shard_size < 1:
    raise DataError(f"shard_size must be >= 1, got {shard_size}")
  start = time.time()
  fingerprint = sources.fingerprint(corpus_spec)
  tmp_dir = f"{out_dir.rstrip(os.sep)}.tmp-{os.getpid()}"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  os.makedirs(tmp_dir)
  try:
    dtype = block_dtype(tokenizer.vocab_size)
    writers = {s: _ShardWriter(tmp_dir, s, shard_size, dtype) for s in SPLITS}
    counts = {s: {"num_documents": 0, "num_tokens": 0} for s in SPLITS}
    streams = {s: _Stream(block_length, separator_id) for s in SPLITS}
    for batch in _batches(sources.read_documents(corpus_spec, text_field), _ENCODE_BATCH):
      for text, ids in zip(batch, tokenizer.encode_batch(batch)):
        split = "validation" if is_validation(text, validation_fraction) else "train"
        counts[split]["num_documents"] += 1
        counts[split]["num_tokens"] += len(ids) + (counts[split]["num_documents"] > 1)
        writers[split].add(streams[split].add(ids))
    borrowed = _ensure_validation(corpus_spec, writers, counts, block_length)
    manifest = Manifest(
        format_version=FORMAT_VERSION, corpus=corpus_spec, corpus_fingerprint=fingerprint,
        tokenizer_sha256=tokenizer.sha256, tokenizer_path=os.path.abspath(tokenizer.model_path),
        vocab_size=tokenizer.vocab_size, block_length=block_length, dtype=dtype.name,
        separator_id=separator_id, validation_fraction=validation_fraction,
        splits={s: SplitInfo(shards=writers[s].finish(), num_blocks=writers[s].num_blocks,
                             borrowed_from_train=borrowed if s == "validation" else 0,
                             **counts[s]) for s in SPLITS},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with open(os.path.join(tmp_dir, MANIFEST_NAME), "w", encoding="utf-8") as f:
      json.dump(manifest.to_json(), f, indent=2)
      f.write("\n")
    _replace_dir(tmp_dir, out_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  manifest = dataclasses.replace(manifest, directory=out_dir)
  _LOG.info("%s in %.1f s", manifest.summary(), time.time() - start)
  return manifest


class _Stream:
  """Incremental `cut_blocks`: feed documents one at a time, get the blocks they complete."""

  def __init__(self, block_length: int, separator_id: int):
    self._length, self._separator = block_length, separator_id
    self._pending = np.zeros(0, np.int64)
    self._started = False

  def add(self, ids: np.ndarray) -> np.ndarray:
    """Returns int64[n, block_length] newly completed blocks (n may be 0)."""
    parts = [self._pending, np.array([self._separator])] if self._started else [self._pending]
    self._started = True
    self._pending = np.concatenate([*parts, ids.astype(np.int64)])
    n = len(self._pending) // self._length
    blocks = self._pending[: n * self._length].reshape(n, self._length)
    self._pending = self._pending[n * self._length:]
    return blocks


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
  batch: list[str] = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _ensure_validation(corpus_spec: str, writers: dict[str, _ShardWriter], counts: dict,
                       block_length: int) -> int:
  """Checks both splits have blocks, moving train's last blocks to validation if needed.

  Returns the number of blocks moved.
  """
  train, validation = writers["train"], writers["validation"]
  total_tokens = counts["train"]["num_tokens"] + counts["validation"]["num_tokens"]
  if train.num_blocks + validation.num_blocks < 2 or train.num_blocks == 0:
    raise DataError(f"corpus {corpus_spec} has {total_tokens} tokens, too few to fill one "
                    f"train and one validation block of length {block_length}")
  if validation.num_blocks:
    return 0
  k = max(1, math.ceil(_FALLBACK_VALIDATION_FRACTION * train.num_blocks))
  k = min(k, len(train.pending), train.num_blocks - 1)
  validation.add(np.stack(train.take_last(k)))
  _LOG.warning("corpus %s: the validation documents fill no block of length %d; using the "
               "last %d train blocks as validation", corpus_spec, block_length, k)
  return k


def _replace_dir(tmp_dir: str, out_dir: str) -> None:
  """Moves a finished directory into place; an existing one is set aside, then deleted."""
  old = None
  if os.path.exists(out_dir):
    old = f"{out_dir.rstrip(os.sep)}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out_dir, old)
  os.rename(tmp_dir, out_dir)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def load_manifest(directory: str) -> Manifest:
  """Reads `<directory>/manifest.json`.

  Raises:
    DataError: no manifest (not a prepared directory), invalid JSON, or another format version.
  """
  path = os.path.join(directory, MANIFEST_NAME)
  if not os.path.isfile(path):
    raise DataError(f"{directory} is not prepared data: {MANIFEST_NAME} is missing "
                    f"(run `pretrain data prepare`)")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
    if raw.get("format_version") != FORMAT_VERSION:
      raise DataError(f"{path} has format_version {raw.get('format_version')!r}; this code "
                      f"reads version {FORMAT_VERSION} (prepare the data again)")
    raw["splits"] = {k: SplitInfo(**v) for k, v in raw["splits"].items()}
    return Manifest(**raw, directory=directory)
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"{path} is not a valid manifest ({e})") from None


def check_manifest(manifest: Manifest, tokenizer: Tokenizer,
                   block_length: int | None = None) -> None:
  """Raises DataError when prepared data does not belong to this tokenizer / block length."""
  if manifest.tokenizer_sha256 != tokenizer.sha256:
    raise DataError(f"prepared data at {manifest.directory} was made with tokenizer "
                    f"{manifest.tokenizer_sha256[:12]} ({manifest.tokenizer_path}), but the run "
                    f"uses {tokenizer.sha256[:12]} ({tokenizer.model_path})")
  if block_length is not None and manifest.block_length != block_length:
    raise DataError(f"prepared data at {manifest.directory} has block_length "
                    f"{manifest.block_length}, but the run needs {block_length}")


def cache_key(corpus_spec: str, tokenizer: Tokenizer, block_length: int,
              validation_fraction: float = 0.02) -> str:
  """`<readable corpus>-L<block_length>-<16 hex>` from everything that changes the output."""
  identity = json.dumps([FORMAT_VERSION, sources.fingerprint(corpus_spec), tokenizer.sha256,
                         block_length, validation_fraction])
  digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
  readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(corpus_spec.rstrip("/")))[-40:]
  return f"{readable or 'corpus'}-L{block_length}-{digest}"


def prepared_dir(cache_root: str, corpus_spec: str, tokenizer: Tokenizer, block_length: int,
                 validation_fraction: float = 0.02) -> str:
  """Where the prepared data for these inputs lives under `cache_root`."""
  return os.path.join(cache_root, cache_key(corpus_spec, tokenizer, block_length,
                                            validation_fraction))


def ensure_prepared(cache_root: str, corpus_spec: str, tokenizer: Tokenizer,
                    block_length: int, validation_fraction: float = 0.02,
                    shard_size: int = 4096, text_field: str = "text") -> Manifest:
  """Returns the manifest of the cached preparation, preparing it first when missing."""
  directory = prepared_dir(cache_root, corpus_spec, tokenizer, block_length,
                           validation_fraction)
  if os.path.isfile(os.path.join(directory, MANIFEST_NAME)):
    manifest = load_manifest(directory)
    check_manifest(manifest, tokenizer, block_length)
    _LOG.info("using %s", manifest.summary())
    return manifest
  return prepare(corpus_spec, tokenizer, block_length, directory,
                 validation_fraction=validation_fraction, shard_size=shard_size,
                 text_field=text_field)
