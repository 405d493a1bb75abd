"""UL2's mixture of denoisers (Tay et al. 2022, "UL2: Unifying Language Learning Paradigms")
for an encoder-decoder, as pure NumPy. Semantics and deviations: docs/objectives.md,
"Mixtures of objectives and UL2's mixture of denoisers".

Semantics follow the paper's appendix `ul2_objective`, built on T5's preprocessors
(google-research/text-to-text-transfer-transformer t5/data/preprocessors.py):

- R-denoisers (paradigm token `[NLU]`): span corruption with (mu=3, r=0.15), (mu=8, r=0.15).
- X-denoisers (`[NLG]`): span corruption with (mu=3, r=0.5), (mu=8, r=0.5), (mu=64, r=0.15),
  (mu=64, r=0.5).
- S-denoiser (`[S2S]`): T5's `prefix_lm`: a chunk of I - 1 raw tokens (room for EOS) split at a
  uniform point k in [1, n - 1] (`random_prefix_noise_mask`); inputs = the prefix, targets =
  the rest, each followed by EOS.

Each span denoiser reads `random_spans_helper(I)` raw tokens for encoder inputs of I (at 512:
R1 568, R2 588, X1 766, X2 908, X3 600, X4 1006; targets 114, 100, 512, 512, 92, 512), through
`span_corruption.block_lengths`, which is T5's helper wherever a block of that length corrupts
to exactly I inputs. The paradigm token is one special id prepended to the inputs, so with
paradigm tokens on a denoiser is sized for I - 1 inputs and the row still holds exactly I.

The mixture itself (which denoiser makes a record, the window of the block it reads) is
`data_pipelines.objectives.mixture`; the registered objectives feed it through
`t5x_like.objectives.mixture`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.objectives import span_corruption
from data_pipelines.vocab import IGNORE_INDEX, VocabInfo

NLU, NLG, S2S = "[NLU]", "[NLG]", "[S2S]"


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One UL2 denoiser. `prefix_lm` False: span corruption with the density and mean span
  length; True: the S-denoiser (the two span parameters unused)."""
  label: str
  paradigm: str
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  prefix_lm: bool = False

  @property
  def span_params(self) -> span_corruption.SpanCorruptionParams:
    return span_corruption.SpanCorruptionParams(self.noise_density, self.mean_noise_span_length)


UL2_DENOISERS = (
    Denoiser("R1", NLU, 0.15, 3.0), Denoiser("R2", NLU, 0.15, 8.0),
    Denoiser("X1", NLG, 0.5, 3.0), Denoiser("X2", NLG, 0.5, 8.0),
    Denoiser("X3", NLG, 0.15, 64.0), Denoiser("X4", NLG, 0.5, 64.0),
    Denoiser("S", S2S, prefix_lm=True),
)


def prefix_lm_lengths(inputs_length: int) -> tuple[int, int]:
  """(raw tokens, longest targets) of the S-denoiser for encoder inputs of I: I - 1 raw tokens
  (T5's split_tokens_to_inputs_length keeps room for EOS); targets are at most the I - 2
  tokens after a 1-token prefix plus EOS."""
  if inputs_length < 3:
    raise ValueError(f"prefix LM needs inputs of >= 3 tokens (one prefix token, one target, "
                     f"EOS), got {inputs_length}")
  return inputs_length - 1, inputs_length - 1


def prefix_lm_example(block: np.ndarray, rng: np.random.Generator, vocab: VocabInfo
                      ) -> dict[str, np.ndarray]:
  """T5's `prefix_lm` on an encoder-decoder: split n >= 2 tokens at k, uniform in [1, n - 1].

  Returns:
    `input_ids` = block[:k] EOS (int32[k + 1]), `labels` = block[k:] EOS (int32[n - k + 1]).
  """
  block = np.asarray(block)
  n = len(block)
  if n < 2:
    raise ValueError(f"prefix LM needs >= 2 tokens (a prefix and a target), got {n}")
  k = int(rng.integers(1, n))
  eos = np.array([vocab.eos_id], np.int32)
  return {"input_ids": np.concatenate([block[:k].astype(np.int32), eos]),
          "labels": np.concatenate([block[k:].astype(np.int32), eos])}


def lengths(inputs_length: int, denoiser: Denoiser) -> tuple[int, int]:
  """(raw tokens, longest targets) of a denoiser whose own inputs (paradigm token excluded)
  are `inputs_length` long."""
  if denoiser.prefix_lm:
    return prefix_lm_lengths(inputs_length)
  return span_corruption.block_lengths(inputs_length, denoiser.span_params)


def paradigm_id(vocab: VocabInfo, token: str) -> int:
  """The id of a paradigm token the vocabulary reserves (ValueError naming the tokens it has)."""
  ids = dict(vocab.paradigm_ids)
  if token not in ids:
    raise ValueError(f"the vocabulary reserves no paradigm token {token} (it has "
                     f"{', '.join(ids) or 'none'})")
  return ids[token]


def prepend(example: dict[str, np.ndarray], token_id: int) -> dict[str, np.ndarray]:
  """The example with one id before its inputs. A decoder-only (prefix LM) example, which
  holds `prefix`, gets the id as its first prefix input; the position it adds predicts the
  first input token, which is not scored (it is in the prefix)."""
  ids = example["input_ids"]
  out = np.empty(len(ids) + 1, np.int32)
  out[0] = token_id
  out[1:] = ids
  if "prefix" not in example:
    return {**example, "input_ids": out}
  labels = np.concatenate([[IGNORE_INDEX], example["labels"]]).astype(np.int32)
  prefix = np.concatenate([[1], example["prefix"]]).astype(np.int32)
  return {**example, "input_ids": out, "labels": labels, "prefix": prefix}


def decoder_lengths(row_length: int, params: span_corruption.SpanCorruptionParams
                    ) -> tuple[int, int]:
  """(raw tokens, encoder-form inputs) of span corruption in the decoder-only form on rows of
  `row_length` positions: the longest raw length whose inputs + targets (n tokens, n - 1
  positions) fit the row. inputs + targets = raw + 2 spans + 2 (two EOS)."""
  lengths = np.arange(2, row_length + 2)
  _, spans = span_corruption.noise_counts(lengths, params)
  fits = lengths + 2 * spans + 2 - 1 <= row_length
  if not fits.any():
    raise ValueError(f"rows of {row_length} positions hold no span-corrupted example")
  raw = int(lengths[fits].max())
  return raw, span_corruption.output_lengths(raw, params)[0]


def decoder_example(block: np.ndarray, rng: np.random.Generator,
                    params: span_corruption.SpanCorruptionParams, vocab: VocabInfo
                    ) -> dict[str, np.ndarray]:
  """Span corruption in UL2's decoder-only form: the sequence `inputs targets` (each with its
  EOS) as one prefix-LM example: `prefix` 1 on the inputs (seen bidirectionally), loss on the
  targets only (the position before the first target predicts it)."""
  ex = span_corruption.make_example(block, rng, params, vocab)
  seq = np.concatenate([ex["input_ids"], ex["labels"]]).astype(np.int32)
  k = len(ex["input_ids"])
  labels = seq[1:].copy()
  labels[:k - 1] = IGNORE_INDEX
  prefix = np.zeros(len(seq) - 1, np.int32)
  prefix[:k] = 1
  return {"input_ids": seq[:-1].copy(), "labels": labels, "prefix": prefix}


def make_example(block: np.ndarray, rng: np.random.Generator, denoiser: Denoiser,
                 vocab: VocabInfo, paradigm: bool = True) -> dict[str, np.ndarray]:
  """One denoiser's example of a window of raw tokens (its `lengths` raw length for full rows).

  Returns:
    `input_ids` ([paradigm] + the denoiser's inputs with EOS) and `labels` (targets with EOS),
    int32, unpadded.
  """
  if denoiser.prefix_lm:
    example = prefix_lm_example(block, rng, vocab)
  else:
    example = span_corruption.make_example(block, rng, denoiser.span_params, vocab)
  return prepend(example, paradigm_id(vocab, denoiser.paradigm)) if paradigm else example
