"""Greedy, order-preserving packing of variable-length examples into fixed-length rows.

seqio's `trim_and_pack` semantics (docs/objectives.md, "Packing"): examples are taken in
order and placed into the current row while every packed feature still fits; otherwise the row
is closed and a new one started. Each feature group gets `segment_ids` (1, 2, ... per example, 0 on padding)
and `positions` (restarting at 0 per example). Features that belong to the same stream
(e.g. the encoder's `input_ids` and `attention_mask`) share one group; an encoder-decoder packs
`input_ids` into the "" group and `labels` into the "decoder_" group, so both streams of an
example land in the same row with the same segment number.

Besides `pack`, this module serves prepare's "documents" mode in two places:

- Packing prepared documents (`prepare.prepare(..., pack=PackSpec(...))`): documents are cut
  into chunks of at most `block_length` raw tokens (`chunk_document`) and consecutive chunks
  are packed greedily into rows at prepare time (`ChunkPacker`), so that one stored record is
  one training row. The packer only needs the objective's length function (`PackSpec`).
- Inside the pipeline, `pack_one` turns the objective's outputs for the segments of one record
  into the row's fixed-shape features (a `pack_row` callable); `shift_right_per_segment` builds
  encoder-decoder decoder inputs for such rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.vocab import IGNORE_INDEX

Example = Mapping[str, np.ndarray]


def _pad_value(feature: str, pad_values: Mapping[str, int]) -> int:
  return pad_values.get(feature, IGNORE_INDEX if feature == "labels" else 0)


class _Row:
  """One row being filled: per-feature lists of arrays and per-group segment counts."""

  def __init__(self, lengths: Mapping[str, int], groups: Mapping[str, str]):
    self.lengths = lengths
    self.groups = groups
    self.parts: dict[str, list[np.ndarray]] = {f: [] for f in lengths}
    self.used = dict.fromkeys(lengths, 0)
    self.count = 0

  def fits(self, example: Example) -> bool:
    return all(self.used[f] + len(example[f]) <= self.lengths[f] for f in self.lengths)

  def add(self, example: Example) -> None:
    for f in self.lengths:
      self.parts[f].append(np.asarray(example[f]))
      self.used[f] += len(example[f])
    self.count += 1

  def finish(self, pad_values: Mapping[str, int]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    done_groups: set[str] = set()
    for f, length in self.lengths.items():
      parts = self.parts[f]
      values = np.full(length, _pad_value(f, pad_values), np.int32)
      if parts:
        joined = np.concatenate(parts).astype(np.int32)
        values[: len(joined)] = joined
      out[f] = values
      prefix = self.groups[f]
      if prefix in done_groups:
        continue
      done_groups.add(prefix)
      sizes = np.array([len(p) for p in parts], np.int64)
      total = int(sizes.sum())
      segment = np.zeros(length, np.int32)
      positions = np.zeros(length, np.int32)
      if total:
        segment[:total] = np.repeat(np.arange(1, len(parts) + 1, dtype=np.int32), sizes)
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        positions[:total] = np.arange(total) - starts
      out[prefix + "segment_ids"] = segment
      out[prefix + "positions"] = positions
    return out


def _setup(lengths: Mapping[str, int], groups: Mapping[str, str] | None,
           pad_values: Mapping[str, int] | None) -> tuple[dict[str, str], dict[str, int]]:
  groups = dict(groups or dict.fromkeys(lengths, ""))
  for f, length in lengths.items():
    if length < 1:
      raise DataError(f"packing length of {f!r} must be >= 1, got {length}")
    groups.setdefault(f, "")
  return groups, dict(pad_values or {})


def _check_features(example: Example, i: int, lengths: Mapping[str, int]) -> None:
  missing = [f for f in lengths if f not in example]
  if missing:
    raise DataError(f"example {i} lacks features {missing} needed for packing "
                    f"(it has {sorted(example)})")


def pack(examples: Iterable[Example], lengths: Mapping[str, int],
         groups: Mapping[str, str] | None = None,
         pad_values: Mapping[str, int] | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Packs examples into rows; yields dicts of int32 arrays of the given lengths.

  Args:
    examples: dicts holding at least the features named in `lengths` (1-D arrays).
    lengths: row length per packed feature, e.g. {"input_ids": 568, "labels": 114}.
    groups: feature -> prefix of its `segment_ids` / `positions` outputs; features sharing a
      prefix must have the same length in every example (they are one stream). Default: all
      features in the "" group.
    pad_values: padding id per feature (default 0, and -100 for `labels`).

  Yields:
    Rows with every feature of `lengths` plus `{prefix}segment_ids` and `{prefix}positions`
    per group. An example longer than a row is trimmed to the row (seqio's trim step).

  Raises:
    DataError: a feature missing from an example, or a row length < 1.
  """
  groups, pad_values = _setup(lengths, groups, pad_values)
  row = _Row(lengths, groups)
  for i, example in enumerate(examples):
    _check_features(example, i, lengths)
    trimmed = {f: np.asarray(example[f])[: lengths[f]] for f in lengths}
    if not any(len(v) for v in trimmed.values()):
      continue  # an empty example would only add a zero-length segment
    if not row.fits(trimmed):
      yield row.finish(pad_values)
      row = _Row(lengths, groups)
    row.add(trimmed)
  if row.count:
    yield row.finish(pad_values)


def unpack(row: Mapping[str, np.ndarray], feature: str, prefix: str = "") -> list[np.ndarray]:
  """Splits one packed feature of a row back into its examples (inverse of `pack`)."""
  segments = np.asarray(row[prefix + "segment_ids"])
  values = np.asarray(row[feature])
  n = int(segments.max(initial=0))
  return [values[segments == k] for k in range(1, n + 1)]


def pack_one(examples: Sequence[Example], lengths: Mapping[str, int],
             groups: Mapping[str, str] | None = None,
             pad_values: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
  """Packs all `examples` into exactly one row: `pack` without trimming or a second row.

  Meant for a `pipeline.make_iterator` `pack_row` callable, which gets the objective's
  examples for the segments of one prepared row, e.g. for T5
  `lambda exs: pack_one(exs, {"input_ids": 512, "labels": 114},
  groups={"input_ids": "", "labels": "decoder_"})`. Examples whose features are all empty are
  skipped, as in `pack`; no examples give an all-padding row.

  Returns:
    The row, exactly as `pack` would yield it for examples that fit in one row.

  Raises:
    DataError: a missing feature, a row length < 1, or examples whose total length of some
      feature exceeds its row length (the prepared rows do not match the objective's lengths).
  """
  groups, pad_values = _setup(lengths, groups, pad_values)
  row = _Row(lengths, groups)
  for i, example in enumerate(examples):
    _check_features(example, i, lengths)
    example = {f: np.asarray(example[f]) for f in lengths}
    if not any(len(v) for v in example.values()):
      continue
    if not row.fits(example):
      over = {f: row.used[f] + len(example[f]) for f in lengths
              if row.used[f] + len(example[f]) > lengths[f]}
      raise DataError(f"{len(examples)} examples do not fit in one row: after example {i}, "
                      + ", ".join(f"{f!r} needs {n} > {lengths[f]}" for f, n in over.items())
                      + " (the prepared packing does not match the objective's lengths)")
    row.add(example)
  return row.finish(pad_values)


def shift_right_per_segment(targets: np.ndarray, segment_ids: np.ndarray,
                            start_id: int = 0) -> np.ndarray:
  """Decoder inputs of packed encoder-decoder rows: targets shifted right within each segment.

  out[t] = targets[t - 1] when positions t - 1 and t are in the same segment, `start_id` at the
  first position of each segment, and 0 on padding (segment id 0). With one segment this is
  T5's `shift_right`; with start_id = 0 it matches seqio's packed `EncDecFeatureConverter`.

  Args:
    targets: int[..., L] decoder targets (e.g. `labels`; its pad value never leaks through).
    segment_ids: int[..., L] matching segment ids (`decoder_segment_ids`), 0 on padding.
    start_id: the decoder start token.

  Returns:
    int32[..., L].
  """
  targets, segment_ids = np.asarray(targets), np.asarray(segment_ids)
  if targets.shape != segment_ids.shape or targets.ndim < 1:
    raise DataError(f"targets {targets.shape} and segment_ids {segment_ids.shape} must have "
                    f"the same shape with at least one axis")
  out = np.full(targets.shape, start_id, np.int32)
  same = segment_ids[..., 1:] == segment_ids[..., :-1]
  out[..., 1:] = np.where(same, targets[..., :-1], start_id)
  out[segment_ids == 0] = 0
  return out


@dataclasses.dataclass(frozen=True)
class PackSpec:
  """How `prepare` packs document chunks into rows (the "documents" packing mode).

  A chunk of r raw tokens takes `lengths(r)[i]` positions of stream i of a row once the
  objective has turned it into an example, e.g. MLM (`[CLS] chunk [SEP]`): r -> (r + 2,); T5
  span corruption: r -> (r - n + s + 1, n + s + 1) with n, s the noise and span counts of r.
  Chunks are taken in corpus order; one joins the current row when used[i] + lengths(r)[i] <=
  capacity[i] for every stream i, else the row is closed and the chunk starts the next one.

  Attributes:
    key: stable identity of `lengths` and its parameters, e.g. "span_corruption(0.15,3.0)";
      part of the cache key and recorded in the manifest. (The cache key also hashes the table
      of `lengths` over [min_length, block_length], so a changed function under an unchanged
      key still gets fresh rows.)
    lengths: raw chunk length -> positions in each stream; a deterministic function returning
      len(capacity) non-negative ints, called for every r in [min_length, block_length].
    capacity: row length of each stream, e.g. (512,) or (512, 114); the order of the streams
      is the order of `lengths`' results.
    min_length: chunks shorter than this are dropped (only a document's last chunk, or a whole
      document shorter than block_length, can be). Default 2: span corruption needs two
      tokens (one noise, one kept), and a one-token MLM example carries next to no signal.
  """

  key: str
  lengths: Callable[[int], tuple[int, ...]]
  capacity: tuple[int, ...]
  min_length: int = 2

  def __post_init__(self):
    if not isinstance(self.key, str) or not self.key:
      raise DataError(f"PackSpec.key must be a non-empty string, got {self.key!r}")
    capacity = tuple(int(c) for c in self.capacity)
    if not capacity or min(capacity) < 1:
      raise DataError(f"PackSpec {self.key!r}: capacity must be one or more row lengths >= 1, "
                      f"got {self.capacity!r}")
    object.__setattr__(self, "capacity", capacity)
    if self.min_length < 1:
      raise DataError(f"PackSpec {self.key!r}: min_length must be >= 1, got {self.min_length}")

  def table(self, block_length: int) -> list[tuple[int, ...]]:
    """`lengths(r)` for r = 0..block_length (zeros below min_length), checked.

    Raises:
      DataError: block_length < min_length, a result that is not len(capacity) ints >= 0, or
        a chunk length in [min_length, block_length] that does not fit in an empty row (the
        largest such length is named, with its stream length and the capacity).
    """
    if block_length < self.min_length:
      raise DataError(f"packing {self.key!r}: block_length {block_length} is below min_length "
                      f"{self.min_length}")
    streams = len(self.capacity)
    table = [(0,) * streams] * (block_length + 1)
    for r in range(block_length, self.min_length - 1, -1):
      try:
        got = tuple(int(n) for n in self.lengths(r))
      except (TypeError, ValueError) as e:
        raise DataError(f"packing {self.key!r}: lengths({r}) failed or gave no sequence of "
                        f"ints ({type(e).__name__}: {e})") from None
      if len(got) != streams or min(got) < 0:
        raise DataError(f"packing {self.key!r}: lengths({r}) = {got} must be {streams} "
                        f"ints >= 0, one per stream of capacity {self.capacity}")
      for i, (n, cap) in enumerate(zip(got, self.capacity)):
        if n > cap:
          raise DataError(f"packing {self.key!r}: a chunk of {r} raw tokens (block_length "
                          f"{block_length}) takes {n} positions of stream {i}, more than its "
                          f"row capacity {cap}; lower block_length or raise the capacity")
      table[r] = got
    return table

  def fingerprint(self, block_length: int) -> str:
    """sha256 of key, capacity, min_length and `table(block_length)`: what the rows depend on."""
    identity = json.dumps([self.key, self.capacity, self.min_length,
                           self.table(block_length)[self.min_length:]])
    return hashlib.sha256(identity.encode()).hexdigest()


def chunk_document(ids: np.ndarray, block_length: int, min_length: int = 1) -> list[np.ndarray]:
  """Cuts a document into consecutive chunks of block_length tokens, the last one shorter.

  A chunk shorter than `min_length` is dropped; only the last chunk can be. The kept chunks
  concatenate to a prefix of `ids` (all of it unless the last chunk was dropped).
  """
  if block_length < 1:
    raise DataError(f"block_length must be >= 1, got {block_length}")
  ids = np.asarray(ids)
  chunks = [ids[i:i + block_length] for i in range(0, len(ids), block_length)]
  return [c for c in chunks if len(c) >= min_length]


class ChunkPacker:
  """Greedy, order-preserving packing of documents' chunks into rows under a `PackSpec`.

  Feed documents in order to `add_document`; it returns the rows its chunks closed. `finish`
  returns the last open row. A row is a non-empty list of chunks (views of the documents).
  """

  def __init__(self, spec: PackSpec, block_length: int):
    self.spec, self.block_length = spec, block_length
    self._table = spec.table(block_length)
    self._row: list[np.ndarray] = []
    self._used = [0] * len(spec.capacity)
    self.num_dropped_tokens = 0  # tokens of chunks shorter than min_length

  def measure(self, row: Sequence[np.ndarray]) -> list[int]:
    """Positions a row's chunks take in each stream."""
    used = [0] * len(self.spec.capacity)
    for chunk in row:
      used = [u + n for u, n in zip(used, self._table[len(chunk)])]
    return used

  def add_document(self, ids: np.ndarray) -> list[list[np.ndarray]]:
    """Adds a document's chunks; returns the rows closed by them (usually none or one)."""
    closed = []
    chunks = chunk_document(ids, self.block_length, self.spec.min_length)
    self.num_dropped_tokens += len(ids) - sum(len(c) for c in chunks)
    for chunk in chunks:
      need = self._table[len(chunk)]
      if self._row and any(u + n > c for u, n, c in zip(self._used, need, self.spec.capacity)):
        closed.append(self._row)
        self._row, self._used = [], [0] * len(need)
      self._row.append(chunk)
      self._used = [u + n for u, n in zip(self._used, need)]
    return closed

  def finish(self) -> list[list[np.ndarray]]:
    """The last, partly filled row ([] when there is none); the packer is then empty."""
    closed = [self._row] if self._row else []
    self._row, self._used = [], [0] * len(self.spec.capacity)
    return closed
