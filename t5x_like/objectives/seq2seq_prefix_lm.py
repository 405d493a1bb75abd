"""T5's `prefix_lm` on the encoder-decoder (UL2's S-denoiser) as a registered objective: a
block of seq_len - 1 raw tokens split at a uniform point; the prefix (+ EOS) is the encoder
input, the rest (+ EOS) the decoder target.

Inputs and targets vary in length, so every row is a one-segment packed row (encoder padding
is masked through `segment_ids`), and the task reads the packed features."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_pipelines.objectives import ul2
from t5x_like import objectives
from t5x_like.config_schema import ObjectiveConfig
from t5x_like.objectives import seq2seq_rows
from t5x_like.training import tasks


@dataclasses.dataclass(frozen=True)
class Seq2SeqPrefixLMConfig(ObjectiveConfig):
  """No noise parameters: the split point is uniform over the block."""


def rows_config(config: Any) -> Any:
  """The run config as packed rows see it (segment ids mask the padding)."""
  return dataclasses.replace(config, data=dataclasses.replace(config.data, pack_documents=True))


def _make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  del reverse
  if config.data.pack_documents:  # the raw example (a mixture member, or a packed row's part)
    return lambda block, rng: ul2.prefix_lm_example(block, rng, vocab)
  row = seq2seq_rows.pack_row(rows_config(config), vocab, vocab.pad_id)

  def full_row(block: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return row([ul2.prefix_lm_example(block, rng, vocab)])
  return full_row


OBJECTIVE = objectives.register(objectives.Objective(
    name="seq2seq_prefix_lm",
    config=Seq2SeqPrefixLMConfig,
    families=("t5",),
    task=lambda config: tasks.Seq2SeqTask(rows_config(config)),
    block_length=lambda config: ul2.prefix_lm_lengths(config.data.seq_len)[0],
    target_length=lambda config: ul2.prefix_lm_lengths(config.data.seq_len)[1],
    make_example=_make_example,
    packing_refused="the split point decides both lengths, so a document's share of a row is "
                    "not known at prepare time",
    pack_row=lambda config, vocab: seq2seq_rows.pack_row(config, vocab, vocab.pad_id),
    separated_blocks=False,  # as span corruption: T5 concatenates documents (UL2 does too)
    special_roles=("eos",),
))
