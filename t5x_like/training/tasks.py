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
    # The p-th selected position of each row, found by comparing a running count with p:
    # no sort and no gather, so it partitions like the surrounding elementwise ops (an
    # on-device argsort here produced wrong gradients on a data x fsdp x tensor mesh).
    rank_BL = jnp.cumsum(selected_BL, axis=1) - 1
    slot_P = jnp.arange(self.num_predictions)
    select_BPL = selected_BL[:, None, :] & (rank_BL[:, None, :] == slot_P[None, :, None])
    valid_BP = jnp.any(select_BPL, axis=-1)
    order_BP = jnp.sum(select_BPL * jnp.arange(labels_BL.shape[1]), axis=-1)
    targets_BP = jnp.sum(select_BPL * labels_BL[:, None, :], axis=-1)
    logits_BPV = self.model.apply(
        {"params": params}, batch["input_ids"], batch.get("attention_mask"),
        batch.get("token_type_ids"), segment_ids=batch.get("segment_ids"),
        positions=batch.get("positions"), masked_positions=order_BP,
        deterministic=deterministic, rngs=None if rng is None else {"dropout": rng})
    logits_BPV = logits_BPV.astype(jnp.float32)
    target_logit_BP = jnp.sum(logits_BPV * jax.nn.one_hot(targets_BP, logits_BPV.shape[-1]),
                              axis=-1)
    nll_BP = jax.nn.logsumexp(logits_BPV, axis=-1) - target_logit_BP
    valid_f = valid_BP.astype(jnp.float32)
    # "Correct" = the target's logit is the maximum (ties count as correct); cheaper than an
    # argmax, which lowers to a slow variadic reduction on CPU.
    best_BP = jax.lax.stop_gradient(jnp.max(logits_BPV, axis=-1))
    correct = jnp.sum((target_logit_BP >= best_BP) & valid_BP)
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
