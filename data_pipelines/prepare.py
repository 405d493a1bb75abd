"""Corpus -> token ids -> rows of tokens -> ArrayRecord shards + manifest.json.

Documents are split into train and validation by a stable hash of their text and encoded. One
ArrayRecord record is one training row, in one of two modes (the manifest's `packing` field):

- Blocks (`pack=None`, the default; `packing: null`): the documents of a split are
  concatenated with a separator (EOS) between them — RoBERTa's FULL-SENTENCES — or, with
  `separator_id=None` (`separator_id: null`), with nothing between them — T5's
  reduce_concat_tokens, used for span corruption, whose noise would otherwise move separators
  into the targets and teach the decoder to emit EOS mid-target. A block may cross document
  boundaries. The stream is cut into blocks of `block_length` tokens and the final partial
  block is dropped. A record is the raw little-endian bytes of one block (`dtype`: uint16 when
  the vocabulary fits, else int32).
- Documents (`pack=packing.PackSpec(...)`; `packing: {"key", "capacity", "min_length",
  "lengths_sha256"}`): attention never crosses documents and no compute goes to padding
  between them. Each document is cut into chunks of at most `block_length` raw tokens (the
  last one shorter; a chunk shorter than `pack.min_length` is dropped), and consecutive chunks
  of the split, in corpus order, are packed greedily into rows: a chunk of r tokens joins the
  current row while `used[i] + pack.lengths(r)[i] <= pack.capacity[i]` for every stream i of
  the objective's output (see `packing.PackSpec`). No separators are added; the objective adds
  its own specials. A record holds one row's segments (chunks), little-endian:

      uint32 count, uint32 length[count], then sum(length) token ids of `dtype`

  i.e. the segments' tokens concatenated in order (`encode_row` / `decode_row`). Records map
  1:1 to rows, so the pipeline's global-step semantics (resume, hosts) are unchanged.

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

from data_pipelines import packing, sources, storage, vocab
from data_pipelines.errors import DataError
from data_pipelines.packing import PackSpec
from data_pipelines.tokenizer import Tokenizer

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "validation")
_ENCODE_BATCH = 512  # documents per encode_batch call: enough to keep sp threads busy
_FALLBACK_VALIDATION_FRACTION = 0.01
_LOG = logging.getLogger(__name__)
_HEADER_DTYPE = np.dtype("<u4")  # packed records: segment count and lengths
_PACKING_FIELDS = ("key", "capacity", "min_length", "lengths_sha256")


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  """One split's shards (file names relative to the manifest) and counts.

  num_blocks counts records, i.e. rows. Blocks mode: num_tokens counts the split's token
  stream, separators included, before the final partial block is dropped; num_blocks =
  floor(num_tokens / block_length) unless blocks were moved. Documents mode: num_tokens counts
  the tokens of the split's documents (no separators), num_dropped_tokens those of them in
  chunks shorter than min_length, num_segments the chunks stored in the rows and
  stream_tokens[i] the positions they take in stream i (fill = stream_tokens[i] / (num_blocks
  * capacity[i])). The last three stay 0 / [] in blocks mode.
  """

  shards: list[str]
  num_blocks: int
  num_tokens: int
  num_documents: int
  borrowed_from_train: int = 0
  num_segments: int = 0
  num_dropped_tokens: int = 0
  stream_tokens: list[int] = dataclasses.field(default_factory=list)


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
  separator_id: int | None  # None: blocks mode without separators (or documents mode)
  validation_fraction: float
  splits: dict[str, SplitInfo]
  created: str
  # None: blocks mode. Documents mode: {"key", "capacity", "min_length", "lengths_sha256"}
  # of the PackSpec the rows were packed for (see `packing_entry`).
  packing: dict | None = None
  directory: str = ""  # where it was loaded from; not stored

  @property
  def packed(self) -> bool:
    """Whether records hold packed document chunks (documents mode) rather than blocks."""
    return self.packing is not None

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
    if not self.packed:
      parts = [f"{name}: {s.num_documents} documents, {s.num_tokens} tokens, {s.num_blocks} "
               f"blocks" for name, s in self.splits.items()]
      between = "" if self.separator_id is not None else ", no separator between documents"
      return (f"prepared {self.corpus} (block length {self.block_length}, {self.dtype}"
              f"{between}) at {self.directory}: " + "; ".join(parts))
    capacity = self.packing["capacity"]
    parts = []
    for name, s in self.splits.items():
      fill = "/".join(f"{t / max(1, s.num_blocks * c):.1%}"
                      for t, c in zip(s.stream_tokens, capacity))
      parts.append(f"{name}: {s.num_documents} documents, {s.num_tokens} tokens, "
                   f"{s.num_segments} chunks in {s.num_blocks} rows (fill {fill})")
    return (f"prepared {self.corpus} (documents packed for {self.packing['key']!r} into rows "
            f"of {tuple(capacity)}, chunks of at most {self.block_length} tokens, {self.dtype}) "
            f"at {self.directory}: " + "; ".join(parts))


def block_dtype(vocab_size: int) -> np.dtype:
  """Little-endian uint16 when every id fits, else int32."""
  return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<i4")


def is_validation(text: str, validation_fraction: float) -> bool:
  """Stable split assignment from the document's text, independent of corpus order."""
  h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
  return h < validation_fraction * 2.0**64


def cut_blocks(documents: Iterable[np.ndarray], block_length: int,
               separator_id: int | None = vocab.EOS_ID) -> Iterator[np.ndarray]:
  """Joins documents with `separator_id` (None: nothing) between them and yields
  [n, block_length] chunks.

  The concatenation of all yielded chunks equals the first floor(total / block_length) *
  block_length tokens of the joined stream; the final partial block is dropped.
  """
  stream = _Stream(block_length, separator_id)
  for doc in documents:
    blocks = stream.add(np.asarray(doc))
    if len(blocks):
      yield blocks


def packing_entry(pack: PackSpec, block_length: int) -> dict:
  """The manifest's `packing` field (and cache-key part) for rows packed under `pack`."""
  return {"key": pack.key, "capacity": list(pack.capacity), "min_length": pack.min_length,
          "lengths_sha256": pack.fingerprint(block_length)}


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


class _ShardWriter:
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


def prepare(corpus_spec: str, tokenizer: Tokenizer, block_length: int, out_dir: str,
            validation_fraction: float = 0.02, shard_size: int = 4096,
            separator_id: int | None = vocab.EOS_ID, text_field: str = "text",
            pack: PackSpec | None = None) -> Manifest:
  """Tokenizes a corpus into shards of rows under `out_dir` and returns its manifest.

  Args:
    corpus_spec: see `sources.read_documents`.
    tokenizer: encodes the documents.
    block_length: blocks mode: tokens per block; documents mode: the most raw tokens per
      chunk (what the objective gets per segment).
    out_dir: the prepared directory (replaced atomically).
    validation_fraction: share of documents (by text hash) in the validation split.
    shard_size: records per ArrayRecord shard.
    separator_id: blocks mode: the id between documents, None for none (T5 span corruption);
      unused in documents mode.
    text_field: the JSON field holding the text.
    pack: None for blocks mode; else documents mode, packed for this spec (module docstring).

  Raises:
    DataError: bad arguments, a chunk of `block_length` tokens that does not fit in an empty
      row of `pack`, a bad corpus (see sources.read_documents), or a corpus too small to make
      one row (block) per split.
  """
  if block_length < 2:
    raise DataError(f"block_length must be >= 2, got {block_length}")
  if not 0.0 <= validation_fraction < 1.0:
    raise DataError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  if shard_size < 1:
    raise DataError(f"shard_size must be >= 1, got {shard_size}")
  packers = {s: packing.ChunkPacker(pack, block_length) for s in SPLITS} if pack else {}
  start = time.time()
  fingerprint = sources.fingerprint(corpus_spec)
  tmp_dir = f"{out_dir.rstrip(os.sep)}.tmp-{os.getpid()}"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  os.makedirs(tmp_dir)
  try:
    dtype = block_dtype(tokenizer.vocab_size)
    writers = {s: _ShardWriter(tmp_dir, s, shard_size, dtype, packers.get(s)) for s in SPLITS}
    counts = {s: {"num_documents": 0, "num_tokens": 0} for s in SPLITS}
    streams = {s: _Stream(block_length, separator_id) for s in SPLITS}
    for batch in _batches(sources.read_documents(corpus_spec, text_field), _ENCODE_BATCH):
      for text, ids in zip(batch, tokenizer.encode_batch(batch)):
        split = "validation" if is_validation(text, validation_fraction) else "train"
        counts[split]["num_documents"] += 1
        if pack:
          counts[split]["num_tokens"] += len(ids)
          writers[split].add(packers[split].add_document(np.asarray(ids)))
        else:
          separated = separator_id is not None and counts[split]["num_documents"] > 1
          counts[split]["num_tokens"] += len(ids) + separated
          writers[split].add([block] for block in streams[split].add(ids))
    for split, packer in packers.items():
      writers[split].add(packer.finish())
      counts[split]["num_dropped_tokens"] = packer.num_dropped_tokens
    borrowed = _ensure_validation(corpus_spec, writers, counts, block_length, pack)
    manifest = Manifest(
        format_version=FORMAT_VERSION, corpus=corpus_spec, corpus_fingerprint=fingerprint,
        tokenizer_sha256=tokenizer.sha256, tokenizer_path=os.path.abspath(tokenizer.model_path),
        vocab_size=tokenizer.vocab_size, block_length=block_length, dtype=dtype.name,
        separator_id=separator_id, validation_fraction=validation_fraction,
        splits={s: SplitInfo(shards=writers[s].finish(), num_blocks=writers[s].num_blocks,
                             borrowed_from_train=borrowed if s == "validation" else 0,
                             num_segments=writers[s].num_segments,
                             stream_tokens=writers[s].stream_tokens, **counts[s])
                for s in SPLITS},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        packing=packing_entry(pack, block_length) if pack else None)
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
                       block_length: int, pack: PackSpec | None = None) -> int:
  """Checks both splits have records, moving train's last ones to validation if needed.

  In documents mode the moved rows are whole rows, so only the document at the cut can have
  chunks in both splits (as a block crossing the cut does in blocks mode).

  Returns the number of records moved.
  """
  train, validation = writers["train"], writers["validation"]
  total_tokens = counts["train"]["num_tokens"] + counts["validation"]["num_tokens"]
  if train.num_blocks + validation.num_blocks < 2 or train.num_blocks == 0:
    if pack is None:
      raise DataError(f"corpus {corpus_spec} has {total_tokens} tokens, too few to fill one "
                      f"train and one validation block of length {block_length}")
    raise DataError(f"corpus {corpus_spec} has {total_tokens} tokens in "
                    f"{train.num_segments + validation.num_segments} chunks of "
                    f"{pack.min_length} to {block_length} tokens, too few to make one train and "
                    f"one validation row (packing {pack.key!r}, capacity {pack.capacity})")
  if validation.num_blocks:
    return 0
  k = max(1, math.ceil(_FALLBACK_VALIDATION_FRACTION * train.num_blocks))
  k = min(k, len(train.pending), train.num_blocks - 1)
  validation.add(train.take_last(k))
  what = "block" if pack is None else "row"
  _LOG.warning("corpus %s: the validation documents fill no %s (length %d); using the "
               "last %d train %ss as validation", corpus_spec, what, block_length, k, what)
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
    packing_field = raw.get("packing")
    if packing_field is not None and (not isinstance(packing_field, dict)
                                      or set(packing_field) != set(_PACKING_FIELDS)):
      raise DataError(f"{path} is not a valid manifest (packing must be null or an object "
                      f"with {list(_PACKING_FIELDS)}, got {packing_field!r})")
    return Manifest(**raw, directory=directory)
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"{path} is not a valid manifest ({e})") from None


def _describe(packing_field: dict | None, separated: bool | None = None) -> str:
  if packing_field is None and separated is None:
    return "blocks of concatenated documents (no packing)"
  if packing_field is None:
    between = "a separator" if separated else "no separator"
    return f"blocks of documents concatenated with {between} between them (no packing)"
  return (f"documents packed for {packing_field['key']!r} into rows of "
          f"{tuple(packing_field['capacity'])} (min_length {packing_field['min_length']})")


def check_manifest(manifest: Manifest, tokenizer: Tokenizer, block_length: int | None = None,
                   pack: PackSpec | None = None, separated: bool | None = None) -> None:
  """Raises DataError when prepared data does not belong to this tokenizer / block length /
  packing mode. `pack=None` expects blocks mode; a PackSpec expects documents mode packed for
  the same key, capacity, min_length and lengths (checked over the manifest's block_length).
  `separated` (blocks mode): True expects a separator between documents, False none, None
  either."""
  where = f"prepared data at {manifest.directory}"
  if manifest.tokenizer_sha256 != tokenizer.sha256:
    raise DataError(f"{where} was made with tokenizer "
                    f"{manifest.tokenizer_sha256[:12]} ({manifest.tokenizer_path}), but the run "
                    f"uses {tokenizer.sha256[:12]} ({tokenizer.model_path})")
  if block_length is not None and manifest.block_length != block_length:
    raise DataError(f"{where} has block_length "
                    f"{manifest.block_length}, but the run needs {block_length}")
  wanted = packing_entry(pack, manifest.block_length) if pack else None
  if manifest.packing == wanted:
    has_separator = manifest.separator_id is not None
    if wanted is None and separated is not None and has_separator != separated:
      raise DataError(f"{where} holds {_describe(None, has_separator)}, but the run needs "
                      f"{_describe(None, separated)}; prepare the data again")
    return
  have = manifest.packing
  if (have is not None and wanted is not None
      and {k: v for k, v in have.items() if k != "lengths_sha256"}
      == {k: v for k, v in wanted.items() if k != "lengths_sha256"}):
    raise DataError(f"{where} was packed with lengths of {have['key']!r} that differ from the "
                    f"run's (lengths_sha256 {have['lengths_sha256'][:12]} vs "
                    f"{wanted['lengths_sha256'][:12]}); prepare the data again")
  raise DataError(f"{where} holds {_describe(have)}, but the run needs {_describe(wanted)}")


def cache_key(corpus_spec: str, tokenizer: Tokenizer, block_length: int,
              validation_fraction: float = 0.02, pack: PackSpec | None = None,
              separated: bool = True) -> str:
  """`<readable corpus>-L<block_length>[-<readable pack key>]-<16 hex>` from everything that
  changes the output; blocks mode with separators (`pack=None`, `separated=True`) keeps the key
  it had before packing and separator-less blocks existed. `separated` is ignored in documents
  mode (no separators there)."""
  identity = [FORMAT_VERSION, sources.fingerprint(corpus_spec), tokenizer.sha256, block_length,
              validation_fraction]
  if pack is not None:
    identity.append(packing_entry(pack, block_length))
  elif not separated:
    # Not the separated blocks' key: caches prepared with EOS between documents (all before
    # span corruption dropped them) are never reused for it.
    identity.append({"separator": None})
  digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
  readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(corpus_spec.rstrip("/")))[-40:]
  mode = "" if pack is None else "-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", pack.key)[:40]
  return f"{readable or 'corpus'}-L{block_length}{mode}-{digest}"


def prepared_dir(cache_root: str, corpus_spec: str, tokenizer: Tokenizer, block_length: int,
                 validation_fraction: float = 0.02, pack: PackSpec | None = None,
                 separated: bool = True) -> str:
  """Where the prepared data for these inputs lives under `cache_root`."""
  return os.path.join(cache_root, cache_key(corpus_spec, tokenizer, block_length,
                                            validation_fraction, pack, separated))


def ensure_prepared(cache_root: str, corpus_spec: str, tokenizer: Tokenizer,
                    block_length: int, validation_fraction: float = 0.02,
                    shard_size: int = 4096, text_field: str = "text",
                    pack: PackSpec | None = None, remote_root: str | None = None,
                    separated: bool = True) -> Manifest:
  """Returns the manifest of the cached preparation, preparing it first when missing.

  `pack` selects documents mode (see `prepare`); None keeps blocks mode, whose documents are
  joined with the tokenizer's EOS, or with nothing when `separated` is False. `remote_root`
  (gs://): the shared cache; a complete preparation there is downloaded into `cache_root`
  instead of being prepared again, and a new one is uploaded there.
  """
  separated = separated or pack is not None
  directory = prepared_dir(cache_root, corpus_spec, tokenizer, block_length,
                           validation_fraction, pack, separated)
  remote = storage.join(remote_root, os.path.basename(directory)) if remote_root else None
  if remote and not os.path.isfile(os.path.join(directory, MANIFEST_NAME)) and \
      storage.exists(storage.join(remote, MANIFEST_NAME)):
    _download_prepared(remote, directory)
  if os.path.isfile(os.path.join(directory, MANIFEST_NAME)):
    manifest = load_manifest(directory)
    check_manifest(manifest, tokenizer, block_length, pack,
                   separated=None if pack is not None else separated)
    _LOG.info("using %s", manifest.summary())
    return manifest
  # Blocks mode joins documents with the tokenizer's EOS (a checkpoint's own tokenizer may
  # have it elsewhere than vocab.EOS_ID; BERT's has none, its [SEP] stands in).
  manifest = prepare(corpus_spec, tokenizer, block_length, directory,
                     validation_fraction=validation_fraction, shard_size=shard_size,
                     separator_id=tokenizer.vocab_info().eos_id if separated else None,
                     text_field=text_field, pack=pack)
  if remote:
    _upload_prepared(directory, remote)
  return manifest


def _upload_prepared(directory: str, remote: str) -> None:
  """Copies a prepared directory to gs://, the manifest last: a remote directory with a
  manifest is complete (readers download only those)."""
  for name in sorted(os.listdir(directory)):
    if name != MANIFEST_NAME:
      storage.upload(os.path.join(directory, name), storage.join(remote, name))
  storage.upload(os.path.join(directory, MANIFEST_NAME), storage.join(remote, MANIFEST_NAME))
  _LOG.info("uploaded the prepared data to %s", remote)


def _download_prepared(remote: str, directory: str) -> None:
  """Copies a complete remote preparation into the local cache (ArrayRecord readers open local
  files), through a temporary directory renamed when whole."""
  tmp = directory + f".download-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  storage.download(remote, tmp)
  shutil.rmtree(directory, ignore_errors=True)
  os.rename(tmp, directory)
  _LOG.info("downloaded the prepared data from %s", remote)
