"""XLNet's `model` section: the keys every family has, plus distance clipping, bi_data and the
memory (names as `transformers.XLNetConfig`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from t5x_like.config_schema import RUN, ModelConfig
from t5x_like.config_validation import heads_divide, require


@dataclasses.dataclass(frozen=True)
class XLNetModelConfig(ModelConfig):
  initializer_range: float = 0.02
  # Relative distances clipped to [-clamp_len, clamp_len] when > 0 (-1 = no clipping).
  clamp_len: int = -1
  # bi_data: the second half of every global batch is reversed text, and the model gives it
  # negated relative distances.
  bi_data: bool = dataclasses.field(default=False, metadata=RUN)
  # Memory: mem_len cached states per layer carried from one step to the next, from the first
  # reuse_len tokens of each row; rows then come in stream order (row i of step t+1 continues
  # row i of step t). Both 0 (off) or both > 0.
  mem_len: int = dataclasses.field(default=0, metadata=RUN)
  reuse_len: int = dataclasses.field(default=0, metadata=RUN)

  def check(self, config: Any) -> None:
    heads_divide(self)
    d, t, opt = config.data, config.train, config.optim
    reuse = self.reuse_len
    require(self.mem_len >= 0 and reuse >= 0, f"model.mem_len ({self.mem_len}) and "
            f"model.reuse_len ({reuse}) must be >= 0")
    require((self.mem_len > 0) == (reuse > 0),
            f"model.mem_len ({self.mem_len}) and model.reuse_len ({reuse}) must both be 0 (no "
            f"memory) or both > 0: the memory caches the first reuse_len tokens of each row")
    # The rest of a row (A <sep> B <sep> <cls>) is cut from the next reuse_len-token block.
    require(not reuse or (2 * reuse >= d.seq_len - 3 and reuse + 5 <= d.seq_len),
            f"model.reuse_len ({reuse}) must be in [ceil((data.seq_len - 3) / 2), "
            f"data.seq_len - 5] = [{(d.seq_len - 2) // 2}, {d.seq_len - 5}]: the rest of the "
            f"row comes from the next reuse_len-token block and needs A and B")
    # Micro-batch i takes rows i, i+k, ..: its halves are the global halves iff k | B/2.
    require(not self.bi_data or (t.batch_size % 2 == 0 and
                                 (t.batch_size // 2) % opt.grad_accum_steps == 0),
            f"model.bi_data needs train.batch_size ({t.batch_size}) even with half of it "
            f"divisible by optim.grad_accum_steps ({opt.grad_accum_steps}): the second half "
            f"of every (micro-)batch is the reversed text")
