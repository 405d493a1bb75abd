"""Rows of an encoder-decoder objective: examples packed into the two streams, with decoder
inputs shifted right per segment (shared by span corruption and denoising)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from data_pipelines import packing
from data_pipelines.objectives import mlm


def pack_row(config: Any, vocab: Any, start_id: int
             ) -> Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]]:
  """Examples of one row -> `input_ids`, `labels`, `decoder_input_ids` and the segment ids /
  positions of both streams; the decoder starts each segment with `start_id`."""
  d = config.data

  def seq2seq_row(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    row = packing.pack_one(examples, {"input_ids": d.seq_len, "labels": d.target_len},
                           groups={"input_ids": "", "labels": "decoder_"},
                           pad_values={"input_ids": vocab.pad_id})
    targets = np.where(row["labels"] == mlm.IGNORE_INDEX, vocab.pad_id, row["labels"])
    row["decoder_input_ids"] = packing.shift_right_per_segment(targets,
                                                               row["decoder_segment_ids"],
                                                               start_id)
    return row
  return seq2seq_row
