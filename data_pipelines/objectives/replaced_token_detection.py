"""ELECTRA's masking for replaced-token detection, as pure NumPy.

The generator is an MLM over these rows; the discriminator then reads the row with the
generator's samples at the selected positions (done on device, `t5x_like.objectives`).
Follows google-research/electra's `mask` (semantics only):

- count: K = max(1, round(mask_prob * n)) (half to even, as tf.round) with n the row's
  non-pad tokens ([CLS] and [SEP] included), clipped to `max_predictions` and to the number
  of candidates;
- candidates: every non-special token of the block (never [CLS]/[SEP]/pad/EOS/sentinels);
  K of them uniform without replacement;
- of the selected, `mask_token_frac` (0.85) become [MASK] and the rest stay unchanged; no
  random replacement (the generator provides the replacements).

Semantics, deviations and the tests that pin them: docs/objectives.md, "ELECTRA
replaced-token detection".
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.objectives.mlm import vocab_tables
from data_pipelines.vocab import IGNORE_INDEX, VocabInfo


@dataclasses.dataclass(frozen=True, kw_only=True)
class RTDParams:
  """max_predictions: the static number of positions the generator scores per row."""
  max_predictions: int
  mask_prob: float = 0.15
  mask_token_frac: float = 0.85

  def __post_init__(self):
    if not 0.0 < self.mask_prob < 1.0:
      raise ValueError(f"RTDParams.mask_prob must be in (0, 1), got {self.mask_prob}")
    if not 0.0 <= self.mask_token_frac <= 1.0:
      raise ValueError(f"RTDParams.mask_token_frac must be in [0, 1], got {self.mask_token_frac}")
    if self.max_predictions < 1:
      raise ValueError(f"RTDParams.max_predictions must be >= 1, got {self.max_predictions}")


def tf_round(x: float) -> int:
  """tf.round: half to even, as Python's round."""
  return round(x)


def default_max_predictions(seq_len: int, mask_prob: float) -> int:
  """The most positions a row of `seq_len` tokens selects: never clipped."""
  return max(1, min(tf_round(mask_prob * seq_len), seq_len - 2))


def make_example(block: np.ndarray, rng: np.random.Generator, params: RTDParams,
                 vocab: VocabInfo) -> dict[str, np.ndarray]:
  """Selects and masks one block of L - 2 tokens, framed as `[CLS] block [SEP]`.

  The generator is consumed in a fixed order: the selection shuffle, then one draw per
  selected position (mask or keep).

  Returns:
    int32 [L] `input_ids` (masked), `attention_mask`, `token_type_ids` (zeros), `labels`
    (the original id at the selected positions, -100 elsewhere: the positions the
    generator predicts and the only ones the discriminator may find replaced), and the
    scalar `dropped_by_objective` (selections `max_predictions` cut).
  """
  tables = vocab_tables(vocab)
  block = np.asarray(block)
  if block.ndim != 1 or block.dtype.kind not in "iu":
    raise ValueError(f"block must be a 1-D integer array, got {block.dtype} {block.shape}")
  cand_pos = np.flatnonzero(tables.is_candidate.take(block))
  tokens = int(np.count_nonzero(block != vocab.pad_id)) + 2
  want = min(max(1, tf_round(params.mask_prob * tokens)), cand_pos.size)
  num = min(want, params.max_predictions)
  rng.shuffle(cand_pos)
  pos = np.sort(cand_pos[:num]) + 1  # block position -> row position (after [CLS])
  keep = rng.random(num) >= params.mask_token_frac

  seq_len = block.shape[0] + 2
  input_ids = np.empty(seq_len, np.int32)
  input_ids[0] = vocab.cls_id
  input_ids[1:-1] = block
  input_ids[-1] = vocab.sep_id
  labels = np.full(seq_len, IGNORE_INDEX, np.int32)
  labels[pos] = input_ids[pos]
  input_ids[pos] = np.where(keep, input_ids[pos], vocab.mask_id)
  return {
      "input_ids": input_ids,
      "attention_mask": (input_ids != vocab.pad_id).astype(np.int32),
      "token_type_ids": np.zeros(seq_len, np.int32),
      "labels": labels,
      "dropped_by_objective": np.int32(want - num),
  }
