"""XLNet permutation LM (original semantics) as a registered objective."""

from __future__ import annotations

import dataclasses
from typing import Any

from data_pipelines.objectives import permutation_lm
from t5x_like import objectives
from t5x_like.config_schema import ObjectiveConfig
from t5x_like.config_validation import require
from t5x_like.training import tasks


@dataclasses.dataclass(frozen=True)
class PermutationLMConfig(ObjectiveConfig):
  """XLNet permutation LM (original semantics): rows `A <sep> B <sep> <cls>` of data.seq_len
  tokens; num_predict targets chosen as spans of 1..max_span tokens (p ~ 1/n) with a context of
  n * mask_alpha / mask_beta; one factorisation order per perm_size block."""
  num_predict: int = 0  # 0 = round(seq_len / 6), the paper's K = 6 (85 of 512)
  perm_size: int = 0  # 0 = seq_len; must divide seq_len
  max_span: int = 5
  mask_alpha: float = 6.0
  mask_beta: float = 1.0

  def check(self, config: Any) -> None:
    seq_len, reuse = config.data.seq_len, config.model.reuse_len
    require(0 <= self.num_predict < seq_len - 3,
            f"objective.num_predict must be in [0, data.seq_len - 3) = [0, {seq_len - 3}) "
            f"(0 = seq_len / 6), got {self.num_predict}")
    if reuse:
      require(self.perm_size >= 0 and (self.perm_size == 0 or (
          reuse % self.perm_size == 0 and (seq_len - reuse) % self.perm_size == 0)),
              f"objective.perm_size ({self.perm_size}) must divide model.reuse_len ({reuse}) "
              f"and data.seq_len - reuse_len ({seq_len - reuse}) (0 = each part one block)")
    else:
      require(self.perm_size >= 0 and (self.perm_size == 0 or seq_len % self.perm_size == 0),
              f"objective.perm_size ({self.perm_size}) must divide data.seq_len ({seq_len}) "
              f"(0 = seq_len)")
    require(self.max_span >= 1, f"objective.max_span must be >= 1, got {self.max_span}")
    require(self.mask_alpha > 0 and self.mask_beta > 0 and self.mask_alpha >= self.mask_beta,
            f"objective.mask_alpha / mask_beta must be >= 1 with both > 0, got "
            f"{self.mask_alpha} / {self.mask_beta}")


def params(config: Any) -> permutation_lm.PermutationLMParams:
  o = config.objective
  return permutation_lm.PermutationLMParams(
      num_predict=o.num_predict, perm_size=o.perm_size, max_span=o.max_span,
      mask_alpha=o.mask_alpha, mask_beta=o.mask_beta, reuse_len=config.model.reuse_len)


def _make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  """reverse: XLNet's reversed-text rows (bi_data's second half of the batch)."""
  p = params(config)
  if not config.model.reuse_len:
    return lambda block, rng: permutation_lm.make_example(block, rng, p, vocab,
                                                          reverse=reverse)
  # Memory: the stream pipeline gives two consecutive reuse_len-token blocks; a row holds
  # the text from the first (reversed rows: from the end of the second) onwards.
  text = config.data.seq_len - 3
  cut = (lambda two: two[-text:]) if reverse else (lambda two: two[:text])
  return lambda two, rng: permutation_lm.make_example(cut(two), rng, p, vocab, reverse=reverse)


OBJECTIVE = objectives.register(objectives.Objective(
    name="permutation_lm",
    config=PermutationLMConfig,
    families=("xlnet",),
    task=tasks.PermutationLMTask,
    # A <sep> B <sep> <cls>; with memory, rows are read from consecutive reuse_len blocks
    block_length=lambda config: config.model.reuse_len or config.data.seq_len - 3,
    make_example=_make_example,
    # XLNet rows are concatenated blocks, as XLNet's own pretraining data: there is no padding
    # to reclaim, and a row's A <sep> B <sep> <cls> layout and single factorisation order span
    # the whole row.
    packing_refused=("XLNet rows are full concatenated blocks (no padding to reclaim) laid "
                     "out as A <sep> B <sep> <cls>"),
    special_roles=("cls", "sep"),
    reversed_second_half=lambda config: config.model.bi_data,
    streams=lambda config: config.model.mem_len > 0,
))
