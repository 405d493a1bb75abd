"""ELECTRA's `model` section: the discriminator's sizes in the keys every family has, the
shared embedding width, and the generator's own sizes (names as `transformers.ElectraConfig`
where HF has them)."""

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
class ElectraModelConfig(ModelConfig):
  """hidden_size / num_layers / num_heads / intermediate_size are the discriminator's; the
  generator (the paper's "small generator", ~1/4 of the discriminator's width) has its own.
  Both read the same embeddings of width `embedding_size` (each projects them to its width)."""
  hidden_size: int = dataclasses.field(default=256, metadata=SHAPE)
  num_heads: int = dataclasses.field(default=4, metadata=SHAPE)
  intermediate_size: int = dataclasses.field(default=1024, metadata=SHAPE)
  embedding_size: int = dataclasses.field(default=128, metadata=SHAPE)
  generator_hidden_size: int = dataclasses.field(default=64, metadata=SHAPE)
  generator_num_heads: int = dataclasses.field(default=1, metadata=SHAPE)
  generator_intermediate_size: int = dataclasses.field(default=256, metadata=SHAPE)
  generator_num_layers: int = dataclasses.field(default=0, metadata=SHAPE)  # 0 = num_layers
  max_position_embeddings: int = dataclasses.field(default=512, metadata=SHAPE)
  type_vocab_size: int = dataclasses.field(default=2, metadata=SHAPE)
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02

  def check(self, config: Any) -> None:
    heads_divide(self)
    at_least(self, "model", ("embedding_size", "generator_hidden_size", "generator_num_heads",
                             "generator_intermediate_size", "max_position_embeddings",
                             "type_vocab_size"), 1)
    at_least(self, "model", ("generator_num_layers",), 0, "(0 = model.num_layers)")
    require(self.generator_hidden_size % self.generator_num_heads == 0,
            f"model.generator_hidden_size ({self.generator_hidden_size}) must be divisible by "
            f"model.generator_num_heads ({self.generator_num_heads})")
    probabilities(self, "model", ("attention_dropout_rate",))
    fits_positions(config)
