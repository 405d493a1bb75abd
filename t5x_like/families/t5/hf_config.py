"""config.json of a HuggingFace t5 checkpoint -> our module config (the inverse of the
exporter's `hf_config_dict`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_like import hf_config as hfc
from t5x_like.families.t5 import export as t5_export
from t5x_like.families.t5.model import T5Config


def config_from_hf(hf: Mapping[str, Any], notes: list[str]) -> Any:
  proj = hfc.get(hf, "feed_forward_proj", "relu")
  from_hf = {v: k for k, v in t5_export._HF_FEED_FORWARD.items()}
  if proj not in from_hf:
    if not str(proj).startswith("gated-"):
      raise hfc.HFImportError(
          f"config.json: feed_forward_proj {proj!r} is the original T5's non-gated FFN "
          f"(one wi); our T5 is v1.1 with a gated FFN (wi_0, wi_1) and cannot hold it. Use "
          f"a T5 v1.1 / flan-t5 checkpoint (feed_forward_proj one of {sorted(from_hf)})")
    raise hfc.HFImportError(f"config.json: feed_forward_proj {proj!r} is not supported (one of "
                            f"{sorted(from_hf)})")
  # Ours: tie_word_embeddings = a head tied to `shared` AND the decoder output scaled by
  # d_model**-0.5. transformers 5 always ties in memory and keeps the scaling apart as
  # `scale_decoder_outputs` (an untied v1.1 config saves tie_word_embeddings true with
  # scale_decoder_outputs false, and lm_head.weight only when it differs from shared);
  # transformers 4 configs have only tie_word_embeddings, which meant both.
  scale = hfc.get(hf, "scale_decoder_outputs", hfc.get(hf, "tie_word_embeddings", True))
  num_layers = hfc.integer(hf, "num_layers", 6)
  return T5Config(
      vocab_size=hfc.integer(hf, "vocab_size", 32128), hidden_size=hfc.integer(hf, "d_model", 512),
      num_layers=num_layers, num_decoder_layers=hfc.integer(hf, "num_decoder_layers", num_layers),
      num_heads=hfc.integer(hf, "num_heads", 8), head_dim=hfc.integer(hf, "d_kv", 64),
      intermediate_size=hfc.integer(hf, "d_ff", 2048),
      relative_attention_num_buckets=hfc.integer(hf, "relative_attention_num_buckets", 32),
      relative_attention_max_distance=hfc.integer(hf, "relative_attention_max_distance", 128),
      hidden_act=from_hf[proj], layer_norm_eps=float(hfc.get(hf, "layer_norm_epsilon", 1e-6)),
      dropout_rate=float(hfc.get(hf, "dropout_rate", 0.1)),
      initializer_factor=float(hfc.get(hf, "initializer_factor", 1.0)),
      tie_word_embeddings=bool(scale))
