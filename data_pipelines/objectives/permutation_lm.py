"""XLNet permutation-LM objective as pure NumPy, with the original semantics.

Reference semantics and every deliberate deviation: docs/objectives.md, "XLNet permutation LM".

Follows zihangdai/xlnet `data_utils.py`: `_sample_mask` picks the predicted tokens, `_local_perm`
draws the factorization order and builds `perm_mask`, `get_dataset` the `target_mapping`. The
content stream keeps the real tokens (HF's collator replaces them with <mask>; the original does
not). Outputs have the shapes HF `XLNetLMHeadModel` takes, one row without the batch axis.

Layout. A row of L = len(block) + 3 tokens is `A <sep> B <sep> <cls>` with A = block[:a] and
B = block[a:]. The original cuts A and B at a random sentence boundary and with probability 0.5
takes B from another document (for its dropped next-sentence loss); here `a` is uniform among
the word starts of block[1:] (uniform over 1..len - 1 if there are none), so both segments are
non-empty and no word is split. `token_type_ids` are XLNet's SEG_ID_A / B / CLS: 0 for A and its
<sep>, 1 for B and its <sep>, 2 for <cls>.

Memory layout (`reuse_len` R > 0, the original's `create_tfrecords` with memory): the row is
`block[:R] A <sep> B <sep> <cls>` with A, B cut from block[R:]. The first R tokens are the
part whose content states the model caches as memory for the next row of the same stream
(the pipeline's stream order makes that row start right after them). As the original: the
reuse part has segment id 0; it gets P - P // 2 of the predictions and the rest P // 2, each
part sampled on its own; each part has its own factorisation order (perm_size must divide R
and L - R; 0 makes each part one block); the reuse part comes first in the order: its rows see
nothing of the rest, and the rest sees all of the reuse part. So the cached states never saw the
tokens after them. Hence, as in the original (`get_dataset` puts ones([R, L - R]) beside the
reuse part's `_local_perm`), perm_mask[:R, R:] is all 1: the rest's context columns are 1 in
the reuse part's rows, so with R > 0 a non-target column of perm_mask is not all zero (the
"context columns are all 0" below holds within each part, and for R = 0).

Prediction (`_sample_mask`). Candidates are the non-special tokens of the block. A word starts
at a candidate whose piece is a start piece, at a candidate after a non-candidate, and at
position 0. Start pieces are the original's `_is_start_piece` (`vocab.start_piece`): a piece
beginning with `▁` (`▁` alone included) or with `<`, or a bare punctuation piece of its set
(ASCII punctuation less `'`, `=`, `>`; so `,` `.` `(` `"` each start a word), except that
byte-fallback pieces `<0x..>` never do (XLNet's vocabulary has none; read literally they would
each be a word). Other objectives keep the `▁` table (`vocab.word_start`). Spans are walked left
to right: n in [1, max_span] with p ∝ 1/n, cut to the tokens still to choose; a context of c =
floor(n * mask_alpha / mask_beta) tokens, l uniform in [0, c); the span starts at the first word
start at or after cur + l and the walk resumes at its end + (c - l), so spans never touch. The
span covers n tokens — what the original's n-gram loop actually does (it tests the start piece
instead of the end piece, so it counts tokens, not words) — and stops early at a special (never
selected). The walk ends when no word start is left or, as the original's
`if end >= seg_len: break`, when a span's n tokens would reach the end of the part:
beg + n >= len(part), tested on n before a special cuts the span, since the original's spans
run over specials (which it masks and later drops as functional). So a part's last token (the
reuse part's last, the rest's <cls>) is never in a span. Then single candidates, uniform without
replacement, top the selection up to exactly num_predict (the original's randint loop, in one
draw).

Order (`_local_perm`). One random permutation σ of the offsets 0..perm_size-1, shared by every
perm_size block: rank(p) = p - p mod S + σ(p mod S), so blocks come in order. Three kinds of
position:
- targets (predicted): keep their rank; a target sees the context, the targets and functional
  tokens earlier in the order, never itself.
- functional (the two <sep> and the <cls>, by position): as in the original they keep their
  rank and are not predicted; each sees the context, itself and the targets / functional
  tokens earlier in the order, and is seen only by targets / functional tokens later in it.
- context (everything else, specials inside the block included): rank -1, seen by everyone,
  sees no target or functional token (a context token seeing an ordered one would leak a
  target into the targets before it through a later layer).
So `perm_mask[i, j] = 1` (i cannot attend to j) iff j is a target or functional and
rank(j) >= rank(i) + [i is not a target]; one broadcast comparison builds it. diag(perm_mask) is
1 exactly at the targets, context columns are all 0, and "i sees j" is a strict total order on
the targets.

Reversed rows (XLNet's bi_data, `reverse=True`): the block's tokens are reversed before the
layout, so the row is `rev(block)[:a] <sep> rev(block)[a:] <sep> <cls>` (the functional
tokens stay at the end, as in the original's reversed stream). Words are those of the natural
text, as the original's `_sample_mask(reverse=True)` does by flipping the row back: the split
point is a natural word boundary, and the span walk and top-up run on the flipped row, so a
span still covers a word's pieces from its start. Which rows are reversed is the pipeline's
business (the second half of each global batch, matching the model's negated distances). The
original pretrains with bi_data on (the README's data_utils.py command has --bi_data=True,
train.py's flag defaults to True), and so do the xlnet_base / xlnet_large presets
(`model.bi_data: true`; the batch must be even with half of it divisible by
optim.grad_accum_steps, as the original needs bsz_per_host divisible by 2 * num_core_per_host).

Every draw comes from the record's generator in a fixed order (split point, span draws, top-up,
permutation), so the output is a function of (block, generator state). The span walk loops once
per span (~30 for L = 512), never per token.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import operator

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.vocab import VocabInfo

# XLNet's segment ids (SEG_ID_A, SEG_ID_B, SEG_ID_CLS in data_utils.py).
SEG_ID_A = 0
SEG_ID_B = 1
SEG_ID_CLS = 2
_EXTRA = 3  # <sep>, <sep>, <cls>
_MIN_BLOCK = 2  # A and B non-empty


@dataclasses.dataclass(frozen=True)
class PermutationLMParams:
  """XLNet permutation-LM hyper-parameters (original flag in brackets).

  Attributes:
    num_predict: predicted tokens per row [--num_predict]; 0 means L/6 rounded half up (the
      paper's K = 6: 85 for L = 512).
    perm_size: length of the blocks sharing one permutation [--perm_size]; 0 means L (one
      block); must divide L.
    max_span: longest span in tokens [max_gram]; n in [1, max_span] with p ∝ 1/n.
    mask_alpha, mask_beta: a span of n tokens gets a context of floor(n * alpha / beta) tokens
      [--mask_alpha, --mask_beta]; alpha / beta must be >= 1.
    reuse_len: tokens at the start of each row that the model caches as memory [--reuse_len];
      0 = no memory layout.
  """

  num_predict: int = 0
  perm_size: int = 0
  max_span: int = 5
  mask_alpha: float = 6.0
  mask_beta: float = 1.0
  reuse_len: int = 0

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises DataError with a one-line reason naming the field and its value."""
    for name in ("num_predict", "perm_size", "max_span", "reuse_len"):
      value = getattr(self, name)
      minimum = 1 if name == "max_span" else 0
      if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)
              and value >= minimum):
        raise DataError(f"PermutationLMParams.{name} must be an integer >= {minimum}, "
                        f"got {value!r}")
    for name in ("mask_alpha", "mask_beta"):
      value = getattr(self, name)
      # `not (in range)` so that NaN is rejected too.
      if not (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and math.isfinite(value) and value > 0):
        raise DataError(f"PermutationLMParams.{name} must be a finite number > 0, "
                        f"got {value!r}")
    if math.floor(self.mask_alpha / self.mask_beta) < 1:
      raise DataError(f"PermutationLMParams.mask_alpha / mask_beta must be >= 1 (a one-token "
                      f"span needs a context), got {self.mask_alpha!r} / {self.mask_beta!r}")


def row_length(block_length: int) -> int:
  """L for a raw block of `block_length` tokens: the block plus <sep>, <sep>, <cls>."""
  return operator.index(block_length) + _EXTRA


def num_predict_for(length: int, params: PermutationLMParams) -> int:
  """P, the predicted tokens of a row of `length` tokens (L/6 rounded half up if unset)."""
  return params.num_predict or math.floor(operator.index(length) / 6 + 0.5)


@functools.lru_cache(maxsize=16)
def _span_cdf(max_span: int) -> np.ndarray:
  """CDF of n - 1 over n = 1..max_span with p ∝ 1/n."""
  pmf = 1.0 / np.arange(1, max_span + 1)
  cdf = np.cumsum(pmf / pmf.sum())
  cdf[-1] = 1.0
  return cdf


def layout(block: np.ndarray, a: int, vocab: VocabInfo) -> tuple[np.ndarray, np.ndarray]:
  """`block[:a] <sep> block[a:] <sep> <cls>` and its segment ids (int32[L] each)."""
  n = block.size
  row = np.empty(n + _EXTRA, np.int32)
  row[:a] = block[:a]
  row[a] = vocab.sep_id
  row[a + 1:n + 1] = block[a:]
  row[n + 1] = vocab.sep_id
  row[n + 2] = vocab.cls_id
  seg = np.full(n + _EXTRA, SEG_ID_B, np.int32)
  seg[:a + 1] = SEG_ID_A
  seg[-1] = SEG_ID_CLS
  return row, seg


def _candidates(row: np.ndarray, vocab: VocabInfo) -> tuple[np.ndarray, np.ndarray]:
  """(bool[L] selectable, bool[L] word start) of a row: non-special ids; starts per the docs."""
  cand = ~np.asarray(vocab.is_special, bool)[row]
  # XLNet's own start pieces (bare punctuation and `<...>` too), not the `▁` table that BERT
  # whole-word masking and BART use.
  table = vocab.word_start if vocab.start_piece is None else vocab.start_piece
  starts = cand & np.asarray(table, bool)[row]
  starts[1:] |= cand[1:] & ~cand[:-1]
  starts[0] = cand[0]
  return cand, starts


def sample_spans(cand: np.ndarray, word_start: np.ndarray, rng: np.random.Generator,
                 params: PermutationLMParams, goal: int) -> tuple[np.ndarray, np.ndarray]:
  """The span walk of `_sample_mask` (see module docstring) over one row.

  Args:
    cand: bool[L] selectable positions.
    word_start: bool[L] positions a span may start at (a subset of cand).
    goal: the number of tokens to select; the walk stops once reached.

  Returns:
    (int64[m] span starts ascending, int64[m] span lengths >= 1), covering <= goal tokens.
  """
  length = cand.size
  pos = np.arange(length + 1)
  # nxt[p]: first word start >= p (L if none); stop[p]: first non-candidate >= p (L if none).
  nxt = np.where(np.append(word_start, True), pos, length)
  nxt = np.minimum.accumulate(nxt[::-1])[::-1].tolist()
  stop = np.where(np.append(~cand, True), pos, length)
  stop = np.minimum.accumulate(stop[::-1])[::-1].tolist()
  cdf = _span_cdf(params.max_span)
  ratio = params.mask_alpha / params.mask_beta
  mean_window = (ratio + 1.0) * float(np.dot(np.arange(1, cdf.size + 1), np.diff(cdf, prepend=0)))
  chunk = int(length / mean_window * 1.5) + 8
  starts, lengths = [], []
  got = cur = k = 0
  draws_n = draws_u = []
  while got < goal and cur < length:
    if k == len(draws_n):
      u = rng.random((2, chunk))
      draws_n = (cdf.searchsorted(u[0], side="right") + 1).tolist()
      draws_u = u[1].tolist()
      k = 0
    n = min(draws_n[k], goal - got)
    ctx = math.floor(n * ratio)
    left = int(draws_u[k] * ctx)
    k += 1
    if cur + left >= length:
      break
    beg = nxt[cur + left]
    # The original's `if end >= seg_len: break`: a span whose n tokens would reach the end of
    # the part ends the walk, even if a special before the end would cut it (the original's
    # spans run over specials); the top-up below may still pick the last token.
    if beg + n >= length:
      break
    end = min(beg + n, stop[beg])
    starts.append(beg)
    lengths.append(end - beg)
    got += end - beg
    cur = end + ctx - left
  return np.array(starts, np.int64), np.array(lengths, np.int64)


def select_targets(row: np.ndarray, rng: np.random.Generator, params: PermutationLMParams,
                   vocab: VocabInfo, goal: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Exactly `goal` predicted positions of a row: spans, then single-token top-up.

  Returns:
    (bool[L] the targets, int64[m] span starts, int64[m] span lengths).

  Raises:
    DataError: if the row has fewer than `goal` selectable (non-special) tokens.
  """
  cand, word_start = _candidates(row, vocab)
  num_cand = int(np.count_nonzero(cand))
  if num_cand < goal:
    raise DataError(f"num_predict {goal} exceeds the {num_cand} non-special tokens of the row "
                    f"(length {row.size}); lower num_predict or drop the block")
  starts, lengths = sample_spans(cand, word_start, rng, params, goal)
  edges = np.zeros(row.size + 1, np.int32)
  np.add.at(edges, starts, 1)
  np.add.at(edges, starts + lengths, -1)
  target = edges.cumsum()[:-1] > 0
  need = goal - int(lengths.sum())
  if need > 0:
    free = np.flatnonzero(cand & ~target)
    target[rng.choice(free, need, replace=False)] = True
  return target, starts, lengths


def make_example(block: np.ndarray, rng: np.random.Generator, params: PermutationLMParams,
                 vocab: VocabInfo, reverse: bool = False) -> dict[str, np.ndarray]:
  """One XLNet permutation-LM row from a raw block (see the module docstring).

  Args:
    block: int[B] token ids in natural order, B >= reuse_len + 2; may hold EOS between
      documents (never predicted).
    rng: the record's generator; the output is a function of (block, generator state).
    params: objective parameters.
    vocab: the vocabulary (`sep_id`, `cls_id`, `is_special`, `word_start`).
    reverse: make a reversed-text row (bi_data's second half of the batch): the row holds
      block[::-1] (its first reuse_len tokens are the reuse part).

  Returns:
    With L = B + 3 and P = num_predict_for(L, params):
    `input_ids` int32[L] the real tokens `[reuse part] A <sep> B <sep> <cls>` (not masked);
    `token_type_ids` int32[L] 0 / 1 / 2 for (reuse part and) A / B / <cls>;
    `perm_mask` float32[L, L], 1 where i cannot attend to j;
    `target_mapping` float32[P, L] one-hot rows, targets in ascending position;
    `labels` int32[P] the target tokens in target_mapping order.

  Raises:
    DataError: block not 1-D integer or shorter than reuse_len + 2; perm_size not dividing L
      (or, with reuse_len, R and L - R); num_predict >= L or above a part's non-special
      tokens.
  """
  block = np.asarray(block)
  if block.ndim != 1 or block.dtype.kind not in "iu":
    raise DataError(f"block must be a 1-D integer array, got {block.dtype} {block.shape}")
  reuse = params.reuse_len
  if block.size < reuse + _MIN_BLOCK:
    raise DataError(f"block too short for permutation LM: {block.size} tokens, "
                    f"need >= {reuse + _MIN_BLOCK}" + (f" (reuse_len {reuse} + 2)" if reuse
                                                       else ""))
  length = row_length(block.size)
  perm_size = params.perm_size or length
  if reuse:  # perm_size 0: each part is one block
    sizes = (params.perm_size or reuse, params.perm_size or length - reuse)
    if reuse % sizes[0] or (length - reuse) % sizes[1]:
      raise DataError(f"perm_size {perm_size} must divide both reuse_len {reuse} and the rest "
                      f"of the row, {length - reuse} tokens")
  elif length % perm_size:
    raise DataError(f"perm_size {perm_size} must divide the row length {length} "
                    f"(block of {block.size} + 3)")
  goal = num_predict_for(length, params)
  if goal >= length:
    raise DataError(f"num_predict {goal} must be < the row length {length}")

  # Split point: uniform among the word boundaries inside the A/B text (any point if none).
  # In natural order a boundary precedes a word start; reversed, the cut between positions
  # a-1 and a is a boundary when the token at a-1 starts a word.
  _, starts = _candidates(block, vocab)
  if reverse:
    block, starts = block[::-1], starts[::-1]
  text, starts = block[reuse:], starts[reuse:]
  cuts = (np.flatnonzero(starts[:-1]) if reverse else np.flatnonzero(starts[1:])) + 1
  if cuts.size:
    a = int(cuts[int(rng.random() * cuts.size)])
  else:
    a = 1 + int(rng.random() * (text.size - 1))
  rest, seg = layout(text, a, vocab)
  row = np.concatenate([block[:reuse], rest]).astype(np.int32)
  seg = np.concatenate([np.full(reuse, SEG_ID_A, np.int32), seg])

  def targets(part: np.ndarray, part_goal: int) -> np.ndarray:
    if not reverse:
      return select_targets(part, rng, params, vocab, part_goal)[0]
    # Sample on the natural-order part, as the original's _sample_mask(reverse=True).
    return select_targets(part[::-1], rng, params, vocab, part_goal)[0][::-1].copy()

  functional = np.zeros(length, bool)
  functional[[reuse + a, length - 2, length - 1]] = True
  if reuse:
    target = np.concatenate([targets(row[:reuse], goal - goal // 2),
                             targets(row[reuse:], goal // 2)])
    perm_mask = np.ones((length, length), np.float32)
    perm_mask[:reuse, :reuse] = _local_perm(target[:reuse], functional[:reuse], rng, sizes[0])
    perm_mask[reuse:, :reuse] = 0.0
    perm_mask[reuse:, reuse:] = _local_perm(target[reuse:], functional[reuse:], rng, sizes[1])
  else:
    target = targets(row, goal)
    perm_mask = _local_perm(target, functional, rng, perm_size)

  positions = np.flatnonzero(target)
  target_mapping = np.zeros((goal, length), np.float32)
  target_mapping[np.arange(goal), positions] = 1.0
  return {"input_ids": row, "token_type_ids": seg, "perm_mask": perm_mask,
          "target_mapping": target_mapping, "labels": row[positions]}


def _local_perm(target: np.ndarray, functional: np.ndarray, rng: np.random.Generator,
                perm_size: int) -> np.ndarray:
  """`_local_perm`'s perm_mask float32[n, n] for one part of a row (see the module docstring)."""
  n = target.size
  sigma = rng.permutation(perm_size)
  rank = np.arange(n) - np.tile(np.arange(perm_size), n // perm_size)
  rank += np.tile(sigma, n // perm_size)
  rank[~(target | functional)] = -1
  # A row sees its column iff column rank < row threshold; targets exclude themselves.
  threshold = rank + ~target
  return (threshold[:, None] <= rank[None, :]).astype(np.float32)
