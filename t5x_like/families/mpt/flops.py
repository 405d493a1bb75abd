"""MPT's training FLOPs per step: the decoder stack over every position plus the tied LM
head over all L positions."""

from __future__ import annotations

from typing import Any

from t5x_like.flops import encoder_forward_flops


def train_flops_per_step(config: Any) -> float:
  """3x the forward matmuls: fused q/k/v and out_proj, the two-matrix MLP, scores and
  context over the full L x L (the causal half is not skipped by XLA attention), and the
  head's [D, V] product at every position."""
  m = config.model
  b, length = config.train.batch_size, config.data.seq_len
  forward = encoder_forward_flops(b, length, m.hidden_size, m.intermediate_size, m.num_layers)
  forward += 2.0 * b * length * m.hidden_size * m.vocab_size
  return 3.0 * forward
