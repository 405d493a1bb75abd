"""Span corruption in UL2's decoder-only form, as a registered objective: T5's span
corruption of a raw block, laid out as one prefix-LM row `inputs targets` on a decoder (Llama,
MPT): bidirectional attention over the corrupted inputs (sentinels in place of the spans),
loss on the targets (each sentinel and its span). With the decoder's `prefix_lm` as the
S-denoiser it makes UL2's mixture of denoisers for a decoder-only model (presets
`ul2_decoder_tiny`; Tay et al. 2022 §3.1.1: "for decoder-only, the inputs and targets are
concatenated, with a prefix-LM mask over the inputs").

The raw block is the longest whose inputs + targets fill data.seq_len positions
(`ul2.decoder_lengths`); rows are one-segment packed rows (segment ids, positions), padded
at the end.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from data_pipelines.objectives import ul2
from t5x_like import objectives
from t5x_like.objectives import causal_lm, span_corruption
from t5x_like.training import tasks


@dataclasses.dataclass(frozen=True)
class DecoderSpanCorruptionConfig(span_corruption.SpanCorruptionConfig):
  """The span-corruption keys (noise density, mean span length, roll); data.seq_len is the
  decoder row (inputs + targets)."""


def block_length(config: Any) -> int:
  return ul2.decoder_lengths(config.data.seq_len, span_corruption.params(config))[0]


def rows_config(config: Any) -> Any:
  """The run config as packed rows see it (segment ids mask the padding at the end)."""
  return dataclasses.replace(config, data=dataclasses.replace(config.data, pack_documents=True))


def make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  del reverse
  p = span_corruption.params(config)
  if config.data.pack_documents:  # the raw example (a mixture member)
    return lambda block, rng: ul2.decoder_example(block, rng, p, vocab)
  row = causal_lm.pack_row(rows_config(config), vocab, prefix=True)
  return lambda block, rng: row([ul2.decoder_example(block, rng, p, vocab)])


OBJECTIVE = objectives.register(objectives.Objective(
    name="decoder_span_corruption",
    config=DecoderSpanCorruptionConfig,
    families=("llama", "mpt"),
    task=lambda config: tasks.DecoderLMTask(rows_config(config), prefix=True),
    block_length=block_length,
    make_example=make_example,
    pack_row=functools.partial(causal_lm.pack_row, prefix=True),
    packing_refused="each row is one span-corrupted block; documents are concatenated as for "
                    "span corruption (T5's reduce_concat_tokens)",
    separated_blocks=False,
    special_roles=("eos",),
))
