"""ELECTRA's training FLOPs per step: both towers' encoders over every token, the generator's
gather-first MLM head, the discriminator's per-token head, and the two embedding projections
(each 3x forward: the embeddings get gradients from both towers)."""

from __future__ import annotations

from typing import Any

from t5x_like.flops import encoder_forward_flops


def train_flops_per_step(config: Any) -> float:
  m = config.model
  b, length = config.train.batch_size, config.data.seq_len
  tokens = b * length
  gen_layers = m.generator_num_layers or m.num_layers
  forward = encoder_forward_flops(b, length, m.hidden_size, m.intermediate_size, m.num_layers)
  forward += encoder_forward_flops(b, length, m.generator_hidden_size,
                                   m.generator_intermediate_size, gen_layers)
  for width in (m.hidden_size, m.generator_hidden_size):
    if width != m.embedding_size:
      forward += 2 * tokens * m.embedding_size * width
  predicted = b * config.objective.predictions_per_row(config)
  forward += predicted * 2 * (m.generator_hidden_size * m.embedding_size +
                              m.embedding_size * m.vocab_size)
  forward += tokens * 2 * (m.hidden_size * m.hidden_size + m.hidden_size)
  return 3.0 * forward
