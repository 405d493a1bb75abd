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

Document order (blocks mode only): corpus order by default. With `order` (an
`icp.OrderSpec`), each split's documents are first held in memory, near-duplicates are dropped
and the rest are put in the In-Context Pretraining order (`icp.order_documents`: related
documents next to each other) before being concatenated and cut into blocks; the blocks are
then shuffled with `order.seed`, so that consecutive blocks of one path are not consecutive
records. The manifest's `order` field holds the parameters and each split's report; the
split's `num_documents` counts the kept documents and `num_duplicates` the dropped ones.

The output directory appears atomically: it is built under `<out_dir>.tmp-<pid>` and renamed
into place, so a crash never leaves a directory with a manifest that looks complete.

This module runs the preparation; the manifest is `manifest.py`, the record formats and shard
writer `shards.py`, the cache key and the shared remote copy `cache.py`. Their public names are
imported here too, where the pipeline's users have always found them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time

import numpy as np

from data_pipelines import icp, packing, prepare_workers, sources, storage, vocab
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
from data_pipelines.prepare_workers import is_validation
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

_FALLBACK_VALIDATION_FRACTION = 0.01
_LOG = logging.getLogger(__name__)


def prepare(corpus_spec: str, tokenizer: Tokenizer, block_length: int, out_dir: str,
            validation_fraction: float = 0.02, shard_size: int = 4096,
            separator_id: int | None = vocab.EOS_ID, text_field: str = "text",
            pack: PackSpec | None = None, order: icp.OrderSpec | None = None,
            workers: int = 1) -> Manifest:
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
    order: None for corpus order; else the In-Context Pretraining order (blocks mode only).
    workers: processes that read and tokenize the corpus (`prepare_workers`); the output is
      the same for any number.

  Raises:
    DataError: bad arguments, a chunk of `block_length` tokens that does not fit in an empty
      row of `pack`, a bad corpus (see sources.read_documents), or a corpus too small to make
      one row (block) per split, or (with `order`) fewer than two documents or no more
      documents than `order.k`.
  """
  if block_length < 2:
    raise DataError(f"block_length must be >= 2, got {block_length}")
  if not 0.0 <= validation_fraction < 1.0:
    raise DataError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  if shard_size < 1:
    raise DataError(f"shard_size must be >= 1, got {shard_size}")
  if order is not None and pack is not None:
    raise DataError("the In-Context Pretraining order applies to blocks (pack=None) only")
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
    held: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    progress = prepare_workers.Progress(f"prepare {corpus_spec}")
    for encoded in prepare_workers.encode_corpus(corpus_spec, tokenizer, text_field,
                                                 validation_fraction, dtype, workers):
      progress.update(encoded.num_documents, encoded.num_tokens)
      for split in SPLITS:
        lengths = encoded.lengths[split]
        if not len(lengths):
          continue
        if order is not None:  # counted once ordered, without the duplicates
          held[split].extend(encoded.documents(split))
          continue
        before = counts[split]["num_documents"]
        counts[split]["num_documents"] += len(lengths)
        if pack:
          counts[split]["num_tokens"] += int(lengths.sum())
          for ids in encoded.documents(split):
            writers[split].add(packers[split].add_document(ids.astype(np.int32)))
        else:
          joined = _join(encoded.tokens[split], lengths, separator_id)
          counts[split]["num_tokens"] += len(joined) + (separator_id is not None and before > 0)
          writers[split].add([block] for block in streams[split].add(joined))
    progress.close()
    for split, packer in packers.items():
      writers[split].add(packer.finish())
      counts[split]["num_dropped_tokens"] = packer.num_dropped_tokens
    reports = (_write_ordered(corpus_spec, held, order, writers, counts, streams, separator_id)
               if order is not None else None)
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
        packing=packing_entry(pack, block_length) if pack else None,
        order={**order.fingerprint(), "report": reports} if order is not None else None)
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


def _write_ordered(corpus_spec: str, held: dict[str, list[np.ndarray]], order: icp.OrderSpec,
                   writers: dict[str, ShardWriter], counts: dict,
                   streams: dict[str, BlockStream], separator_id: int | None) -> dict:
  """Orders each split's documents, cuts the path into blocks and writes them shuffled.
  Returns each split's `icp.OrderReport` as JSON."""
  total = sum(len(docs) for docs in held.values())
  if total < 2:
    raise DataError(f"data.order=icp orders related documents next to each other, but corpus "
                    f"{corpus_spec} has {total} document{'' if total == 1 else 's'}; use "
                    f"data.order=random")
  if order.k >= total:
    raise DataError(f"data.icp_k ({order.k}) must be smaller than the number of documents of "
                    f"corpus {corpus_spec} ({total}); lower data.icp_k")
  reports = {}
  for split, docs in held.items():
    if len(docs) >= 2:
      # A small split (validation) cannot have k neighbours per document: it gets n - 1.
      spec = dataclasses.replace(order, k=min(order.k, len(docs) - 1))
      path, report = icp.order_documents(docs, spec, what=f"{corpus_spec} {split}")
      reports[split] = report.to_json()
      _LOG.info("icp order of %s %s: %d documents, %d duplicates removed, %d paths, mean "
                "adjacent cosine %.3f", corpus_spec, split, report.num_documents,
                report.num_duplicates, report.num_paths, report.mean_adjacent_similarity)
    else:
      path = np.arange(len(docs))
      reports[split] = None
    blocks = []
    for i in path.tolist():
      separated = separator_id is not None and counts[split]["num_documents"] > 0
      counts[split]["num_documents"] += 1
      counts[split]["num_tokens"] += len(docs[i]) + separated
      blocks.append(streams[split].add(docs[i]))
    docs.clear()
    counts[split]["num_duplicates"] = (reports[split] or {}).get("num_duplicates", 0)
    rows = np.concatenate(blocks) if blocks else np.zeros((0, 1), np.int64)
    # Adjacent windows of one path are not adjacent records (the paper's window shuffle).
    rng = np.random.default_rng([order.seed, SPLITS.index(split)])
    writers[split].add([row] for row in rows[rng.permutation(len(rows))])
  return reports


def _join(tokens: np.ndarray, lengths: np.ndarray, separator_id: int | None) -> np.ndarray:
  """Documents' ids back to back -> the same with `separator_id` between documents."""
  if separator_id is None or len(lengths) < 2:
    return tokens
  return np.insert(tokens, np.cumsum(lengths)[:-1], separator_id)


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
                    separated: bool = True, order: icp.OrderSpec | None = None,
                    workers: int = 1, runner: str = "local",
                    beam_options: str = "") -> Manifest:
  """Returns the manifest of the cached preparation, preparing it first when missing.

  `pack` selects documents mode (see `prepare`); None keeps blocks mode, whose documents are
  joined with the tokenizer's EOS, or with nothing when `separated` is False. `remote_root`
  (gs://): the shared cache; a complete preparation there is downloaded into `cache_root`
  instead of being prepared again, and a new one is uploaded there. `order`, `workers`: see
  `prepare`. `runner="beam"` prepares on Apache Beam (`beam_prepare`, blocks mode only) with
  Beam's pipeline flags `beam_options`; with `remote_root` the job writes the shared cache
  directly and the manifest returned names it (hosts download it when they train).
  """
  separated = separated or pack is not None
  directory = prepared_dir(cache_root, corpus_spec, tokenizer, block_length,
                           validation_fraction, pack, separated, order)
  remote = storage.join(remote_root, os.path.basename(directory)) if remote_root else None
  if remote and not os.path.isfile(os.path.join(directory, MANIFEST_NAME)) and \
      storage.exists(storage.join(remote, MANIFEST_NAME)):
    download_prepared(remote, directory)
  if os.path.isfile(os.path.join(directory, MANIFEST_NAME)):
    manifest = load_manifest(directory)
    check_manifest(manifest, tokenizer, block_length, pack,
                   separated=None if pack is not None else separated, order=order)
    _LOG.info("using %s", manifest.summary())
    return manifest
  # Blocks mode joins documents with the tokenizer's EOS (a checkpoint's own tokenizer may
  # have it elsewhere than vocab.EOS_ID; BERT's has none, its [SEP] stands in).
  separator_id = tokenizer.vocab_info().eos_id if separated else None
  if runner == "beam":
    return _prepare_on_beam(corpus_spec, tokenizer, block_length, directory, remote,
                            validation_fraction, shard_size, separator_id, text_field, pack,
                            order, beam_options)
  if runner != "local":
    raise DataError(f"runner must be 'local' or 'beam', got {runner!r}")
  manifest = prepare(corpus_spec, tokenizer, block_length, directory,
                     validation_fraction=validation_fraction, shard_size=shard_size,
                     separator_id=separator_id, text_field=text_field, pack=pack, order=order,
                     workers=workers)
  if remote:
    upload_prepared(directory, remote)
  return manifest


def _prepare_on_beam(corpus_spec: str, tokenizer: Tokenizer, block_length: int, directory: str,
                     remote: str | None, validation_fraction: float, shard_size: int,
                     separator_id: int | None, text_field: str, pack: PackSpec | None,
                     order: icp.OrderSpec | None, beam_options: str) -> Manifest:
  from data_pipelines import beam_prepare  # pylint: disable=import-outside-toplevel
  beam_prepare.import_beam()
  if pack is not None or order is not None:
    what = "data.pack_documents=true" if pack is not None else "data.order=icp"
    raise DataError(f"--runner beam prepares blocks (concatenated documents); {what} packs "
                    f"or orders documents sequentially: use --runner local")
  return beam_prepare.prepare_beam(corpus_spec, tokenizer, block_length, remote or directory,
                                   validation_fraction=validation_fraction,
                                   shard_size=shard_size, separator_id=separator_id,
                                   text_field=text_field, beam_options=beam_options)
