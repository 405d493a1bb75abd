"""ELECTRA's replaced-token detection as a registered objective, with its training task.

The task runs two forward passes over one param tree (`families/electra`): the generator
(an MLM) scores the selected positions of the masked row; a token is sampled there from its
softmax by Gumbel-max (no gradient flows through sampling); the discriminator reads the row
with the samples in place and labels each non-pad token replaced (1: the sample differs
from the original) or original (0). A correctly sampled token is original, and every
position outside the selection is original.

Loss (google-research/electra): mean generator NLL over the selected positions +
`discriminator_weight` (50) x mean binary cross-entropy over the non-pad tokens. The step
divides the task's summed loss by the number of selected tokens, so the discriminator's sum
is scaled by selected / non-pad tokens of the (micro-)batch: exactly the formula for one
batch; with gradient accumulation each micro-batch weights its own discriminator mean.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines.objectives import replaced_token_detection as rtd
from data_pipelines.vocab import IGNORE_INDEX as IGNORE
from t5x_like import models, objectives
from t5x_like.config_schema import ObjectiveConfig
from t5x_like.config_validation import require
from t5x_like.training import tasks


@dataclasses.dataclass(frozen=True)
class RTDConfig(ObjectiveConfig):
  """mask_prob of each row's tokens are selected; of those mask_token_frac become [MASK],
  the rest stay. The loss weighs the discriminator by discriminator_weight; the generator
  samples at `temperature`."""
  mask_prob: float = 0.15
  mask_token_frac: float = 0.85
  discriminator_weight: float = 50.0
  temperature: float = 1.0
  max_predictions: int = 0  # 0 = the most a row can select (never clipped)

  def check(self, config: Any) -> None:
    require(0.0 < self.mask_prob < 1.0,
            f"objective.mask_prob must be in (0, 1), got {self.mask_prob}")
    require(0.0 <= self.mask_token_frac <= 1.0,
            f"objective.mask_token_frac must be in [0, 1], got {self.mask_token_frac}")
    require(self.discriminator_weight >= 0,
            f"objective.discriminator_weight must be >= 0, got {self.discriminator_weight}")
    require(self.temperature > 0, f"objective.temperature must be > 0, got {self.temperature}")
    require(self.max_predictions >= 0, "objective.max_predictions must be >= 0 (0 = derive), "
            f"got {self.max_predictions}")

  def predictions_per_row(self, config: Any) -> int:
    return self.max_predictions or rtd.default_max_predictions(config.data.seq_len,
                                                               self.mask_prob)


def gumbel_sample(logits: jax.Array, rng: jax.Array, temperature: float = 1.0) -> jax.Array:
  """argmax(logits / temperature + Gumbel noise): a draw from softmax(logits / temperature)
  along the last axis, int32, with no gradient."""
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  gumbel = jax.random.gumbel(rng, logits.shape, jnp.float32)
  return jnp.argmax(logits / temperature + gumbel, axis=-1).astype(jnp.int32)


class ReplacedTokenDetectionTask:
  """Generator MLM + discriminator replaced-token detection (see the module docstring).

  Batch: `input_ids` (masked), `attention_mask`, `token_type_ids`, `labels` (original ids at
  the selected positions, -100 elsewhere) [B, L]. The summed loss's `count` is the selected
  tokens (so the logged `loss` is the total and `accuracy` the generator's); `ratios` holds
  generator and discriminator losses, the discriminator's accuracy and the replaced share.
  """

  def __init__(self, config: Any):
    self.config = config
    self.model = models.build(config.model)
    self.features = models.features(config.model) + ("dropped_by_objective",)
    self.num_predictions = config.objective.predictions_per_row(config)
    self.seq_len = config.data.seq_len
    self.z_loss = config.objective.z_loss
    self.weight = config.objective.discriminator_weight
    self.temperature = config.objective.temperature

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    shape = (batch_size, self.seq_len)
    return {"input_ids": np.zeros(shape, np.int32), "attention_mask": np.ones(shape, np.int32),
            "token_type_ids": np.zeros(shape, np.int32),
            "labels": np.full(shape, IGNORE, np.int32)}

  def init(self, rng: jax.Array) -> Any:
    b = self.dummy_batch(1)
    return self.model.init(rng, b["input_ids"], b["attention_mask"], b["token_type_ids"],
                           masked_positions=np.zeros((1, self.num_predictions), np.int32),
                           tower="both")

  def replace(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array,
              deterministic: bool) -> dict[str, jax.Array]:
    """The generator's half: its logits at the selected positions, its samples and the
    discriminator's input and labels.

    Returns {logits_BPV, targets_BP, valid_BP, sampled_BP, fake_BL, replaced_BL}.
    """
    labels_BL = batch["labels"]
    selected_BL = labels_BL != IGNORE
    select_BPL, valid_BP, order_BP, targets_BP = tasks.masked_slots(labels_BL,
                                                                    self.num_predictions)
    gen_rng, sample_rng = jax.random.split(rng)
    logits_BPV = self.model.apply(
        {"params": params}, batch["input_ids"], batch.get("attention_mask"),
        batch.get("token_type_ids"), masked_positions=order_BP, tower="generator",
        deterministic=deterministic, rngs={"dropout": gen_rng}).astype(jnp.float32)
    sampled_BP = gumbel_sample(logits_BPV, sample_rng, self.temperature)
    # Scatter the samples into their positions as a one-hot sum (each position is one
    # slot at most).
    placed_BL = jnp.any(select_BPL & valid_BP[:, :, None], axis=1)
    samples_BL = jnp.sum(select_BPL * sampled_BP[:, :, None], axis=1)
    fake_BL = jnp.where(placed_BL, samples_BL, batch["input_ids"]).astype(jnp.int32)
    replaced_BL = placed_BL & (fake_BL != labels_BL)
    return {"logits_BPV": logits_BPV, "targets_BP": targets_BP, "valid_BP": valid_BP,
            "sampled_BP": sampled_BP, "fake_BL": fake_BL, "replaced_BL": replaced_BL,
            "selected_BL": selected_BL}

  def discriminator_loss(self, params: Any, batch: dict[str, jax.Array],
                         g: dict[str, jax.Array], rng: jax.Array, deterministic: bool
                         ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(summed BCE, non-pad tokens, correct, flagged [B, L]: real tokens the discriminator
    calls replaced) of the discriminator on `replace`'s row."""
    disc_BL = self.model.apply(
        {"params": params}, g["fake_BL"], batch.get("attention_mask"),
        batch.get("token_type_ids"), tower="discriminator", deterministic=deterministic,
        rngs={"dropout": rng})
    mask = batch.get("attention_mask")
    real_BL = jnp.ones_like(g["fake_BL"], bool) if mask is None else mask > 0
    bce_BL = optax.sigmoid_binary_cross_entropy(disc_BL.astype(jnp.float32),
                                                g["replaced_BL"].astype(jnp.float32))
    flagged_BL = (disc_BL > 0) & real_BL
    correct = jnp.sum((flagged_BL == g["replaced_BL"]) & real_BL)
    return jnp.sum(bce_BL * real_BL), jnp.sum(real_BL), correct, flagged_BL

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool) -> tuple[jax.Array, dict[str, Any]]:
    """Returns (generator NLL sum + weight x scaled discriminator BCE sum, aux)."""
    rng = jax.random.key(0) if rng is None else rng  # evaluation: fixed samples
    gen_rng, disc_rng = jax.random.split(rng)
    g = self.replace(params, batch, gen_rng, deterministic)
    gen_sum, aux = tasks._token_losses(g["logits_BPV"], g["targets_BP"], g["valid_BP"],
                                       self.z_loss)
    disc_sum, tokens, correct, flagged_BL = self.discriminator_loss(params, batch, g, disc_rng,
                                                                    deterministic)
    real_BL = g["fake_BL"] >= 0 if batch.get("attention_mask") is None else (
        batch["attention_mask"] > 0)
    scale = aux["count"].astype(jnp.float32) / jnp.maximum(tokens, 1).astype(jnp.float32)
    total = gen_sum + self.weight * scale * disc_sum
    gen_nll = gen_sum - aux.get("z_loss", 0.0)
    aux["dropped"] = jnp.sum(g["selected_BL"]) - jnp.sum(g["valid_BP"])
    if "dropped_by_objective" in batch:
      aux["dropped"] = aux["dropped"] + jnp.sum(batch["dropped_by_objective"])
    aux["ratios"] = {
        "generator_loss": (gen_nll, aux["count"]),
        "discriminator_loss": (disc_sum, tokens),
        "discriminator_accuracy": (correct, tokens),
        "replaced_fraction": (jnp.sum(g["replaced_BL"] & real_BL), tokens),
        # as the reference's eval: of the flagged tokens, the replaced share; of the
        # replaced, the flagged share; how often the generator's draw is the original
        "discriminator_precision": (jnp.sum(flagged_BL & g["replaced_BL"]),
                                    jnp.sum(flagged_BL)),
        "discriminator_recall": (jnp.sum(flagged_BL & g["replaced_BL"]),
                                 jnp.sum(g["replaced_BL"] & real_BL)),
        "sampled_accuracy": (jnp.sum((g["sampled_BP"] == g["targets_BP"]) & g["valid_BP"]),
                             aux["count"]),
    }
    return total, aux


def params(config: Any) -> rtd.RTDParams:
  o = config.objective
  return rtd.RTDParams(max_predictions=o.predictions_per_row(config), mask_prob=o.mask_prob,
                       mask_token_frac=o.mask_token_frac)


def _make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  p = params(config)
  return lambda block, rng: rtd.make_example(block, rng, p, vocab)


OBJECTIVE = objectives.register(objectives.Objective(
    name="replaced_token_detection",
    config=RTDConfig,
    families=("electra",),
    task=ReplacedTokenDetectionTask,
    block_length=lambda config: config.data.seq_len - 2,  # [CLS] block [SEP]
    make_example=_make_example,
    packing_refused="the discriminator scores every token of a row as one sequence (packed "
                    "rows are not implemented for replaced-token detection)",
    special_roles=("cls", "sep", "mask"),
))
