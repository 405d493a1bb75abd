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

  i.e. the segments' tokens concatenated in order (`shards.encode_row` / `decode_row`).
  Records map 1:1 to rows, so the pipeline's global-step semantics (resume, hosts) are
  unchanged.

The output directory appears atomically: it is built under `<out_dir>.tmp-<pid>` and renamed
into place, so a crash never leaves a directory with a manifest that looks complete.

This module runs the preparation; the manifest is `manifest.py`, the record formats and shard
writer `shards.py`, the cache key and the shared remote copy `cache.py`. Their public names are
imported here too, where the pipeline's users have always found them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator

import numpy as np

from data_pipelines import packing, sources, storage, vocab
from data_pipelines.cache import cache_key, download_prepared, prepared_dir, upload_prepared
from data_pipelines.errors import DataError
from data_pipelines.manifest import (
  FORMAT_VERSION,
  MANIFEST_NAME,
  SPLITS,
  Manifest,
  SplitInfo,
  check_manifest,
  load_manifest,
  packing_entry,
)
from data_pipelines.packing import PackSpec
from data_pipelines.shards import (
  BlockStream,
  ShardWriter,
  block_dtype,
  cut_blocks,
  decode_row,
  encode_row,
)
from data_pipelines.tokenizer import Tokenizer

# The public names: this module's and those of manifest, shards and cache that callers have
# always used as `prepare.<name>`.
__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "SPLITS", "Manifest", "SplitInfo", "block_dtype",
           "cache_key", "check_manifest", "cut_blocks", "decode_row", "encode_row",
           "ensure_prepared", "is_validation", "load_manifest", "packing_entry", "prepare",
           "prepared_dir"]

_ENCODE_BATCH = 512  # documents per encode_batch call: enough to keep sp threads busy
_FALLBACK_VALIDATION_FRACTION = 0.01
_LOG = logging.getLogger(__name__)


def is_validation(text: str, validation_fraction: float) -> bool:
  """Stable split assignment from the document's text, independent of corpus order."""
  h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
  return h < validation_fraction * 2.0**64


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
    writers = {s: ShardWriter(tmp_dir, s, shard_size, dtype, packers.get(s)) for s in SPLITS}
    counts = {s: {"num_documents": 0, "num_tokens": 0} for s in SPLITS}
    streams = {s: BlockStream(block_length, separator_id) for s in SPLITS}
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


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
  batch: list[str] = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _ensure_validation(corpus_spec: str, writers: dict[str, ShardWriter], counts: dict,
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
    download_prepared(remote, directory)
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
    upload_prepared(directory, remote)
  return manifest
