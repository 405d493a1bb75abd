"""ALBERT's sentence-order prediction (SOP) with n-gram whole-word MLM, as pure NumPy.

Follows google-research/albert `create_pretraining_data.py` (semantics only; docs/objectives.md,
"ALBERT sentence order"). A row is `[CLS] A [SEP] B [SEP]` (token types 0 through the first
[SEP], 1 after) built from one block of L - 3 tokens of the document stream (documents
joined with EOS):

- the block's longest document piece (the first on ties) is the document; its sentences end
  at the tokenizer's full-stop pieces (`vocab.sentence_end`: . ! ? 。 ？ ！, the last of a run);
- whole sentences only, as the reference's segments (lists of sentences): where the piece runs
  into an edge of the block (no EOS or pad there) the document was cut mid-sentence, so its
  partial first / last sentence is left out (a piece after an EOS starts its document, one
  before an EOS or pad ends it; both are kept whole). Otherwise the edges would give the
  order away: in order, the first segment would end with a full stop and the second stop
  mid-sentence, swapped the reverse;
- `pair` (>= 2 whole sentences): split at one of the inner sentence boundaries, uniform
  (ALBERT's a_end = randint(1, len(chunk) - 1)): A = the sentences before, B = the rest, two
  consecutive segments; swapped with probability swap_prob. `sentence_order_label` is 1 when
  swapped (B first), 0 in document order (as transformers' AlbertForPreTraining);
- `partial` (at most one whole sentence, but a sentence boundary in the piece): split at a
  boundary of the untrimmed piece, partial ends kept, swapped as a pair;
- `random` (one sentence, the block holds other document pieces): ALBERT's fallback for a
  one-sentence chunk: A = the document, B = one of the block's other pieces (uniform), label
  1 (the original's is_random_next), never swapped;
- `mid_sentence` (one sentence filling the block, nothing else in it): split at a uniform
  word start inside it (any position if it is one word), swapped as a pair;
- `empty` (no tokens): `[CLS] [SEP] [SEP]`, label 0.

The row is then masked by `mlm.mask_tokens` on `A [SEP] B` (whole words, n-grams n <= 3 with
p ~ 1/n, 80/10/10; the inner [SEP] is never selected and ends a word). The generator is
consumed in a fixed order: one draw [2] (the split or partner, then the swap), then the
masking's.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.objectives import mlm
from data_pipelines.vocab import IGNORE_INDEX, VocabInfo

KINDS = ("pair", "partial", "random", "mid_sentence", "empty")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SOPParams:
  """masking: the MLM's (whole-word, n-gram); swap_prob: P(a consecutive pair is swapped);
  whole_sentences: leave out a partial sentence at a block edge (False keeps it: the edges
  then give the order away; for ablations such as `benchmarks/study_sop.py` only)."""
  masking: mlm.MLMParams
  swap_prob: float = 0.5
  whole_sentences: bool = True

  def __post_init__(self):
    if not 0.0 <= self.swap_prob <= 1.0:
      raise ValueError(f"SOPParams.swap_prob must be in [0, 1], got {self.swap_prob}")


@dataclasses.dataclass(frozen=True)
class Pair:
  """How a block becomes a pair: A = block[a0:a1], B = block[b0:b1] (before any swap)."""
  kind: str
  a: tuple[int, int]
  b: tuple[int, int]


def _pieces(block: np.ndarray, vocab: VocabInfo) -> list[tuple[int, int]]:
  """(start, end) of the non-empty document pieces of a block (split at EOS, pad dropped)."""
  keep = np.concatenate([[False], (block != vocab.eos_id) & (block != vocab.pad_id), [False]])
  step = np.diff(keep.astype(np.int8))
  return list(zip(np.flatnonzero(step == 1).tolist(), np.flatnonzero(step == -1).tolist()))


def _sentence_starts(doc: np.ndarray, vocab: VocabInfo) -> np.ndarray:
  """Offsets j in (0, len) where a sentence starts: doc[j-1] ends one and doc[j] does not."""
  if vocab.sentence_end is None or doc.size < 2:
    return np.zeros(0, np.intp)
  end = np.asarray(vocab.sentence_end, bool).take(doc)
  return np.flatnonzero(end[:-1] & ~end[1:]) + 1


def choose_pair(block: np.ndarray, u: np.ndarray, vocab: VocabInfo,
                whole_sentences: bool = True) -> Pair:
  """The pair of a block given the split/partner draw u[0] in [0, 1) (module docstring);
  `whole_sentences=False` keeps the partial sentences at the block's edges (every split is
  then `partial`)."""
  pieces = _pieces(block, vocab)
  if not pieces:
    return Pair("empty", (0, 0), (0, 0))
  lengths = [e - s for s, e in pieces]
  doc = int(np.argmax(lengths))
  start, end = pieces[doc]
  cuts = start + _sentence_starts(block[start:end], vocab)
  # Whole sentences, as the reference's segments: a piece that runs into an edge of the block
  # (no EOS or pad there) was cut mid-document, so its partial first / last sentence is left out.
  lo = int(cuts[0]) if start == 0 and cuts.size else start
  hi = int(cuts[-1]) if end == block.shape[0] and cuts.size else end
  inner = cuts[(cuts > lo) & (cuts < hi)] if whole_sentences else cuts[:0]
  if inner.size:
    cut = int(inner[int(u[0] * inner.size)])
    return Pair("pair", (lo, cut), (cut, hi))
  if cuts.size:  # at most one whole sentence: consecutive segments with their partial ends
    cut = int(cuts[int(u[0] * cuts.size)])
    return Pair("partial", (start, cut), (cut, end))
  others = [p for i, p in enumerate(pieces) if i != doc]
  if others:
    return Pair("random", (start, end), others[int(u[0] * len(others))])
  starts = np.flatnonzero(mlm.vocab_tables(vocab).starts_word[block[start + 1:end]]) + 1
  if not starts.size:
    starts = np.arange(1, end - start)
  cut = start + int(starts[int(u[0] * starts.size)]) if starts.size else end
  return Pair("mid_sentence", (start, cut), (cut, end))


def pair_kind(block: np.ndarray, vocab: VocabInfo) -> str:
  """The kind of pair a block makes (it does not depend on the generator)."""
  return choose_pair(np.asarray(block), np.zeros(1), vocab).kind


def make_example(block: np.ndarray, rng: np.random.Generator, params: SOPParams,
                 vocab: VocabInfo) -> dict[str, np.ndarray]:
  """One SOP + MLM row from a block of L - 3 tokens (module docstring).

  Returns:
    int32 [L] `input_ids` (masked), `attention_mask`, `token_type_ids`, `labels` (original
    ids at the masked positions, -100 elsewhere), and the int32 scalars
    `sentence_order_label` (1: the row's second segment precedes its first in the document,
    or a random pair; 0: document order) and `dropped_by_objective` (selections max_predictions cut).
  """
  block = np.asarray(block)
  if block.ndim != 1 or block.dtype.kind not in "iu":
    raise ValueError(f"block must be a 1-D integer array, got {block.dtype} {block.shape}")
  u = rng.random(2)
  pair = choose_pair(block, u, vocab, params.whole_sentences)
  first, second = block[pair.a[0]:pair.a[1]], block[pair.b[0]:pair.b[1]]
  label = 1 if pair.kind == "random" else 0
  if pair.kind in ("pair", "partial", "mid_sentence") and u[1] < params.swap_prob:
    first, second, label = second, first, 1
  body = np.concatenate([first, [vocab.sep_id], second]).astype(np.int32)
  masked, body_labels, cut = mlm.mask_tokens(body, rng, params.masking, vocab)

  seq_len = block.shape[0] + 3
  used = body.size + 2
  input_ids = np.full(seq_len, vocab.pad_id, np.int32)
  input_ids[0] = vocab.cls_id
  input_ids[1:used - 1] = masked
  input_ids[used - 1] = vocab.sep_id
  labels = np.full(seq_len, IGNORE_INDEX, np.int32)
  labels[1:used - 1] = body_labels
  token_type_ids = np.zeros(seq_len, np.int32)
  token_type_ids[first.size + 2:used] = 1
  attention_mask = np.zeros(seq_len, np.int32)
  attention_mask[:used] = 1
  return {
      "input_ids": input_ids,
      "attention_mask": attention_mask,
      "token_type_ids": token_type_ids,
      "labels": labels,
      "sentence_order_label": np.int32(label),
      "dropped_by_objective": np.int32(cut),
  }
