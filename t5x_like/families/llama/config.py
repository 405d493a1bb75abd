"""Llama's `model` section: the keys every family has, plus grouped-query attention, head size,
RoPE and head tying (names as `transformers.LlamaConfig` where they are ours too).

Two shared keys change meaning and default here: `layer_norm_eps` is HF's `rms_norm_eps`
(default 1e-6, as HF's) and `dropout_rate` is HF's `attention_dropout` (default 0: Llama has
no other dropout). `max_position_embeddings` is only written to the export: RoPE has no
position table, so `data.seq_len` may exceed it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from t5x_like.config_schema import SHAPE, ModelConfig, choices
from t5x_like.config_validation import at_least, heads_divide, require


@dataclasses.dataclass(frozen=True)
class LlamaModelConfig(ModelConfig):
  hidden_act: str = dataclasses.field(default="silu", metadata=choices("silu", "gelu",
                                                                       "gelu_new", "relu"))
  layer_norm_eps: float = 1e-6  # HF rms_norm_eps
  dropout_rate: float = 0.0  # HF attention_dropout
  num_kv_heads: int = dataclasses.field(default=0, metadata=SHAPE)  # 0 = num_heads
  head_dim: int = dataclasses.field(default=0, metadata=SHAPE)  # 0 = hidden_size / num_heads
  rope_theta: float = 10000.0
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = dataclasses.field(default=False, metadata=SHAPE)
  initializer_range: float = 0.02

  def check(self, config: Any) -> None:
    at_least(self, "model", ("num_kv_heads", "head_dim"), 0, "(0 = default)")
    at_least(self, "model", ("max_position_embeddings",), 1)
    if not self.head_dim:
      heads_divide(self)
    kv_heads = self.num_kv_heads or self.num_heads
    require(self.num_heads % kv_heads == 0,
            f"model.num_heads ({self.num_heads}) must be divisible by model.num_kv_heads "
            f"({kv_heads}): each key/value head serves a whole group of query heads")
    # k_proj / v_proj split their kv heads over the tensor axis as the query heads (logical
    # axis `heads`): an uneven split is an XLA error at init, so say it here.
    tensor = config.mesh.tensor * config.mesh.dcn_tensor
    require(config.mesh.tensor == -1 or kv_heads % tensor == 0,
            f"model.num_kv_heads ({kv_heads}) must be divisible by mesh.tensor x "
            f"mesh.dcn_tensor ({tensor}): the key/value heads are split over it")
    head_dim = self.head_dim or self.hidden_size // self.num_heads
    require(head_dim % 2 == 0, f"the head size ({head_dim}, model.head_dim or "
            "model.hidden_size / model.num_heads) must be even: RoPE rotates pairs")
    require(self.rope_theta > 0, f"model.rope_theta must be > 0, got {self.rope_theta}")
    require(self.layer_norm_eps > 0,
            f"model.layer_norm_eps (HF rms_norm_eps) must be > 0, got {self.layer_norm_eps}")
    require(self.initializer_range >= 0,
            f"model.initializer_range must be >= 0, got {self.initializer_range}")
