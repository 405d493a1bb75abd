"""XLNet's training FLOPs per step: the two-stream forward pass, query stream on the targets."""

from __future__ import annotations

import math
from typing import Any


def forward_flops(batch: int, length: int, predict: int, hidden: int, ffn: int,
                        layers: int, vocab: int, mem_len: int = 0, bi_data: bool = False
                        ) -> float:
  """Matmul FLOPs of XLNet's two-stream forward pass (attn_type "bi").

  Per layer: the content stream as an encoder (q, o, FFN on its L rows; k and v on the
  M + L rows of memory and tokens; content and position scores over K = M + L keys /
  R = M + 2L distances, context) except in the last layer, where only its k and v feed the
  query stream; the query stream on its P rows (q, o, FFN, scores, context); the r projection
  of the R sinusoids once per layer (shared by the batch; twice with bi_data, one per
  direction). The tied head runs on the P targets only.
  """
  d = hidden
  keys, dists = mem_len + length, mem_len + 2 * length
  attend = 2 * 2 * keys * d + 2 * 2 * dists * d  # content/context + position scores
  content = length * (2 * (2 * d * d + 2 * d * ffn) + attend) + keys * 2 * 2 * d * d
  content_last = keys * 2 * 2 * d * d  # k and v only
  query = predict * (2 * (2 * d * d + 2 * d * ffn) + attend)
  per_row = (layers - 1) * content + content_last + layers * query + 2 * d * vocab * predict
  directions = 2 if bi_data else 1
  return float(batch * per_row + directions * layers * 2 * dists * d * d)


def train_flops_per_step(config: Any) -> float:
  """Training FLOPs of one optimizer step of XLNet (3x forward); P as the objective's
  (`permutation_lm.num_predict_for`: L/6 rounded half up unless set)."""
  m, d = config.model, config.data
  predict = config.objective.num_predict or math.floor(d.seq_len / 6 + 0.5)
  return 3.0 * forward_flops(config.train.batch_size, d.seq_len, predict, m.hidden_size,
                                   m.intermediate_size, m.num_layers, m.vocab_size,
                                   m.mem_len, m.bi_data)
