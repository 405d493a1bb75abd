"""UniLM (v1) as a registered objective: BERT's cloze loss under a per-row self-attention
mask (bidirectional, left-to-right, right-to-left or seq2seq), with its training task.

Rows carry the mask compactly (`unilm_mode` [B], `source_length` [B] and the padding mask
[B, L], `data_pipelines/objectives/unilm.py`); the task builds the [B, L, L] mask inside the
jitted step (`self_attention_mask`) and hands it to the BERT module as its attention mask.
The loss is the MLM task's: summed NLL over the selected positions. Evaluation reports each
mode as `loss/<mode>`, `accuracy/<mode>`, ... (`member_labels`, read by
`t5x_like.training.evaluation`). The trained model is a plain BERT: export is
`BertForMaskedLM` and the masks are a training-time matter (docs/objectives.md, "UniLM").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.objectives import unilm
from t5x_like import objectives
from t5x_like.config_schema import ObjectiveConfig
from t5x_like.config_validation import require
from t5x_like.training import tasks

MODE_FEATURE = "unilm_mode"
SOURCE_FEATURE = "source_length"


@dataclasses.dataclass(frozen=True)
class UnilmConfig(ObjectiveConfig):
  """Each row's mode is drawn by the four rates (weights >= 0, normalised; the paper's 1/3,
  1/6, 1/6, 1/3); its tokens are masked as BERT's (mask_prob; mask_token_frac [MASK],
  random_token_frac random, the rest unchanged). seq2seq_mask_source: seq2seq rows mask both
  segments (the paper's pretraining); false: the target segment only."""
  bidirectional_rate: float = 1 / 3
  left_to_right_rate: float = 1 / 6
  right_to_left_rate: float = 1 / 6
  seq2seq_rate: float = 1 / 3
  seq2seq_mask_source: bool = True
  mask_prob: float = 0.15
  mask_token_frac: float = 0.8
  random_token_frac: float = 0.1
  max_predictions: int = 0  # 0 = the most a row can select (never clipped)

  @property
  def rates(self) -> tuple[float, ...]:
    return tuple(getattr(self, f"{mode}_rate") for mode in unilm.MODES)

  def check(self, config: Any) -> None:
    for mode, rate in zip(unilm.MODES, self.rates):
      require(np.isfinite(rate) and rate >= 0,
              f"objective.{mode}_rate must be a finite weight >= 0, got {rate}")
    require(sum(self.rates) > 0, "objective.bidirectional_rate, left_to_right_rate, "
            "right_to_left_rate and seq2seq_rate are all 0: give at least one mode a weight")
    require(0.0 < self.mask_prob < 1.0,
            f"objective.mask_prob must be in (0, 1), got {self.mask_prob}")
    require(self.mask_token_frac >= 0 and self.random_token_frac >= 0 and
            self.mask_token_frac + self.random_token_frac <= 1.0 + 1e-9,
            "objective.mask_token_frac and objective.random_token_frac must be >= 0 and sum "
            f"to <= 1, got {self.mask_token_frac} + {self.random_token_frac}")
    require(self.max_predictions >= 0, "objective.max_predictions must be >= 0 (0 = derive), "
            f"got {self.max_predictions}")
    types = getattr(config.model, "type_vocab_size", 2)
    require(types >= 2 or not (self.bidirectional_rate or self.seq2seq_rate),
            f"model.type_vocab_size is {types}: UniLM's segment pairs need token types 0 and "
            "1 (set it to 2, or give only left_to_right_rate / right_to_left_rate a weight)")
    require(config.data.seq_len >= 4, f"data.seq_len must be >= 4 for [CLS] A [SEP] B [SEP] "
            f"rows, got {config.data.seq_len}")

  def predictions_per_row(self, config: Any) -> int:
    return self.max_predictions or unilm.default_max_predictions(config.data.seq_len,
                                                                 self.mask_prob)


def self_attention_mask(mode_B: jax.Array, source_length_B: jax.Array,
                        attention_mask_BL: jax.Array) -> jax.Array:
  """bool [B, L, L]: query i may attend key j. Keys must be real tokens; then bidirectional
  sees every key, left-to-right j <= i, right-to-left j >= i, seq2seq j < source_length or
  j <= i (the source sees the source; a target token the source and the target up to
  itself). Equals `data_pipelines.objectives.unilm.attention_mask_np` row by row."""
  length = attention_mask_BL.shape[1]
  i_LL = jnp.arange(length)[:, None]
  j_LL = jnp.arange(length)[None, :]
  col = lambda x_B: x_B[:, None, None]
  lower = (mode_B == unilm.LEFT_TO_RIGHT) | (mode_B == unilm.SEQ2SEQ)
  prefix_B = jnp.where(mode_B == unilm.SEQ2SEQ, source_length_B, 0)
  see_BLL = (col(mode_B == unilm.BIDIRECTIONAL) | (j_LL[None] < col(prefix_B))
             | (col(lower) & (j_LL <= i_LL)[None])
             | (col(mode_B == unilm.RIGHT_TO_LEFT) & (j_LL >= i_LL)[None]))
  return see_BLL & (attention_mask_BL[:, None, :] > 0)


class UnilmTask(tasks.MLMTask):
  """The MLM task under the rows' UniLM masks (module docstring). Batch: the MLM features
  plus `unilm_mode` and `source_length` [B]."""
  member_feature = MODE_FEATURE
  member_labels = unilm.MODES

  def __init__(self, config: Any):
    super().__init__(config)
    self.features = self.features + (MODE_FEATURE, SOURCE_FEATURE)

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    return {**super().dummy_batch(batch_size),
            MODE_FEATURE: np.zeros(batch_size, np.int32),
            SOURCE_FEATURE: np.zeros(batch_size, np.int32)}

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    mask_BLL = self_attention_mask(batch[MODE_FEATURE], batch[SOURCE_FEATURE],
                                   batch["attention_mask"])
    masked = {**batch, "attention_mask": mask_BLL.astype(jnp.int32)}
    return super().loss(params, masked, rng, deterministic)


def params(config: Any) -> unilm.UnilmParams:
  o = config.objective
  return unilm.UnilmParams(max_predictions=o.predictions_per_row(config), rates=o.rates,
                           mask_prob=o.mask_prob, mask_token_frac=o.mask_token_frac,
                           random_token_frac=o.random_token_frac,
                           mask_source=o.seq2seq_mask_source)


def _make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  p = params(config)
  return lambda block, rng: unilm.make_example(block, rng, p, vocab)


OBJECTIVE = objectives.register(objectives.Objective(
    name="unilm",
    config=UnilmConfig,
    families=("bert",),
    task=UnilmTask,
    block_length=lambda config: config.data.seq_len - 2,  # [CLS] block [SEP]
    make_example=_make_example,
    packing_refused="a UniLM row is one block under one attention mode (packed rows are not "
                    "implemented for UniLM)",
    special_roles=("cls", "sep", "mask"),
))
