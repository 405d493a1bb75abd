"""Masked LM (BERT / RoBERTa, whole-word) as a registered objective."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_pipelines import packing
from data_pipelines.objectives import mlm
from t5x_like import objectives
from t5x_like.config_schema import ObjectiveConfig
from t5x_like.config_validation import require
from t5x_like.training import tasks


@dataclasses.dataclass(frozen=True)
class MLMConfig(ObjectiveConfig):
  """BERT's masking: mask_prob of the tokens (whole words with whole_word) are predicted;
  of those, mask_token_frac become [MASK], random_token_frac a random token, the rest stay."""
  mask_prob: float = 0.15
  mask_token_frac: float = 0.8
  random_token_frac: float = 0.1
  whole_word: bool = False
  # Static number of positions the MLM head gathers per sequence; 0 derives it from seq_len.
  max_predictions: int = 0

  def check(self, config: Any) -> None:
    require(0.0 < self.mask_prob < 1.0,
            f"objective.mask_prob must be in (0, 1), got {self.mask_prob}")
    require(self.mask_token_frac >= 0 and self.random_token_frac >= 0 and
            self.mask_token_frac + self.random_token_frac <= 1.0 + 1e-9,
            "objective.mask_token_frac and objective.random_token_frac must be >= 0 and sum "
            f"to <= 1, got {self.mask_token_frac} + {self.random_token_frac}")
    require(self.max_predictions >= 0, "objective.max_predictions must be >= 0 (0 = derive), "
            f"got {self.max_predictions}")

  def predictions_per_row(self, config: Any) -> int:
    """Static number of positions the MLM head scores per row: max_predictions, or (0) the
    objective's own bound, `data_pipelines.objectives.mlm.default_max_predictions`."""
    if self.max_predictions:
      return self.max_predictions
    return mlm.default_max_predictions(config.data.seq_len, self.mask_prob,
                                       whole_word=self.whole_word,
                                       packed=config.data.pack_documents)


def params(config: Any) -> mlm.MLMParams:
  o = config.objective
  return mlm.MLMParams(max_predictions=o.predictions_per_row(config), mask_prob=o.mask_prob,
                       mask_token_frac=o.mask_token_frac, random_token_frac=o.random_token_frac,
                       whole_word=o.whole_word)


def _make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  p = params(config)
  return lambda block, rng: mlm.make_example(block, rng, p, vocab)


def _pack_spec(config: Any) -> packing.PackSpec:
  return packing.PackSpec(key="mlm", lengths=lambda r: (r + 2,), capacity=(config.data.seq_len,))


def _pack_row(config: Any, vocab: Any):
  lengths = dict.fromkeys(("input_ids", "attention_mask", "token_type_ids", "labels"),
                          config.data.seq_len)
  pad = {"input_ids": vocab.pad_id}

  def mlm_row(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    row = packing.pack_one(examples, lengths, pad_values=pad)
    row["dropped_by_objective"] = np.int32(sum(int(ex["dropped_by_objective"])
                                               for ex in examples))
    return row
  return mlm_row


OBJECTIVE = objectives.register(objectives.Objective(
    name="mlm",
    config=MLMConfig,
    families=("bert",),
    task=tasks.MLMTask,
    block_length=lambda config: config.data.seq_len - 2,  # [CLS] block [SEP]
    make_example=_make_example,
    pack_spec=_pack_spec,
    pack_row=_pack_row,
    special_roles=("cls", "sep", "mask"),
))
