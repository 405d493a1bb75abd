"""Causal language modelling (GPT / Llama / MPT) as a registered objective; the prefix-LM
record (`t5x_like.objectives.prefix_lm`) is built from the same pieces."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from data_pipelines import packing
from data_pipelines.objectives import causal_lm
from t5x_like import objectives
from t5x_like.config import ConfigError
from t5x_like.config_schema import ObjectiveConfig
from t5x_like.config_validation import require
from t5x_like.training import tasks


@dataclasses.dataclass(frozen=True)
class CausalLMConfig(ObjectiveConfig):
  """Next-token prediction. With data.pack_documents each document chunk is `[BOS] chunk EOS`
  in its own segment (no attention or loss across documents); without, rows are L + 1-token
  blocks of the EOS-separated corpus (docs/objectives.md)."""
  # Documents start with BOS (Llama's convention; GPT-2 and MPT use none).
  add_bos: bool = False

  def check(self, config: Any) -> None:
    require(not self.add_bos or config.data.pack_documents,
            "objective.add_bos needs data.pack_documents=true: BOS starts each packed "
            "document; the blocks of the concatenated corpus have only EOS between documents")


def params(config: Any, prefix: bool = False) -> causal_lm.CausalLMParams:
  return causal_lm.CausalLMParams(add_bos=config.objective.add_bos, prefix=prefix)


def block_length(config: Any) -> int:
  """Raw tokens per prepared block: L + 1 (blocks mode), or the longest document chunk whose
  example fills a row (documents mode)."""
  d = config.data
  if d.pack_documents:
    return d.seq_len - int(config.objective.add_bos)
  return d.seq_len + 1


def make_example(config: Any, vocab: Any, reverse: bool = False, prefix: bool = False
                 ) -> objectives.MakeExample:
  p = params(config, prefix)
  if config.data.pack_documents:
    return lambda chunk, rng: causal_lm.make_example(causal_lm.sequence(chunk, p, vocab), rng, p)
  return lambda block, rng: causal_lm.make_example(block, rng, p)


def pack_spec(config: Any, key: str) -> packing.PackSpec:
  p = params(config)
  return packing.PackSpec(key=f"{key}(add_bos={p.add_bos})",
                          lengths=lambda r: (causal_lm.example_length(r, p),),
                          capacity=(config.data.seq_len,))


def pack_row(config: Any, vocab: Any, prefix: bool = False):
  features = ("input_ids", "labels") + (("prefix",) if prefix else ())
  lengths = dict.fromkeys(features, config.data.seq_len)
  pad = {"input_ids": vocab.pad_id}
  return lambda examples: packing.pack_one(examples, lengths, pad_values=pad)


def check_bos(config: Any, tokenizer: Any) -> None:
  if config.objective.add_bos and tokenizer.missing_roles(("bos",)):
    raise ConfigError(f"objective.add_bos: tokenizer {tokenizer.model_path} has no BOS token")


OBJECTIVE = objectives.register(objectives.Objective(
    name="causal_lm",
    config=CausalLMConfig,
    families=("llama", "mpt"),
    task=tasks.DecoderLMTask,
    block_length=block_length,
    make_example=make_example,
    pack_spec=functools.partial(pack_spec, key="causal_lm"),
    pack_row=pack_row,
    separated_blocks=True,  # GPT-2 / MPT: EOS between the concatenated documents
    special_roles=("eos",),
    check=check_bos,
))
