"""Causal and prefix language modelling on a decoder (GPT / Llama / MPT; T5's `prefix_lm`) as
pure NumPy.

A sequence `s` of n tokens becomes one example of n - 1 positions: `input_ids = s[:-1]`,
`labels = s[1:]`. Position i predicts s[i + 1] from s[:i + 1], so a document alone in a row
gets exactly the n - 1 losses of HF's shifted loss on `s` (the last token predicts nothing
and is never fed; causal attention makes the earlier logits independent of it).

Where `s` comes from (docs/objectives.md, "Causal and prefix LM"):

- blocks mode (data.pack_documents=false): a block of L + 1 tokens cut from the concatenated
  corpus, documents separated by EOS (GPT-2's and MPT's pretraining data): every one of the L
  positions has a target, and attention crosses document boundaries, as there.
- documents mode (data.pack_documents=true): one document chunk of r <= L - bos tokens, as
  `[BOS] chunk EOS` (BOS with `add_bos`, Llama's convention); examples are packed into rows
  with segment ids and positions restarting at 0, so no token attends to, or is predicted
  from, another document (the first token of a document is never a target of the previous
  one: each document's last position has no label).

Prefix LM (T5's `prefix_lm`, Raffel et al. 2020 §3.2.3; `PrefixLMFeatureConverter`): a split
point k is drawn uniformly from 1..n-1 per example; the first k inputs are the prefix, seen
bidirectionally (`prefix` = 1 there), and only the targets of positions >= k - 1 (the tokens
after the prefix, s[k:]) count in the loss.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.vocab import IGNORE_INDEX, VocabInfo


@dataclasses.dataclass(frozen=True, kw_only=True)
class CausalLMParams:
  """Attributes:
    add_bos: documents mode: each document chunk starts with BOS (Llama); blocks mode has
      only the EOS between documents.
    prefix: prefix LM: a uniform random split per example, loss on the suffix only.
  """
  add_bos: bool = False
  prefix: bool = False


def sequence(chunk: np.ndarray, params: CausalLMParams, vocab: VocabInfo) -> np.ndarray:
  """Documents mode: a document chunk as the token sequence the model reads."""
  head = [vocab.bos_id] if params.add_bos else []
  return np.concatenate([np.asarray(head, np.int32), np.asarray(chunk, np.int32),
                         np.asarray([vocab.eos_id], np.int32)])


def example_length(raw: int, params: CausalLMParams) -> int:
  """Documents mode: row positions taken by a chunk of `raw` tokens (inputs = n - 1)."""
  return raw + int(params.add_bos)


def make_example(seq: np.ndarray, rng: np.random.Generator,
                 params: CausalLMParams) -> dict[str, np.ndarray]:
  """One example from a token sequence of n >= 2 tokens: `input_ids`, `labels` (int32[n-1]),
  and with `prefix` the split (`prefix`: int32[n-1], 1 on the k prefix inputs)."""
  seq = np.asarray(seq, np.int32)
  n = len(seq)
  if n < 2:
    raise DataError(f"a causal LM sequence needs >= 2 tokens, got {n}")
  out = {"input_ids": seq[:-1].copy(), "labels": seq[1:].copy()}
  if params.prefix:
    k = int(rng.integers(1, n))  # prefix inputs, 1..n-1: at least one target remains
    out["labels"][:k - 1] = IGNORE_INDEX
    prefix = np.zeros(n - 1, np.int32)
    prefix[:k] = 1
    out["prefix"] = prefix
  return out
