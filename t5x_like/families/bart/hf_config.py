"""config.json of a HuggingFace bart checkpoint -> our module config (the inverse of the
exporter's `hf_config_dict`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_like import hf_config as hfc
from t5x_like.families.bart import export as bart_export
from t5x_like.families.bart.model import BartConfig


def config_from_hf(hf: Mapping[str, Any], notes: list[str]) -> Any:
  for enc, dec, default in (("encoder_attention_heads", "decoder_attention_heads", 16),
                            ("encoder_ffn_dim", "decoder_ffn_dim", 4096)):
    if hfc.integer(hf, enc, default) != hfc.integer(hf, dec, default):
      raise hfc.HFImportError(f"config.json: {enc} ({hfc.integer(hf, enc, default)}) != "
                              f"{dec} ({hfc.integer(hf, dec, default)}); our BART uses one "
                              "value for both stacks")
  for key in ("normalize_before", "add_final_layer_norm"):
    if hf.get(key):
      raise hfc.HFImportError(f"config.json: {key}=true (a pre-LN / mBART-style stack) is not "
                              "supported; our BART is post-LN without final norms")
  if float(hfc.get(hf, "activation_dropout", 0.0)):
    notes.append(f"activation_dropout {hf['activation_dropout']} is not modelled (ours has "
                 "none); training runs without it")
  num_layers = hfc.integer(hf, "encoder_layers", 12)
  try:
    return BartConfig(
        vocab_size=hfc.integer(hf, "vocab_size", 50265),
        hidden_size=hfc.integer(hf, "d_model", 1024),
        num_layers=num_layers, num_decoder_layers=hfc.integer(hf, "decoder_layers", num_layers),
        num_heads=hfc.integer(hf, "encoder_attention_heads", 16),
        intermediate_size=hfc.integer(hf, "encoder_ffn_dim", 4096),
        max_position_embeddings=hfc.integer(hf, "max_position_embeddings", 1024),
        hidden_act=hfc.activation("activation_function", hfc.get(hf, "activation_function", "gelu"),
                                  bart_export._HF_ACTIVATIONS),
        layer_norm_eps=1e-5,  # HF BART's nn.LayerNorm default; no config field
        dropout_rate=float(hfc.get(hf, "dropout", 0.1)),
        attention_dropout_rate=float(hfc.get(hf, "attention_dropout", 0.0)),
        initializer_range=float(hfc.get(hf, "init_std", 0.02)),
        scale_embedding=bool(hfc.get(hf, "scale_embedding", False)),
        pad_token_id=1 if hf.get("pad_token_id") is None else hfc.integer(hf, "pad_token_id", 1))
  except ValueError as e:
    raise hfc.HFImportError(f"config.json: {e}") from None
