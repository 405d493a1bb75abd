"""MPT's `model` section: the keys every family has (with MPT's LayerNorm epsilon and no
dropout by default), plus its initialiser scale and ALiBi settings (names as
`transformers.MptConfig` where they exist). No bound on data.seq_len: ALiBi has no position
table, so rows may be longer than max_seq_len."""

from __future__ import annotations

import dataclasses
from typing import Any

from t5x_like.config_schema import ModelConfig
from t5x_like.config_validation import at_least, heads_divide, require


@dataclasses.dataclass(frozen=True)
class MptModelConfig(ModelConfig):
  layer_norm_eps: float = 1e-5
  dropout_rate: float = 0.0
  initializer_range: float = 0.02
  # Head h's ALiBi slope is 2^(-alibi_bias_max * k_h / n) (MPT: 8, as in the ALiBi paper).
  alibi_bias_max: int = 8
  # HF's max_seq_len, written to config.json and the tokenizer's model_max_length.
  max_seq_len: int = 2048

  def check(self, config: Any) -> None:
    heads_divide(self)
    at_least(self, "model", ("alibi_bias_max", "max_seq_len"), 1)
    require(self.initializer_range > 0,
            f"model.initializer_range must be > 0, got {self.initializer_range}")
    require(self.layer_norm_eps > 0,
            f"model.layer_norm_eps must be > 0, got {self.layer_norm_eps}")
