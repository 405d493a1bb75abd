"""config.json of a HuggingFace bert checkpoint -> our module config (the inverse of the
exporter's `hf_config_dict`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_like import hf_config as hfc
from t5x_like.families.bert import export as bert_export
from t5x_like.families.bert.model import BertConfig


def config_from_hf(hf: Mapping[str, Any], notes: list[str]) -> Any:
  hfc.require_absolute_positions(hf)
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise hfc.HFImportError("config.json: a BERT decoder (is_decoder / add_cross_attention) is "
                            "not supported; ours is an encoder")
  return BertConfig(**hfc.encoder_fields(
      hf, bert_export._HF_ACTIVATIONS, vocab_size=30522, hidden_size=768, num_heads=12,
      intermediate_size=3072, hidden_act="gelu", dropout=0.1))
