"""Model families. `build(model_config)` returns the Flax module for a config."""

from __future__ import annotations

import dataclasses

from flax import linen as nn

from t5x_like.config import ModelConfig
from t5x_like.models import bert

FAMILIES = ("bert",)


def bert_config(cfg: ModelConfig) -> bert.BertConfig:
  """The model-level config: the run config's model section, minus `family`."""
  names = [f.name for f in dataclasses.fields(bert.BertConfig)]
  return bert.BertConfig(**{name: getattr(cfg, name) for name in names})


def build(cfg: ModelConfig) -> nn.Module:
  if cfg.family == "bert":
    return bert.BertForMaskedLM(bert_config(cfg))
  raise ValueError(f"model.family {cfg.family!r} is not one of {FAMILIES}")


def features(cfg: ModelConfig) -> tuple[str, ...]:
  """The batch features the family consumes."""
  return {"bert": bert.FEATURES}[cfg.family]
