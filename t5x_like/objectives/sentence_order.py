"""ALBERT's pretraining objective as a registered record: whole-word n-gram MLM plus
sentence-order prediction (SOP), with its training task.

Rows: `data_pipelines.objectives.sentence_order` (`[CLS] A [SEP] B [SEP]`, A and B two
consecutive segments of one document swapped with p=0.5, label 1 = swapped; n-grams of
n <= 3 whole words with p ~ 1/n, 80/10/10). Loss (google-research/albert): mean MLM NLL over
the masked tokens + `sop_weight` (1) x mean SOP cross-entropy over the rows. The step divides
the summed loss by the masked tokens, so the SOP sum is scaled by masked tokens / rows of the
(micro-)batch, as ELECTRA's discriminator term.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines import pipeline
from data_pipelines.objectives import mlm
from data_pipelines.objectives import sentence_order as sop
from data_pipelines.vocab import IGNORE_INDEX as IGNORE
from t5x_like import models, objectives
from t5x_like.config_schema import ObjectiveConfig
from t5x_like.config_validation import require
from t5x_like.training import tasks

LABEL = "sentence_order_label"


@dataclasses.dataclass(frozen=True)
class SentenceOrderConfig(ObjectiveConfig):
  """MLM over whole-word n-grams (n <= max_ngram, p ~ 1/n; mask_prob of the words; of the
  selected tokens mask_token_frac become [MASK], random_token_frac a random token) plus
  sentence-order prediction (a consecutive pair swapped with swap_prob), weighted sop_weight."""
  mask_prob: float = 0.15
  mask_token_frac: float = 0.8
  random_token_frac: float = 0.1
  max_ngram: int = 3
  swap_prob: float = 0.5
  sop_weight: float = 1.0
  max_predictions: int = 0  # 0 = derive from data.seq_len (as mlm's whole-word bound)

  def check(self, config: Any) -> None:
    require(0.0 < self.mask_prob < 1.0,
            f"objective.mask_prob must be in (0, 1), got {self.mask_prob}")
    require(self.mask_token_frac >= 0 and self.random_token_frac >= 0 and
            self.mask_token_frac + self.random_token_frac <= 1.0 + 1e-9,
            "objective.mask_token_frac and objective.random_token_frac must be >= 0 and sum "
            f"to <= 1, got {self.mask_token_frac} + {self.random_token_frac}")
    require(self.max_ngram >= 1, f"objective.max_ngram must be >= 1, got {self.max_ngram}")
    require(0.0 <= self.swap_prob <= 1.0,
            f"objective.swap_prob must be in [0, 1], got {self.swap_prob}")
    require(self.sop_weight >= 0, f"objective.sop_weight must be >= 0, got {self.sop_weight}")
    require(self.max_predictions >= 0, "objective.max_predictions must be >= 0 (0 = derive), "
            f"got {self.max_predictions}")
    require(config.data.seq_len >= 8,
            f"data.seq_len ({config.data.seq_len}) must be >= 8 for a sentence pair")

  def predictions_per_row(self, config: Any) -> int:
    """max_predictions, or the whole-word bound plus 2 (max_ngram - 1) slots: the last
    n-gram may overshoot the word budget by up to max_ngram - 1 words (on the bundled corpus
    at L=128 this cuts ~0.15% of the predictions without the slots, < 0.05% with them)."""
    if self.max_predictions:
      return self.max_predictions
    bound = mlm.default_max_predictions(config.data.seq_len, self.mask_prob, whole_word=True)
    return min(bound + 2 * (self.max_ngram - 1), config.data.seq_len - 3)


class SentenceOrderTask(tasks.MLMTask):
  """MLM at the (at most P) masked positions + SOP on [CLS] (see the module docstring).

  Batch: `input_ids` (masked), `attention_mask`, `token_type_ids`, `labels` [B, L] and
  `sentence_order_label` [B]. The summed loss's `count` is the masked tokens (the logged
  `accuracy` is the MLM's); `ratios` hold the MLM and SOP losses and the SOP accuracy.
  """

  def __init__(self, config: Any):
    super().__init__(config)
    self.features = models.features(config.model) + (LABEL, "dropped_by_objective")
    self.weight = config.objective.sop_weight

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    return {**super().dummy_batch(batch_size), LABEL: np.zeros((batch_size,), np.int32)}

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool) -> tuple[jax.Array, dict[str, Any]]:
    """Returns (MLM NLL sum + weight x scaled SOP sum, aux)."""
    selected_BL = batch["labels"] != IGNORE
    _, valid_BP, order_BP, targets_BP = tasks.masked_slots(batch["labels"],
                                                           self.num_predictions)
    logits_BPV, sop_B2 = self.model.apply(
        {"params": params}, batch["input_ids"], batch.get("attention_mask"),
        batch.get("token_type_ids"), masked_positions=order_BP, deterministic=deterministic,
        sop=True, rngs=None if rng is None else {"dropout": rng})
    mlm_sum, aux = tasks._token_losses(logits_BPV.astype(jnp.float32), targets_BP, valid_BP,
                                       self.z_loss)
    order_B = batch[LABEL]
    sop_sum = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        sop_B2.astype(jnp.float32), order_B))
    rows = jnp.asarray(order_B.shape[0], jnp.float32)
    scale = aux["count"].astype(jnp.float32) / rows
    total = mlm_sum + self.weight * scale * sop_sum
    aux["dropped"] = jnp.sum(selected_BL) - jnp.sum(valid_BP)
    if "dropped_by_objective" in batch:
      aux["dropped"] = aux["dropped"] + jnp.sum(batch["dropped_by_objective"])
    correct = jnp.sum(jnp.argmax(sop_B2, axis=-1) == order_B)
    n_rows = jnp.asarray(order_B.shape[0], jnp.int32)
    aux["ratios"] = {
        "mlm_loss": (mlm_sum - aux.get("z_loss", 0.0), aux["count"]),
        "sop_loss": (sop_sum, n_rows),
        "sop_accuracy": (correct, n_rows),
        "sop_swapped": (jnp.sum(order_B), n_rows),
    }
    return total, aux


def params(config: Any) -> sop.SOPParams:
  o = config.objective
  masking = mlm.MLMParams(max_predictions=o.predictions_per_row(config), mask_prob=o.mask_prob,
                          mask_token_frac=o.mask_token_frac,
                          random_token_frac=o.random_token_frac, whole_word=True,
                          max_ngram=o.max_ngram)
  return sop.SOPParams(masking=masking, swap_prob=o.swap_prob)


def _make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  p = params(config)
  return lambda block, rng: sop.make_example(block, rng, p, vocab)


def fallback_report(config: Any, tokenizer: Any, manifest: Any, max_blocks: int = 2000
                    ) -> str | None:
  """A warning with the count of training rows that cannot be a consecutive sentence pair.

  A block whose document holds one sentence (no piece ending in . ! ? 。 ？ ！ inside it)
  falls back, as ALBERT's create_pretraining_data does for a one-sentence chunk, to a random
  pair: A = that document, B = another document of the block, label 1; a one-sentence block
  with no other document is split mid-sentence at a random word. Every record is read when
  the split has at most `max_blocks`, else `max_blocks` evenly spaced ones. None when every
  read row is a sentence pair.
  """
  vocab = tokenizer.vocab_info()
  n = pipeline.num_records(manifest.directory, "train")
  picks = np.unique(np.linspace(0, n - 1, min(n, max_blocks)).astype(np.int64))
  kinds = [sop.pair_kind(pipeline.read_block(manifest.directory, "train", int(i)), vocab)
           for i in picks]
  counts = {kind: kinds.count(kind) for kind in sop.KINDS}
  if counts["pair"] == len(kinds):
    return None
  of = f"of {len(kinds)} training rows" + ("" if len(kinds) == n else f" (sampled of {n})")
  return (f"warning: sentence-order prediction: {counts['random']} {of} hold a one-sentence "
          f"document and fall back to a random pair (B from another document of the row, "
          f"label 1), {counts['mid_sentence']} are one sentence split mid-sentence at a word, "
          f"{counts['partial']} hold at most one whole sentence and keep their partial ones, "
          f"{counts['empty']} are empty; sentences end at the tokenizer's pieces ending in "
          f". ! ? 。 ？ ！ (a corpus of one-sentence documents has no consecutive pairs)")


OBJECTIVE = objectives.register(objectives.Objective(
    name="sentence_order",
    config=SentenceOrderConfig,
    families=("albert",),
    task=SentenceOrderTask,
    block_length=lambda config: config.data.seq_len - 3,  # [CLS] A [SEP] B [SEP]
    make_example=_make_example,
    packing_refused="a row is one sentence pair with its own order label (packed rows are not "
                    "implemented for sentence-order prediction)",
    special_roles=("cls", "sep", "mask"),
    data_warning=fallback_report,
))
