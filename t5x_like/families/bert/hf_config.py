"""config.json of a HuggingFace bert checkpoint -> our module config (the inverse of the
exporter's `hf_config_dict`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_like import hf_config as hfc
from t5x_like.families.bert import export as bert_export
from t5x_like.families.bert.model import BertConfig


def config_from_hf(hf: Mapping[str, Any], notes: list[str]) -> Any:
  if hfc.get(hf, "position_embedding_type", "absolute") != "absolute":
    raise hfc.HFImportError(f"config.json: position_embedding_type "
                            f"{hf['position_embedding_type']!r} is not supported (ours: absolute)")
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise hfc.HFImportError("config.json: a BERT decoder (is_decoder / add_cross_attention) is "
                            "not supported; ours is an encoder")
  return BertConfig(
      vocab_size=hfc.integer(hf, "vocab_size", 30522),
      hidden_size=hfc.integer(hf, "hidden_size", 768),
      num_layers=hfc.integer(hf, "num_hidden_layers", 12),
      num_heads=hfc.integer(hf, "num_attention_heads", 12),
      intermediate_size=hfc.integer(hf, "intermediate_size", 3072),
      max_position_embeddings=hfc.integer(hf, "max_position_embeddings", 512),
      type_vocab_size=hfc.integer(hf, "type_vocab_size", 2),
      hidden_act=hfc.activation("hidden_act", hfc.get(hf, "hidden_act", "gelu"),
                                bert_export._HF_ACTIVATIONS),
      layer_norm_eps=float(hfc.get(hf, "layer_norm_eps", 1e-12)),
      dropout_rate=float(hfc.get(hf, "hidden_dropout_prob", 0.1)),
      attention_dropout_rate=float(hfc.get(hf, "attention_probs_dropout_prob", 0.1)),
      initializer_range=float(hfc.get(hf, "initializer_range", 0.02)))
