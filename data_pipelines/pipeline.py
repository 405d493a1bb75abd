"""A grain pipeline over prepared records: global shuffle, per-record noise, per-host rows.

Everything is a function of the global step, so any host count and any restart agree:

  steps_per_epoch = num_records // global_batch_size          (the remainder is dropped)
  step s          -> epoch e = s // steps_per_epoch, batch b = s % steps_per_epoch
  global row j    -> record permutation_e[b * B + j], permutation_e from (seed, e) only
  record i of e   -> objective(block_i, np.random.default_rng([seed, e, i]))
  process p       -> rows [p * B/P, (p + 1) * B/P) of every global batch

For data prepared in documents mode (`prepare.prepare(..., pack=...)`) a record is one packed
row of segments seg_1..seg_m, and with the record's one generator g = default_rng([seed, e, i])

  record i of e   -> pack_row([objective(seg_1, g), ..., objective(seg_m, g)])

the objective applied to the segments in order, consuming g sequentially; `pack_row` (e.g.
built on `packing.pack_one`) makes the row's fixed-shape features.

With a `second_half_objective` (XLNet's bi_data), global rows j >= B/2 of every batch are made
by it instead (reversed text), so every global batch is forward text then reversed text
whatever the process count.

Stream order (`streams=True`, XLNet with memory): row j of step s+1 continues the text of row
j of step s, so a model can carry memory from one step to the next. The split's records
(consecutive blocks of the corpus stream) are cut into n contiguous streams, n = B (or B/2 with
a second-half objective), of S + 1 records each, S = (num_records - 1) // n steps per epoch:

  global row j < n, batch b -> records (j * S + b, j * S + b + 1) concatenated
  second-half row j = n + k  -> records (k * S + S - 1 - b, k * S + S - b) concatenated

the second half reading stream k backwards (its objective reverses the text), as the
original's bi_data reverses each forward stream. No shuffle; the generator is
default_rng([seed, e, first record]).

grain reads and transforms the host's records on background threads with prefetch.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

import grain
import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.manifest import Manifest, load_manifest
from data_pipelines.shards import decode_row

Objective = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]
PackRow = Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]]


@functools.lru_cache(maxsize=16)
def _cached_source(paths: tuple[str, ...], stamps: tuple[int, ...]):
  del stamps  # part of the cache key only: a re-prepared directory gets a fresh reader
  return grain.sources.ArrayRecordDataSource(list(paths))


def _source(paths: tuple[str, ...]) -> grain.sources.ArrayRecordDataSource:
  return _cached_source(paths, tuple(os.stat(p).st_mtime_ns for p in paths))


def _split_source(manifest_dir: str, split: str):
  manifest = load_manifest(manifest_dir)
  paths = tuple(manifest.shard_paths(split))
  if not paths:
    raise DataError(f"prepared data at {manifest_dir} has no shards for split {split!r}")
  return manifest, _source(paths)


def num_records(manifest_dir: str, split: str) -> int:
  """Number of records (blocks, or packed rows) in a split."""
  return len(_split_source(manifest_dir, split)[1])


def num_batches(manifest_dir: str, split: str, global_batch_size: int) -> int:
  """Global batches per epoch (the partial last batch is dropped)."""
  return num_records(manifest_dir, split) // global_batch_size


def _record(manifest_dir: str, split: str, index: int) -> tuple[Manifest, bytes]:
  manifest, source = _split_source(manifest_dir, split)
  if not 0 <= index < len(source):
    raise DataError(f"record {index} is out of range for split {split!r} of {manifest_dir} "
                    f"({len(source)} records)")
  return manifest, source[index]


def read_block(manifest_dir: str, split: str, index: int) -> np.ndarray:
  """Block `index` of a split as int32[block_length] (blocks mode only)."""
  manifest, record = _record(manifest_dir, split, index)
  if manifest.packed:
    raise DataError(f"prepared data at {manifest_dir} holds packed rows of documents, not "
                    f"blocks; use read_segments")
  return _decode(record, manifest.dtype)


def read_segments(manifest_dir: str, split: str, index: int) -> list[np.ndarray]:
  """The segments of record `index` of a split, as int32 arrays, in either mode.

  Blocks mode: [block]. Documents mode: the row's document chunks in order.
  """
  manifest, record = _record(manifest_dir, split, index)
  return _decode_segments(record, manifest)


def _decode(record: bytes, dtype: str) -> np.ndarray:
  return np.frombuffer(record, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.int32)


def _decode_segments(record: bytes, manifest: Manifest) -> list[np.ndarray]:
  if manifest.packed:
    return decode_row(record, manifest.dtype)
  return [_decode(record, manifest.dtype)]


def _stack(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


class _HostRecords:
  """Random-access view: host-local element k -> (epoch, record index, segments).

  Element k is row k % rows of the host's share of global step k // rows.
  """

  def __init__(self, source, manifest: Manifest, seed: int, shuffle: bool,
               global_batch_size: int, process_index: int, process_count: int,
               num_epochs: int | None, streams: int = 0):
    self._source, self._manifest, self._seed, self._shuffle = source, manifest, seed, shuffle
    self._global_batch = global_batch_size
    self.rows = global_batch_size // process_count
    self._row_offset = process_index * self.rows
    self._streams = streams  # 0: shuffled records; else the number of forward streams
    self.steps_per_epoch = ((len(source) - 1) // streams if streams
                            else len(source) // global_batch_size)
    total_steps = (sys.maxsize // (2 * global_batch_size) if num_epochs is None
                   else num_epochs * self.steps_per_epoch)
    self._len = total_steps * self.rows
    self._lock = threading.Lock()
    self._permutations: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return self._len

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._permutations.get(epoch)
      if perm is None:
        n = len(self._source)
        perm = (np.random.default_rng([self._seed, epoch]).permutation(n) if self._shuffle
                else np.arange(n))
        # Prefetch may straddle an epoch boundary; two epochs in memory are enough.
        self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
        self._permutations[epoch] = perm
      return perm

  def __getitem__(self, k: int) -> tuple[int, int, list[np.ndarray], bool]:
    """(epoch, record index, segments, row in the second half of its global batch)."""
    step, row = divmod(k, self.rows)
    epoch, batch = divmod(step, self.steps_per_epoch)
    global_row = self._row_offset + row
    second_half = 2 * global_row >= self._global_batch
    if self._streams:
      span, stream = divmod(global_row, self._streams)  # span 1: the reversed half
      index = stream * self.steps_per_epoch + (
          self.steps_per_epoch - 1 - batch if span else batch)
      block = np.concatenate([_decode(self._source[index], self._manifest.dtype),
                              _decode(self._source[index + 1], self._manifest.dtype)])
      return epoch, index, [block], second_half
    index = int(self._permutation(epoch)[batch * self._global_batch + global_row])
    return (epoch, index, _decode_segments(self._source[index], self._manifest), second_half)


class BlockIterator:
  """Iterator of host batches dict[str, np.ndarray[B/P, ...]] with checkpointable position.

  `get_state()` returns {"step": s}, the global step of the next batch; `set_state` jumps
  there exactly (same records, same noise).
  """

  def __init__(self, manifest_dir: str, split: str, objective: Objective,
               global_batch_size: int, seed: int, shuffle: bool = True,
               num_epochs: int | None = None, process_index: int = 0, process_count: int = 1,
               start_step: int = 0, worker_threads: int = 4, prefetch: int = 2,
               pack_row: PackRow | None = None,
               second_half_objective: Objective | None = None, streams: bool = False):
    if global_batch_size < 1 or process_count < 1 or global_batch_size % process_count:
      raise DataError(f"global batch size {global_batch_size} must be a positive multiple of "
                      f"the process count {process_count}")
    if not 0 <= process_index < process_count:
      raise DataError(f"process_index {process_index} is outside [0, {process_count})")
    if num_epochs is not None and num_epochs < 1:
      raise DataError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")
    if second_half_objective is not None and global_batch_size % 2:
      raise DataError(f"a second-half objective (bi_data) needs an even global batch size, "
                      f"got {global_batch_size}")
    manifest, source = _split_source(manifest_dir, split)
    if manifest.packed and pack_row is None:
      raise DataError(f"prepared data at {manifest_dir} holds documents packed for "
                      f"{manifest.packing['key']!r}; the iterator needs a pack_row to turn each "
                      f"record's examples into one row")
    if not manifest.packed and pack_row is not None:
      raise DataError(f"prepared data at {manifest_dir} holds blocks (no packing), but a "
                      f"pack_row was given; pass pack_row=None or prepare with a PackSpec")
    what = "rows" if manifest.packed else "blocks"
    if len(source) < global_batch_size:
      raise DataError(f"split {split!r} of {manifest_dir} has {len(source)} {what}, fewer than "
                      f"the global batch size {global_batch_size}")
    num_streams = 0
    if streams:
      if manifest.packed:
        raise DataError(f"stream order needs blocks; prepared data at {manifest_dir} holds "
                        f"packed documents")
      num_streams = global_batch_size // (2 if second_half_objective is not None else 1)
      if len(source) < num_streams + 1:
        raise DataError(f"split {split!r} of {manifest_dir} has {len(source)} blocks; stream "
                        f"order needs at least {num_streams + 1} ({num_streams} streams)")
    self._records = _HostRecords(source, manifest, seed, shuffle, global_batch_size,
                                 process_index, process_count, num_epochs, num_streams)
    self._objective, self._seed, self._pack_row = objective, seed, pack_row
    self._second_half_objective = second_half_objective
    # Prefetch counts records: threads work on single records, so one slow objective call
    # never holds a whole batch back.
    self._read_options = grain.ReadOptions(
        num_threads=worker_threads,
        prefetch_buffer_size=max(prefetch * self._records.rows, worker_threads))
    self.set_state({"step": start_step})

  @property
  def steps_per_epoch(self) -> int:
    return self._records.steps_per_epoch

  def _transform(self, item: tuple[int, int, list[np.ndarray], bool]
                 ) -> dict[str, np.ndarray]:
    epoch, index, segments, second_half = item
    rng = np.random.default_rng([self._seed, epoch, index])
    objective = self._objective
    if second_half and self._second_half_objective is not None:
      objective = self._second_half_objective
    if self._pack_row is None:
      return objective(segments[0], rng)
    return self._pack_row([objective(segment, rng) for segment in segments])

  def set_state(self, state: dict) -> None:
    step = int(state["step"])
    if step < 0:
      raise DataError(f"data iterator step must be >= 0, got {step}")
    self._step = step
    # Built on the first `next`: a restored position (resume) or an iterator that is never
    # read (evaluation builds no train batches) starts no prefetch threads for nothing.
    self._iter = None

  def _start(self) -> Iterator[dict[str, np.ndarray]]:
    rows = self._records.rows
    dataset = (grain.MapDataset.source(self._records)
               .map(self._transform)[self._step * rows:]
               .to_iter_dataset(self._read_options)
               .batch(rows, drop_remainder=True, batch_fn=_stack))
    return iter(dataset)

  def get_state(self) -> dict:
    return {"step": self._step}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iter is None:
      self._iter = self._start()
    batch = next(self._iter)
    self._step += 1
    return batch


def make_iterator(manifest_dir: str, split: str, objective: Objective, global_batch_size: int,
                  seed: int, shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int = 0, process_count: int = 1, start_step: int = 0,
                  worker_threads: int = 4, prefetch: int = 2,
                  pack_row: PackRow | None = None,
                  second_half_objective: Objective | None = None,
                  streams: bool = False) -> BlockIterator:
  """Host batches for `split` of prepared data; see the module docstring for the semantics.

  For evaluation use `shuffle=False, num_epochs=1`: the split in order, the partial last
  batch dropped.

  Args:
    manifest_dir: a directory written by `prepare.prepare`.
    split: "train" or "validation".
    objective: (int32[n] block or segment, generator) -> dict of np arrays; n = block_length
      in blocks mode, 1..block_length for the segments of documents mode.
    global_batch_size: rows per step over all processes (divisible by process_count).
    seed: shuffle and noise seed.
    shuffle: a fresh permutation per epoch; otherwise record order.
    num_epochs: stop after this many epochs; None = forever.
    process_index, process_count: this host's rows of each global batch.
    start_step: global step of the first batch (resume).
    worker_threads: grain read/transform threads.
    prefetch: host batches buffered ahead.
    pack_row: documents mode (required there): the objective's examples for a record's
      segments, in order -> the row's features, of the same shapes for every row (e.g. via
      `packing.pack_one`). Blocks mode: must be None.
    second_half_objective: if given, makes global rows B/2 .. B-1 of every batch (XLNet's
      bi_data: reversed text); the global batch must be even.
    streams: stream order (module docstring): each row continues the previous step's row;
      the objective gets two consecutive blocks concatenated; shuffle is ignored.

  Returns:
    An iterator of dict[str, np.ndarray[global_batch_size / process_count, ...]].

  Raises:
    DataError: bad arguments, a split smaller than one global batch, or a pack_row that does
      not match the data's mode.
  """
  return BlockIterator(manifest_dir, split, objective, global_batch_size, seed,
                       shuffle=shuffle, num_epochs=num_epochs, process_index=process_index,
                       process_count=process_count, start_step=start_step,
                       worker_threads=worker_threads, prefetch=prefetch, pack_row=pack_row,
                       second_half_objective=second_half_objective, streams=streams)
