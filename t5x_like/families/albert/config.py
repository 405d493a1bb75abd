"""ALBERT's `model` section: the keys every family has (the shared layer's sizes), plus the
embedding width E of the factorised embeddings and the position and token-type tables (names
as `transformers.AlbertConfig`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from t5x_like.config_schema import SHAPE, ModelConfig, choices
from t5x_like.config_validation import at_least, fits_positions, heads_divide, probabilities


@dataclasses.dataclass(frozen=True)
class AlbertModelConfig(ModelConfig):
  """`num_layers` is how many times the one shared layer is applied (the parameter count does
  not depend on it); `embedding_size` is E (128 in the paper), mapped to `hidden_size` once."""
  hidden_act: str = dataclasses.field(default="gelu_new",
                                      metadata=choices("gelu", "gelu_new", "relu"))
  embedding_size: int = dataclasses.field(default=128, metadata=SHAPE)
  max_position_embeddings: int = dataclasses.field(default=512, metadata=SHAPE)
  type_vocab_size: int = dataclasses.field(default=2, metadata=SHAPE)
  attention_dropout_rate: float = 0.0
  initializer_range: float = 0.02

  def check(self, config: Any) -> None:
    heads_divide(self)
    at_least(self, "model", ("embedding_size", "max_position_embeddings", "type_vocab_size"), 1)
    probabilities(self, "model", ("attention_dropout_rate",))
    fits_positions(config)
