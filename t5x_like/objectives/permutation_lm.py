"""XLNet permutation LM (original semantics) as a registered objective."""

from __future__ import annotations

from typing import Any

from data_pipelines.objectives import permutation_lm
from t5x_like import objectives
from t5x_like.training import tasks


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
))
