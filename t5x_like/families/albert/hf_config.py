"""config.json of a HuggingFace albert checkpoint -> our module config (the inverse of the
exporter's `hf_config_dict`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_like import hf_config as hfc
from t5x_like.families.albert.model import AlbertConfig

_HF_ACTIVATIONS = ("gelu", "gelu_new", "relu")


def config_from_hf(hf: Mapping[str, Any], notes: list[str]) -> AlbertConfig:
  # Our module holds one layer group of one layer (the released ALBERT models' layout).
  for key in ("num_hidden_groups", "inner_group_num"):
    if hfc.integer(hf, key, 1) != 1:
      raise hfc.HFImportError(f"config.json: {key} {hf[key]} is not supported (ours: one "
                              f"group of one shared layer)")
  if hfc.get(hf, "position_embedding_type", "absolute") != "absolute":
    raise hfc.HFImportError(f"config.json: position_embedding_type "
                            f"{hf['position_embedding_type']!r} is not supported (ours: absolute)")
  if hf.get("classifier_dropout_prob") not in (None, 0.1):
    notes.append("classifier_dropout_prob is ignored (the SOP head has no dropout here)")
  return AlbertConfig(
      vocab_size=hfc.integer(hf, "vocab_size", 30000),
      embedding_size=hfc.integer(hf, "embedding_size", 128),
      hidden_size=hfc.integer(hf, "hidden_size", 4096),
      num_layers=hfc.integer(hf, "num_hidden_layers", 12),
      num_heads=hfc.integer(hf, "num_attention_heads", 64),
      intermediate_size=hfc.integer(hf, "intermediate_size", 16384),
      max_position_embeddings=hfc.integer(hf, "max_position_embeddings", 512),
      type_vocab_size=hfc.integer(hf, "type_vocab_size", 2),
      hidden_act=hfc.activation("hidden_act", hfc.get(hf, "hidden_act", "gelu_new"),
                                _HF_ACTIVATIONS),
      layer_norm_eps=float(hfc.get(hf, "layer_norm_eps", 1e-12)),
      dropout_rate=float(hfc.get(hf, "hidden_dropout_prob", 0.0)),
      attention_dropout_rate=float(hfc.get(hf, "attention_probs_dropout_prob", 0.0)),
      initializer_range=float(hfc.get(hf, "initializer_range", 0.02)))
