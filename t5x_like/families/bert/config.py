"""BERT's `model` section: the keys every family has, plus its position and token-type tables
(names as `transformers.BertConfig`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from t5x_like.config_schema import SHAPE, ModelConfig
from t5x_like.config_validation import at_least, fits_positions, heads_divide, probabilities


@dataclasses.dataclass(frozen=True)
class BertModelConfig(ModelConfig):
  max_position_embeddings: int = dataclasses.field(default=512, metadata=SHAPE)
  type_vocab_size: int = dataclasses.field(default=2, metadata=SHAPE)
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02

  def check(self, config: Any) -> None:
    heads_divide(self)
    at_least(self, "model", ("max_position_embeddings", "type_vocab_size"), 1)
    probabilities(self, "model", ("attention_dropout_rate",))
    fits_positions(config)
