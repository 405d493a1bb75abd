"""ALBERT's training FLOPs per step: the shared layer applied num_layers times (FLOPs, unlike
parameters, grow with the depth), the E -> H embedding projection, the gather-first MLM head
(H -> E, then E x V tied decoder) and the sentence-order head (pooler + 2-way classifier on
[CLS])."""

from __future__ import annotations

from typing import Any

from t5x_like.flops import encoder_forward_flops


def train_flops_per_step(config: Any) -> float:
  """Training FLOPs (3x forward) of one optimizer step of ALBERT MLM + SOP."""
  m = config.model
  b, length = config.train.batch_size, config.data.seq_len
  h, e = m.hidden_size, m.embedding_size
  forward = encoder_forward_flops(b, length, h, m.intermediate_size, m.num_layers)
  forward += 2 * b * length * e * h  # embedding_hidden_mapping_in
  predicted = b * config.objective.predictions_per_row(config)
  forward += predicted * 2 * (h * e + e * m.vocab_size)
  forward += b * 2 * (h * h + 2 * h)  # pooler and SOP classifier
  return 3.0 * forward
