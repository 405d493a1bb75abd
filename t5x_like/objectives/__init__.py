"""Self-supervised objectives as registered records.

An `Objective` is everything the run needs to know about one objective, in one record
registered under `objective.name` (seqio's `TaskRegistry.add` in spirit): its parameters from
the config, the raw block length it cuts and the target length it produces, how documents
are packed for it, the pure-NumPy transform of one block (`data_pipelines.objectives`), the
row builder, the special tokens it writes, the training task (loss) it feeds and the model
families that accept it. `pretrain.data`, the loop and `flops` look the record up; an unknown
name is one error listing the registered objectives.

This package imports `data_pipelines` (NumPy only): the record must own both its data
transform and the task it feeds. `data_pipelines` never imports `t5x_like`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from t5x_like.config_schema import ObjectiveConfig
from t5x_like.registry import Registry

# (block, generator) -> one example: a dict of int32 arrays.
MakeExample = Callable[[Any, Any], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Objective:
  """One registered objective. See the module docstring.

  Every callable takes the run config (with model.vocab_size resolved); `vocab` is the
  tokenizer's `data_pipelines.vocab.VocabInfo`.
  """
  name: str
  families: tuple[str, ...]  # the model families that train with it
  task: Callable[[Any], Any]  # config -> the training task (its loss and features)
  block_length: Callable[[Any], int]  # config -> raw tokens per prepared block
  # config, vocab, reverse -> (block, rng) -> example: one row, or one segment of a packed row.
  make_example: Callable[[Any, Any, bool], MakeExample]
  # config -> decoder (target) length it produces; None for a single-stream objective.
  target_length: Callable[[Any], int] | None = None
  # config -> `data_pipelines.packing.PackSpec` for data.pack_documents; None: packing refused
  # (`packing_refused` says why).
  pack_spec: Callable[[Any], Any] | None = None
  packing_refused: str = ""
  # config, vocab -> (examples of one row -> the row's fixed-shape features); needed for packed
  # rows, and for every row when `always_packs_rows`.
  pack_row: Callable[[Any, Any], Callable[[list[dict[str, Any]]], dict[str, Any]]] | None = None
  always_packs_rows: bool = False
  separated_blocks: bool = True  # blocks mode: an EOS between concatenated documents
  special_roles: tuple[str, ...] = ()  # tokenizer roles it writes (cls, sep, eos, mask, ...)
  # config, tokenizer -> raises ConfigError for a tokenizer or setting it cannot train with.
  check: Callable[[Any, Any], None] | None = None
  # config, tokenizer, manifest -> a warning line about the prepared data, or None.
  data_warning: Callable[[Any, Any, Any], str | None] | None = None
  # The typed `objective` section (its keys, defaults and checks); the base has only the
  # loss options every objective reads.
  config: type = ObjectiveConfig
  # config -> the second half of every global batch is reversed text (XLNet's bi_data).
  reversed_second_half: Callable[[Any], bool] | None = None
  # config -> rows come in stream order, row i of step t+1 continuing row i of step t (a
  # model that carries memory across steps).
  streams: Callable[[Any], bool] | None = None


OBJECTIVES: Registry[Objective] = Registry("objective", "objective.name")


def register(objective: Objective, replace: bool = False) -> Objective:
  return OBJECTIVES.register(objective, replace=replace)


def get(name: str) -> Objective:
  return OBJECTIVES.get(name)


def names() -> tuple[str, ...]:
  return OBJECTIVES.names()


# The built-in objectives (each registers itself on import).
from t5x_like.objectives import (  # noqa: F401  pylint: disable=wrong-import-position
    causal_lm,
    decoder_span_corruption,
    denoising,
    mlm,
    permutation_lm,
    prefix_lm,
    replaced_token_detection,
    sentence_order,
    seq2seq_prefix_lm,
    span_corruption,
    unilm,
)

# Last: a mixture's members are the objectives registered before it.
importlib.import_module("t5x_like.objectives.mixture")
