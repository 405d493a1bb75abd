"""BART denoising (fairseq's five noises and insertion) as a registered objective."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from data_pipelines import packing, pipeline
from data_pipelines.objectives import denoising
from t5x_like import objectives
from t5x_like.config import ConfigError
from t5x_like.config_schema import ObjectiveConfig
from t5x_like.config_validation import require
from t5x_like.objectives import seq2seq_rows
from t5x_like.training import tasks


@dataclasses.dataclass(frozen=True)
class DenoisingConfig(ObjectiveConfig):
  """BART denoising (fairseq semantics, applied in this order): sentence permutation, text
  infilling (Poisson spans of whole words, one <mask> each), token masking, token deletion,
  insertion, rotation. Each is a ratio in [0, 1]; 0 turns the noise off. data.seq_len is the
  encoder (source) length; the target is the clean block with <s> and </s>. The default mix is
  the BART paper's best: text infilling 0.3 (lambda 3) + sentence permutation 1.0."""
  text_infilling: float = 0.3  # fraction of word starts masked (fairseq --mask)
  token_masking: float = 0.0  # fraction of tokens replaced by <mask>
  token_deletion: float = 0.0  # fraction of tokens deleted
  permute_sentences: float = 1.0  # fraction of sentences shuffled
  rotate: float = 0.0  # probability of rotating the document
  insert: float = 0.0  # inserted tokens, as a fraction of the source length
  random_ratio: float = 0.1  # masks / inserts that get a random token instead (--mask-random)
  poisson_lambda: float = 3.0  # mean span length of text infilling

  def check(self, config: Any) -> None:
    for key in ("text_infilling", "token_masking", "token_deletion", "permute_sentences",
                "rotate", "insert", "random_ratio"):
      value = getattr(self, key)
      require(0.0 <= value <= 1.0, f"objective.{key} must be in [0, 1], got {value}")
    # >= 0.01, as denoising.DenoisingParams: below it nearly every span is empty and filling
    # the masking budget takes ~budget/lambda draws.
    require(self.poisson_lambda >= 0.01 and math.isfinite(self.poisson_lambda),
            f"objective.poisson_lambda must be >= 0.01, got {self.poisson_lambda} (the mean "
            f"span length of text infilling)")


def params(config: Any) -> denoising.DenoisingParams:
  o = config.objective
  return denoising.DenoisingParams(
      text_infilling=o.text_infilling, token_masking=o.token_masking,
      token_deletion=o.token_deletion, permute_sentences=o.permute_sentences, rotate=o.rotate,
      insert=o.insert, random_ratio=o.random_ratio, poisson_lambda=o.poisson_lambda)


def block_length(config: Any) -> int:
  """Raw tokens per block for BART: the most whose noised source (<s> block </s> plus the
  insertion noise) always fits in data.seq_len."""
  p = params(config)
  raw = config.data.seq_len - 2
  while raw > 0 and denoising.max_source_length(raw + 2, p) > config.data.seq_len:
    raw -= 1
  if raw < denoising.min_block_length(p):
    raise ConfigError(f"data.seq_len ({config.data.seq_len}) is too short for the denoising "
                      f"noise: it leaves {raw} raw tokens per block, the noise needs >= "
                      f"{denoising.min_block_length(p)}")
  return raw


def _pack_row(config: Any, vocab: Any):
  # fairseq / HF BART start the decoder with </s>.
  return seq2seq_rows.pack_row(config, vocab, vocab.eos_id)


def _make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  p = params(config)
  make = lambda block, rng: denoising.make_example(block, rng, p, vocab)
  if config.data.pack_documents:
    return make
  # One block per row, still a (one-segment) packed row: the source length is random.
  pack_row = _pack_row(config, vocab)
  return lambda block, rng: pack_row([make(block, rng)])


def _pack_spec(config: Any) -> packing.PackSpec:
  p, d = params(config), config.data
  # Sources have random lengths: a chunk is budgeted at its largest possible source.
  return packing.PackSpec(
      key=f"denoising({p.insert!r})",
      lengths=lambda r: (denoising.max_source_length(r + 2, p), r + 2),
      capacity=(d.seq_len, d.target_len), min_length=max(2, denoising.min_block_length(p)))


def sentence_boundary_report(config: Any, tokenizer: Any, manifest: Any,
                             max_blocks: int = 500) -> str | None:
  """A warning when sentence permutation is on but most blocks hold a single sentence.

  Sentence ends come from the tokenizer (pieces ending in . ! ? 。 ？ ！, and </s>); a corpus
  without them (e.g. one document per line without punctuation) trains, but permutation then
  leaves those blocks unchanged. Returns None when there is nothing to say.
  """
  if config.objective.permute_sentences == 0:
    return None
  vocab = tokenizer.vocab_info()
  n = pipeline.num_records(manifest.directory, "train")
  picks = np.unique(np.linspace(0, n - 1, min(n, max_blocks)).astype(np.int64))
  counts = [denoising.count_sentences(segment, vocab)
            for i in picks for segment in pipeline.read_segments(manifest.directory, "train",
                                                                 int(i))]
  single = sum(c < 2 for c in counts)
  if single * 2 <= len(counts):
    return None
  return (f"warning: objective.permute_sentences={config.objective.permute_sentences} but "
          f"{single} of {len(counts)} sampled blocks hold fewer than 2 sentences (no sentence "
          f"end among the tokenizer's pieces ending in . ! ? 。 ？ ！); those blocks are not "
          f"permuted. Set objective.permute_sentences=0 to silence this.")


OBJECTIVE = objectives.register(objectives.Objective(
    name="denoising",
    config=DenoisingConfig,
    families=("bart",),
    task=tasks.Seq2SeqTask,
    block_length=block_length,
    target_length=lambda config: block_length(config) + 2,  # the clean <s> block </s>
    make_example=_make_example,
    pack_spec=_pack_spec,
    pack_row=_pack_row,
    always_packs_rows=True,
    special_roles=("bos", "eos", "mask"),
    data_warning=sentence_boundary_report,
))
