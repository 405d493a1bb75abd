"""Greedy, order-preserving packing of variable-length examples into fixed-length rows.

seqio's `trim_and_pack` semantics (OBJECTIVES.md §6): examples are taken in order and placed
into the current row while every packed feature still fits; otherwise the row is closed and a
new one started. Each feature group gets `segment_ids` (1, 2, ... per example, 0 on padding)
and `positions` (restarting at 0 per example). Features that belong to the same stream
(e.g. the encoder's `input_ids` and `attention_mask`) share one group; an encoder-decoder packs
`input_ids` into the "" group and `labels` into the "decoder_" group, so both streams of an
example land in the same row with the same segment number.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from data_pipelines.errors import DataError

Example = Mapping[str, np.ndarray]


def _pad_value(feature: str, pad_values: Mapping[str, int]) -> int:
  return pad_values.get(feature, -100 if feature == "labels" else 0)


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
  groups = dict(groups or dict.fromkeys(lengths, ""))
  pad_values = dict(pad_values or {})
  for f, length in lengths.items():
    if length < 1:
      raise DataError(f"packing length of {f!r} must be >= 1, got {length}")
    groups.setdefault(f, "")
  row = _Row(lengths, groups)
  for i, example in enumerate(examples):
    missing = [f for f in lengths if f not in example]
    if missing:
      raise DataError(f"example {i} lacks features {missing} needed for packing "
                      f"(it has {sorted(example)})")
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
