"""config.json of a HuggingFace llama checkpoint -> our module config (the inverse of the
exporter's `hf_config_dict`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_like import hf_config as hfc
from t5x_like.families.llama import export as llama_export
from t5x_like.families.llama.model import LlamaConfig


def _rope_theta(hf: Mapping[str, Any]) -> float:
  """The default-type RoPE's theta from transformers 5's `rope_parameters` or 4.x's
  `rope_theta` / `rope_scaling`; any other rope type is refused."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if not isinstance(params, Mapping):
    raise hfc.HFImportError(f"config.json: rope_parameters must be a mapping, got {params!r}")
  if params and not {"rope_type", "type", "rope_theta"} & set(params):
    # e.g. a mapping per attention type (sliding / full): not Llama's.
    raise hfc.HFImportError(f"config.json: rope_parameters {dict(params)!r} is not supported")
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type != "default":
    raise hfc.HFImportError(f"config.json: rope type {rope_type!r} is not supported (ours: "
                            "default RoPE, no scaling)")
  return float(params.get("rope_theta", hfc.get(hf, "rope_theta", 10000.0)))


def config_from_hf(hf: Mapping[str, Any], notes: list[str]) -> Any:
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key):
      raise hfc.HFImportError(f"config.json: {key} is true; our Llama has no biases")
  if hfc.integer(hf, "pretraining_tp", 1) != 1:
    notes.append(f"pretraining_tp {hf['pretraining_tp']} ignored (transformers 5 ignores it "
                 "too: the projections are used whole)")
  hidden = hfc.integer(hf, "hidden_size", 4096)
  heads = hfc.integer(hf, "num_attention_heads", 32)
  head_dim = hfc.integer(hf, "head_dim", 0)
  kv_heads = hfc.integer(hf, "num_key_value_heads", heads)
  return LlamaConfig(
      vocab_size=hfc.integer(hf, "vocab_size", 32000),
      hidden_size=hidden,
      num_layers=hfc.integer(hf, "num_hidden_layers", 32),
      num_heads=heads,
      # The defaults stay 0 in our config (kv = heads, head_dim = hidden / heads).
      num_kv_heads=0 if kv_heads == heads else kv_heads,
      head_dim=0 if head_dim == hidden // heads else head_dim,
      intermediate_size=hfc.integer(hf, "intermediate_size", 11008),
      hidden_act=hfc.activation("hidden_act", hfc.get(hf, "hidden_act", "silu"),
                                llama_export.HF_ACTIVATIONS),
      layer_norm_eps=float(hfc.get(hf, "rms_norm_eps", 1e-6)),
      rope_theta=_rope_theta(hf),
      max_position_embeddings=hfc.integer(hf, "max_position_embeddings", 2048),
      tie_word_embeddings=bool(hfc.get(hf, "tie_word_embeddings", False)),
      initializer_range=float(hfc.get(hf, "initializer_range", 0.02)),
      dropout_rate=float(hfc.get(hf, "attention_dropout", 0.0)))
