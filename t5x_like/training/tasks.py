"""Objective-specific forward passes and losses: what a train/eval step differentiates.

A task turns (params, batch) into summed losses and counts; normalisation happens in the
step so gradient accumulation over micro-batches is exactly a larger batch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like import models
from t5x_like.config import Config, max_predictions

IGNORE = -100


class MLMTask:
  """Masked LM on an encoder: logits only at the (at most P) selected positions."""

  def __init__(self, config: Config):
    self.config = config
    self.model = models.build(config.model)
    self.features = models.features(config.model)
    self.num_predictions = max_predictions(config)
    self.seq_len = config.data.seq_len

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    shape = (batch_size, self.seq_len)
    return {"input_ids": np.zeros(shape, np.int32), "attention_mask": np.ones(shape, np.int32),
            "token_type_ids": np.zeros(shape, np.int32),
            "labels": np.full(shape, IGNORE, np.int32)}

  def init(self, rng: jax.Array) -> Any:
    batch = self.dummy_batch(1)
    return self.model.init(rng, batch["input_ids"], batch["attention_mask"],
                           batch["token_type_ids"],
                           masked_positions=np.zeros((1, self.num_predictions), np.int32))

  def count(self, batch: dict[str, jax.Array]) -> jax.Array:
    """Number of predicted tokens in the batch (the loss normaliser)."""
    return jnp.sum(batch["labels"] != IGNORE)

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (summed NLL, {count, correct, dropped}) for one (micro-)batch."""
    labels_BL = batch["labels"]
    selected_BL = labels_BL != IGNORE
    # Stable argsort of "not selected" lists the selected positions first, in order.
    order_BP = jnp.argsort(~selected_BL, axis=1, stable=True)[:, :self.num_predictions]
    valid_BP = jnp.take_along_axis(selected_BL, order_BP, axis=1)
    targets_BP = jnp.where(valid_BP, jnp.take_along_axis(labels_BL, order_BP, axis=1), 0)
    logits_BPV = self.model.apply(
        {"params": params}, batch["input_ids"], batch.get("attention_mask"),
        batch.get("token_type_ids"), segment_ids=batch.get("segment_ids"),
        positions=batch.get("positions"), masked_positions=order_BP,
        deterministic=deterministic, rngs=None if rng is None else {"dropout": rng})
    logp_BPV = jax.nn.log_softmax(logits_BPV.astype(jnp.float32), axis=-1)
    nll_BP = -jnp.take_along_axis(logp_BPV, targets_BP[..., None], axis=-1)[..., 0]
    valid_f = valid_BP.astype(jnp.float32)
    correct = jnp.sum((jnp.argmax(logits_BPV, -1) == targets_BP) & valid_BP)
    aux = {"count": jnp.sum(valid_BP), "correct": correct,
           # selected positions beyond the static P would silently escape the loss
           "dropped": jnp.sum(selected_BL) - jnp.sum(valid_BP)}
    return jnp.sum(nll_BP * valid_f), aux


def make_task(config: Config) -> MLMTask:
  if config.objective.name == "mlm":
    return MLMTask(config)
  raise ValueError(f"objective.name {config.objective.name!r} is not supported")


def param_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.meta.unbox(params))))
