"""T5 span corruption as a registered objective."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_pipelines import packing
from data_pipelines.objectives import mlm, span_corruption
from t5x_like import objectives
from t5x_like.config import ConfigError
from t5x_like.config_schema import ObjectiveConfig
from t5x_like.config_validation import require
from t5x_like.objectives import seq2seq_rows
from t5x_like.training import tasks


@dataclasses.dataclass(frozen=True)
class SpanCorruptionConfig(ObjectiveConfig):
  """T5 span corruption: data.seq_len is the encoder input length; the raw block and the
  target length follow from random_spans_helper (512 -> 568 raw tokens, 114 targets)."""
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  # T5's random_roll: rotate each noise mask by a random offset (keeping spans whole), so a
  # short document's single span is not always its last tokens. Off by default, as in T5.
  random_roll: bool = False

  def check(self, config: Any) -> None:
    require(0.0 < self.noise_density < 1.0,
            f"objective.noise_density must be in (0, 1), got {self.noise_density}")
    require(self.mean_noise_span_length >= 1.0, "objective.mean_noise_span_length must be "
            f">= 1, got {self.mean_noise_span_length}")


def params(config: Any) -> span_corruption.SpanCorruptionParams:
  o = config.objective
  return span_corruption.SpanCorruptionParams(noise_density=o.noise_density,
                                              mean_noise_span_length=o.mean_noise_span_length,
                                              random_roll=o.random_roll)


def lengths(config: Any) -> tuple[int, int]:
  """(raw block tokens, targets) for span corruption with encoder inputs of data.seq_len: T5's
  random_spans_helper blocks, with exact targets (span_corruption.block_lengths)."""
  p = params(config)
  raw, targets = span_corruption.block_lengths(config.data.seq_len, p)
  inputs = span_corruption.output_lengths(raw, p)[0]
  # Concatenated blocks make rows of exactly seq_len inputs (there is no encoder padding).
  if not config.data.pack_documents and inputs != config.data.seq_len:
    raise ConfigError(f"no block length corrupts to exactly data.seq_len "
                      f"({config.data.seq_len}) inputs at objective.noise_density "
                      f"{p.noise_density}, mean_noise_span_length {p.mean_noise_span_length} "
                      f"(the nearest gives {inputs}); change data.seq_len or set "
                      f"data.pack_documents=true")
  return raw, targets


def _make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  p, d = params(config), config.data
  if d.pack_documents:
    return lambda block, rng: span_corruption.make_example(block, rng, p, vocab)

  def full_block(block: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ex = span_corruption.make_example(block, rng, p, vocab)
    # A full block corrupts to exactly seq_len inputs (random_spans_helper); targets may be
    # padded up to a longer configured data.target_len.
    if len(ex["input_ids"]) != d.seq_len or len(ex["labels"]) > d.target_len:
      raise ValueError(f"span corruption of a {len(block)}-token block gave "
                       f"{len(ex['input_ids'])} inputs / {len(ex['labels'])} targets, "
                       f"expected {d.seq_len} / <= {d.target_len}")
    labels = np.full(d.target_len, mlm.IGNORE_INDEX, np.int32)
    labels[: len(ex["labels"])] = ex["labels"]
    # One segment; the target padding (if any) gets decoder input 0 and is not scored.
    real = labels != mlm.IGNORE_INDEX
    decoder_input_ids = packing.shift_right_per_segment(np.where(real, labels, vocab.pad_id),
                                                        real.astype(np.int32), vocab.pad_id)
    return {"input_ids": ex["input_ids"], "decoder_input_ids": decoder_input_ids,
            "labels": labels}
  return full_block


def _pack_spec(config: Any) -> packing.PackSpec:
  p, d = params(config), config.data
  return packing.PackSpec(
      key=f"span_corruption({p.noise_density!r},{p.mean_noise_span_length!r})",
      lengths=lambda r: span_corruption.output_lengths(r, p),
      capacity=(d.seq_len, d.target_len))


def _check_sentinels(config: Any, tokenizer: Any) -> None:
  """Span corruption needs one sentinel id per noise span of a block."""
  raw = lengths(config)[0]
  _, spans = span_corruption.span_counts(raw, params(config))
  if tokenizer.num_sentinels < spans:
    raise ConfigError(f"vocab without room for the sentinels: span corruption of {raw}-token "
                      f"blocks makes {spans} noise spans, but tokenizer {tokenizer.model_path} "
                      f"has {tokenizer.num_sentinels} sentinel ids (train one with more: "
                      f"pretrain tokenizer train --num-sentinels {spans})")


OBJECTIVE = objectives.register(objectives.Objective(
    name="span_corruption",
    config=SpanCorruptionConfig,
    families=("t5",),
    task=tasks.Seq2SeqTask,
    block_length=lambda config: lengths(config)[0],
    target_length=lambda config: lengths(config)[1],
    make_example=_make_example,
    pack_spec=_pack_spec,
    pack_row=lambda config, vocab: seq2seq_rows.pack_row(config, vocab, vocab.pad_id),
    # T5 concatenates documents with nothing between them (reduce_concat_tokens): a separator
    # would be noised into the targets like any token (docs/objectives.md).
    separated_blocks=False,
    special_roles=("eos",),
    check=_check_sentinels,
))
