"""Llama's training FLOPs per step: a decoder-only stack with grouped-query attention, a
SwiGLU MLP and an LM head over every position."""

from __future__ import annotations

from typing import Any


def forward_flops(batch: int, length: int, hidden: int, heads: int, kv_heads: int,
                  head_dim: int, ffn: int, layers: int, vocab: int) -> float:
  """Matmul FLOPs of one forward pass over [batch, length] tokens.

  Per token and layer: q and o (hidden x heads*head_dim each), k and v (hidden x
  kv_heads*head_dim each), three MLP matrices, and the attention scores and context over all
  `length` keys: the full L x L square, as XLA computes it (the causal mask discards half of
  it, but the work is done). The head scores every position.
  """
  projections = 2 * hidden * head_dim * (2 * heads + 2 * kv_heads) + 2 * 3 * hidden * ffn
  attention = 2 * 2 * length * heads * head_dim
  head = 2 * hidden * vocab
  return float(batch * length * (layers * (projections + attention) + head))


def train_flops_per_step(config: Any) -> float:
  """Training FLOPs of one optimizer step (3x the forward: backward = 2x forward)."""
  m = config.model
  return 3.0 * forward_flops(config.train.batch_size, config.data.seq_len, m.hidden_size,
                             m.num_heads, m.num_kv_heads or m.num_heads,
                             m.head_dim or m.hidden_size // m.num_heads, m.intermediate_size,
                             m.num_layers, m.vocab_size)
