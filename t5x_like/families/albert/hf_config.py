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
  hfc.require_absolute_positions(hf)
  if hf.get("classifier_dropout_prob") not in (None, 0.1):
    notes.append("classifier_dropout_prob is ignored (the SOP head has no dropout here)")
  return AlbertConfig(embedding_size=hfc.integer(hf, "embedding_size", 128),
                      **hfc.encoder_fields(hf, _HF_ACTIVATIONS, vocab_size=30000,
                                           hidden_size=4096, num_heads=64,
                                           intermediate_size=16384, hidden_act="gelu_new",
                                           dropout=0.0))
