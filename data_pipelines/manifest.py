"""manifest.json: what a prepared directory holds, and whether it fits a run.

`prepare.prepare` writes it last into the directory it builds; readers (`load_manifest`) take
it as the sign that the directory is complete. `check_manifest` refuses data made with another
tokenizer, block length or packing mode than the run needs.
"""

from __future__ import annotations

import dataclasses
import json
import os

from data_pipelines import icp
from data_pipelines.errors import DataError
from data_pipelines.packing import PackSpec
from data_pipelines.tokenizer import Tokenizer

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "validation")
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
  num_duplicates: int = 0  # documents dropped as (near-)duplicates by the ICP order


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
  # None: corpus order. ICP order: `icp.OrderSpec.fingerprint()` + "report" (per split).
  order: dict | None = None
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


def packing_entry(pack: PackSpec, block_length: int) -> dict:
  """The manifest's `packing` field (and cache-key part) for rows packed under `pack`."""
  return {"key": pack.key, "capacity": list(pack.capacity), "min_length": pack.min_length,
          "lengths_sha256": pack.fingerprint(block_length)}


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


def _describe_order(fingerprint: dict | None) -> str:
  if fingerprint is None:
    return "corpus order"
  return "the ICP order " + ", ".join(f"{k}={v}" for k, v in fingerprint.items() if k != "order")


def check_manifest(manifest: Manifest, tokenizer: Tokenizer, block_length: int | None = None,
                   pack: PackSpec | None = None, separated: bool | None = None,
                   order: icp.OrderSpec | None = None) -> None:
  """Raises DataError when prepared data does not belong to this tokenizer / block length /
  packing mode. `pack=None` expects blocks mode; a PackSpec expects documents mode packed for
  the same key, capacity, min_length and lengths (checked over the manifest's block_length).
  `separated` (blocks mode): True expects a separator between documents, False none, None
  either. `order`: None expects corpus order, an OrderSpec the ICP order it describes."""
  where = f"prepared data at {manifest.directory}"
  have_order = {k: v for k, v in (manifest.order or {}).items() if k != "report"} or None
  wanted_order = order.fingerprint() if order is not None else None
  if have_order != wanted_order:
    raise DataError(f"{where} holds documents in {_describe_order(have_order)}, but the run "
                    f"needs {_describe_order(wanted_order)}; prepare the data again")
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
