"""Model families. `build(model_config)` returns the Flax module for a config."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from flax import linen as nn

from t5x_like.config import ModelConfig
from t5x_like.models import bart, bert, t5, xlnet

FAMILIES = ("bert", "t5", "bart", "xlnet")
_MODULES = {"bert": bert, "t5": t5, "bart": bart, "xlnet": xlnet}
# Families whose rows always carry segment ids and positions: BART's sources have random
# lengths, so even one block per row is a packed row (one segment, padded tail).
_ALWAYS_PACKED = ("bart",)


def _copy_fields(cls: type, cfg: ModelConfig) -> Any:
  """The model-level config: the run config's model fields that `cls` declares."""
  names = [f.name for f in dataclasses.fields(cls)]
  return cls(**{name: getattr(cfg, name) for name in names})


def bert_config(cfg: ModelConfig) -> bert.BertConfig:
  return _copy_fields(bert.BertConfig, cfg)


_SAID: set[str] = set()


def _xla_attention_only(cfg: ModelConfig, why: str) -> None:
  """The splash switch on a family that cannot use it: said once per process."""
  if cfg.attention_kernel != "xla" and cfg.family not in _SAID:
    _SAID.add(cfg.family)
    logging.getLogger(__name__).warning(
        "model.attention_kernel=%s: %s uses XLA attention (%s)", cfg.attention_kernel,
        cfg.family, why)


def t5_config(cfg: ModelConfig) -> t5.T5Config:
  _xla_attention_only(cfg, "its relative position bias is added to the attention logits, "
                      "which the splash kernel cannot take")
  return _copy_fields(t5.T5Config, cfg)


def bart_config(cfg: ModelConfig) -> bart.BartConfig:
  return _copy_fields(bart.BartConfig, cfg)


def xlnet_config(cfg: ModelConfig) -> xlnet.XLNetConfig:
  """XLNet's fields from the run config (bi_data and memory included); attention stays
  bidirectional and the r-biases untied (transformers' model unties them whatever untie_r
  says)."""
  _xla_attention_only(cfg, "its relative attention adds position terms to the logits, "
                      "which the splash kernel cannot take")
  names = [f.name for f in dataclasses.fields(xlnet.XLNetConfig)
           if f.name not in ("untie_r", "attn_type")]
  return xlnet.XLNetConfig(**{name: getattr(cfg, name) for name in names})


def build(cfg: ModelConfig) -> nn.Module:
  if cfg.family == "bert":
    return bert.BertForMaskedLM(bert_config(cfg))
  if cfg.family == "t5":
    return t5.T5ForConditionalGeneration(t5_config(cfg))
  if cfg.family == "bart":
    return bart.BartForConditionalGeneration(bart_config(cfg))
  if cfg.family == "xlnet":
    return xlnet.XLNetLMHeadModel(xlnet_config(cfg))
  raise ValueError(f"model.family {cfg.family!r} is not one of {FAMILIES}")


def features(cfg: ModelConfig, packed: bool = False) -> tuple[str, ...]:
  """The batch features the family consumes (plus segment ids / positions when packed)."""
  module = _MODULES[cfg.family]
  if cfg.family == "xlnet":
    return module.FEATURES  # rows are never packed (config.validate)
  packed = packed or cfg.family in _ALWAYS_PACKED
  return module.FEATURES + (module.PACKED_FEATURES if packed else ())


def is_encoder_decoder(cfg: ModelConfig) -> bool:
  return cfg.family in ("t5", "bart")
