"""UniLM (v1) rows: one BERT encoder, a per-row self-attention mode and the cloze objective,
as pure NumPy.

Each row draws one mode from its generator (seeded from (seed, epoch, index) by the
pipeline) by the configured rates; the attention mask itself is built on device from the
row's compact encoding (`unilm_mode`, `source_length`, `attention_mask`), see
`t5x_like/objectives/unilm.py`:

- bidirectional (0) and seq2seq (3) rows are segment pairs `[CLS] A [SEP] B [SEP]` (token
  types 0 on `[CLS] A [SEP]`, 1 on `B [SEP]`), split at a uniform point of the block;
  `source_length` = |A| + 2 (the source is `[CLS] A [SEP]`);
- left-to-right (1) and right-to-left (2) rows are one segment `[CLS] block [SEP]`.

Masking is BERT's cloze over the row's non-special tokens (never [CLS]/[SEP]/pad/EOS): a
count by probabilistic rounding of mask_prob x candidates, positions uniform without
replacement, 80% [MASK] / 10% random non-special id / 10% unchanged. In seq2seq rows the
candidates are both segments (the paper's pretraining) or, with `mask_source` off, the
target segment only (microsoft/unilm `seq2seq_loader.py`'s fine-tuning default).

Semantics, sources, deviations and the tests that pin them: docs/objectives.md, "UniLM".
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_pipelines.objectives.mlm import vocab_tables
from data_pipelines.vocab import IGNORE_INDEX, VocabInfo

MODES = ("bidirectional", "left_to_right", "right_to_left", "seq2seq")
BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT, SEQ2SEQ = range(len(MODES))
PAIR_MODES = (BIDIRECTIONAL, SEQ2SEQ)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnilmParams:
  """rates: weights of MODES (>= 0, not all zero; normalised). max_predictions: the static
  number of positions the MLM head scores per row."""
  max_predictions: int
  rates: tuple[float, ...] = (1 / 3, 1 / 6, 1 / 6, 1 / 3)
  mask_prob: float = 0.15
  mask_token_frac: float = 0.8
  random_token_frac: float = 0.1
  mask_source: bool = True

  def __post_init__(self):
    r = np.asarray(self.rates, np.float64)
    if r.shape != (len(MODES),) or not np.all(np.isfinite(r) & (r >= 0)) or r.sum() <= 0:
      raise ValueError(f"UnilmParams.rates must be {len(MODES)} finite weights >= 0, not all "
                       f"zero, got {self.rates}")
    if not 0.0 < self.mask_prob < 1.0:
      raise ValueError(f"UnilmParams.mask_prob must be in (0, 1), got {self.mask_prob}")
    if (self.mask_token_frac < 0 or self.random_token_frac < 0
        or self.mask_token_frac + self.random_token_frac > 1.0):
      raise ValueError("UnilmParams.mask_token_frac and random_token_frac must be >= 0 and sum "
                       f"to <= 1, got {self.mask_token_frac} + {self.random_token_frac}")
    if self.max_predictions < 1:
      raise ValueError(f"UnilmParams.max_predictions must be >= 1, got {self.max_predictions}")

  @property
  def cumulative(self) -> np.ndarray:
    r = np.asarray(self.rates, np.float64)
    return np.cumsum(r / r.sum())


def default_max_predictions(seq_len: int, mask_prob: float) -> int:
  """The most positions a row of `seq_len` selects: ceil(mask_prob x candidates) with at
  most seq_len - 2 candidates; never clipped."""
  body = max(seq_len - 2, 0)
  return max(1, min(math.ceil(mask_prob * body), body))


def draw_mode(rng: np.random.Generator, cumulative: np.ndarray) -> int:
  """One uniform -> the first mode whose cumulative rate exceeds it (a zero rate is never
  drawn)."""
  u = rng.random()
  return min(int(np.searchsorted(cumulative, u, side="right")), len(cumulative) - 1)


def _frame(block: np.ndarray, mode: int, rng: np.random.Generator, vocab: VocabInfo
           ) -> tuple[np.ndarray, np.ndarray, int, int]:
  """(input_ids [L], token_type_ids [L], source_length, first position of the target).

  The block's real tokens are its non-pad ids (pad only trails). Pair rows have room for
  L - 3 of them (the last one of a full block is dropped); the split point k (|A|) is uniform
  in [1, m - 1] for m >= 2 tokens (else A takes all and B is empty: the target is the final
  [SEP] alone).
  """
  seq_len = block.shape[0] + 2
  m = int(np.count_nonzero(block != vocab.pad_id))
  input_ids = np.full(seq_len, vocab.pad_id, np.int32)
  types = np.zeros(seq_len, np.int32)
  input_ids[0] = vocab.cls_id
  if mode not in PAIR_MODES:
    input_ids[1:m + 1] = block[:m]
    input_ids[m + 1] = vocab.sep_id
    return input_ids, types, 0, seq_len
  m = min(m, seq_len - 3)
  k = int(rng.integers(1, m)) if m >= 2 else m
  input_ids[1:k + 1] = block[:k]
  input_ids[k + 1] = vocab.sep_id
  input_ids[k + 2:m + 2] = block[k:m]
  input_ids[m + 2] = vocab.sep_id
  types[k + 2:m + 3] = 1
  return input_ids, types, k + 2, k + 2


def make_example(block: np.ndarray, rng: np.random.Generator, params: UnilmParams,
                 vocab: VocabInfo) -> dict[str, np.ndarray]:
  """One UniLM row from a block of L - 2 tokens (module docstring).

  The generator is consumed in a fixed order: the mode (one uniform), the split point (pair
  rows of >= 2 tokens), the count's rounding (one uniform), the selection shuffle, then one
  [2, K] draw (action, replacement id).

  Returns:
    int32 [L] `input_ids` (masked), `attention_mask` (0 at pad), `token_type_ids`, `labels`
    (the original id at the selected positions, -100 elsewhere); int32 scalars
    `unilm_mode` (index into MODES), `source_length` (|A| + 2 in pair rows, 0 otherwise) and
    `dropped_by_objective` (selections `max_predictions` cut).
  """
  tables = vocab_tables(vocab)
  block = np.asarray(block)
  if block.ndim != 1 or block.dtype.kind not in "iu":
    raise ValueError(f"block must be a 1-D integer array, got {block.dtype} {block.shape}")
  if block.shape[0] < 2:
    raise ValueError(f"a UniLM block needs >= 2 tokens (rows of >= 4), got {block.shape[0]}")
  mode = draw_mode(rng, params.cumulative)
  input_ids, types, source_length, target_start = _frame(block, mode, rng, vocab)

  cand = tables.is_candidate.take(input_ids)
  if mode == SEQ2SEQ and not params.mask_source:
    cand[:target_start] = False
  cand_pos = np.flatnonzero(cand)
  x = params.mask_prob * cand_pos.size
  want = math.floor(x) + int(rng.random() < x - math.floor(x))
  num = min(want, params.max_predictions)
  rng.shuffle(cand_pos)
  pos = np.sort(cand_pos[:num])

  original = input_ids[pos]
  u, v = rng.random((2, num))
  random_ids = tables.normal_ids[(v * tables.normal_ids.size).astype(np.intp)]
  fm = params.mask_token_frac
  corrupted = np.where(u < fm, vocab.mask_id,
                       np.where(u < fm + params.random_token_frac, random_ids, original))
  labels = np.full(input_ids.shape, IGNORE_INDEX, np.int32)
  labels[pos] = original
  attention_mask = (input_ids != vocab.pad_id).astype(np.int32)
  input_ids[pos] = corrupted
  return {
      "input_ids": input_ids,
      "attention_mask": attention_mask,
      "token_type_ids": types,
      "labels": labels,
      "unilm_mode": np.int32(mode),
      "source_length": np.int32(source_length),
      "dropped_by_objective": np.int32(want - num),
  }


def attention_mask_np(mode: int, source_length: int, attention_mask: np.ndarray) -> np.ndarray:
  """The row's [L, L] self-attention mask (1: query i may attend key j) in NumPy, the
  reference the device builder (`t5x_like/objectives/unilm.py`) is tested against and the
  mask a transformers model takes to run a UniLM mode."""
  length = attention_mask.shape[0]
  i, j = np.arange(length)[:, None], np.arange(length)[None, :]
  if mode == BIDIRECTIONAL:
    see = np.ones((length, length), bool)
  elif mode == LEFT_TO_RIGHT:
    see = j <= i
  elif mode == RIGHT_TO_LEFT:
    see = j >= i
  elif mode == SEQ2SEQ:
    see = (j < source_length) | (j <= i)
  else:
    raise ValueError(f"unknown UniLM mode {mode}; modes: {', '.join(MODES)}")
  return (see & (attention_mask[None, :] > 0)).astype(np.int32)
