"""BART's `model` section: the keys every family has, plus its decoder depth, learned
positions and embedding options (names as `transformers.BartConfig` where they exist)."""

from __future__ import annotations

import dataclasses
from typing import Any

from t5x_like.config_schema import SHAPE, ModelConfig
from t5x_like.config_validation import (
  at_least,
  fits_positions,
  heads_divide,
  probabilities,
  require,
)


@dataclasses.dataclass(frozen=True)
class BartModelConfig(ModelConfig):
  num_decoder_layers: int = dataclasses.field(default=0, metadata=SHAPE)  # 0 = num_layers
  max_position_embeddings: int = dataclasses.field(default=512, metadata=SHAPE)
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  # Token embeddings scaled by sqrt(hidden_size) (BartConfig.scale_embedding).
  scale_embedding: bool = False
  # The padding id whose embedding row starts at zero and gets no lookup gradient (HF's
  # padding_idx); 0 for this project's tokenizers, `pretrain import` sets a checkpoint's.
  pad_token_id: int = 0

  def check(self, config: Any) -> None:
    heads_divide(self)
    at_least(self, "model", ("max_position_embeddings",), 1)
    require(self.num_decoder_layers >= 0, "model.num_decoder_layers must be >= 0 (0 = "
            f"num_layers), got {self.num_decoder_layers}")
    require(self.pad_token_id >= 0 and (self.vocab_size == 0 or
                                        self.pad_token_id < self.vocab_size),
            f"model.pad_token_id ({self.pad_token_id}) must be in [0, model.vocab_size)")
    probabilities(self, "model", ("attention_dropout_rate",))
    fits_positions(config)
