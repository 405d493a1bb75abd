"""Masked LM (BERT / RoBERTa, whole-word) as a registered objective."""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipelines import packing
from data_pipelines.objectives import mlm
from t5x_like import objectives
from t5x_like.config import max_predictions
from t5x_like.training import tasks


def params(config: Any) -> mlm.MLMParams:
  o = config.objective
  return mlm.MLMParams(max_predictions=max_predictions(config), mask_prob=o.mask_prob,
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
    families=("bert",),
    task=tasks.MLMTask,
    block_length=lambda config: config.data.seq_len - 2,  # [CLS] block [SEP]
    make_example=_make_example,
    pack_spec=_pack_spec,
    pack_row=_pack_row,
    special_roles=("cls", "sep", "mask"),
))
