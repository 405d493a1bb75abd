"""T5's `model` section: the keys every family has, plus its decoder depth, head size,
relative position buckets and head tying (names as `transformers.T5Config` where they
differ from ours: d_kv is head_dim)."""

from __future__ import annotations

import dataclasses
from typing import Any

from t5x_like.config_schema import SHAPE, ModelConfig
from t5x_like.config_validation import at_least, heads_divide, require


@dataclasses.dataclass(frozen=True)
class T5ModelConfig(ModelConfig):
  num_decoder_layers: int = dataclasses.field(default=0, metadata=SHAPE)  # 0 = num_layers
  head_dim: int = dataclasses.field(default=0, metadata=SHAPE)  # d_kv; 0 = hidden / heads
  relative_attention_num_buckets: int = dataclasses.field(default=32, metadata=SHAPE)
  relative_attention_max_distance: int = 128
  initializer_factor: float = 1.0
  tie_word_embeddings: bool = dataclasses.field(default=False, metadata=SHAPE)

  def check(self, config: Any) -> None:
    at_least(self, "model", ("relative_attention_num_buckets",
                             "relative_attention_max_distance"), 1)
    at_least(self, "model", ("num_decoder_layers", "head_dim"), 0, "(0 = default)")
    if not self.head_dim:  # T5's d_kv need not divide d_model
      heads_divide(self)
    require(self.initializer_factor > 0,
            f"model.initializer_factor must be > 0, got {self.initializer_factor}")
