"""BERT's training FLOPs per step: the encoder plus the gather-first MLM head."""

from __future__ import annotations

from typing import Any

from t5x_like.flops import encoder_forward_flops


def train_flops_per_step(config: Any) -> float:
  """Training FLOPs of one optimizer step of BERT MLM (gather-first head)."""
  m = config.model
  b, length = config.train.batch_size, config.data.seq_len
  forward = encoder_forward_flops(b, length, m.hidden_size, m.intermediate_size, m.num_layers)
  predicted = b * config.objective.predictions_per_row(config)
  forward += predicted * 2 * (m.hidden_size * m.hidden_size + m.hidden_size * m.vocab_size)
  return 3.0 * forward
