"""Model families. `build(model_config)` returns the Flax module for a config."""

from __future__ import annotations

from flax import linen as nn

from t5x_like.config import ModelConfig
from t5x_like.models import bert

FAMILIES = ("bert",)


def bert_config(cfg: ModelConfig) -> bert.BertConfig:
  return bert.BertConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
      num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
      max_position_embeddings=cfg.max_position_embeddings,
      type_vocab_size=cfg.type_vocab_size, hidden_act=cfg.hidden_act,
      layer_norm_eps=cfg.layer_norm_eps, dropout_rate=cfg.dropout_rate,
      attention_dropout_rate=cfg.attention_dropout_rate,
      initializer_range=cfg.initializer_range, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      remat=cfg.remat, scan_layers=cfg.scan_layers)


def build(cfg: ModelConfig) -> nn.Module:
  if cfg.family == "bert":
    return bert.BertForMaskedLM(bert_config(cfg))
  raise ValueError(f"model.family {cfg.family!r} is not one of {FAMILIES}")


def features(cfg: ModelConfig) -> tuple[str, ...]:
  """The batch features the family consumes."""
  return {"bert": bert.FEATURES}[cfg.family]
