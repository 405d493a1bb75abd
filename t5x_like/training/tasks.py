"""Objective-specific forward passes and losses: what a train/eval step differentiates.

A task turns (params, batch) into summed losses and counts; normalisation happens in the
step so gradient accumulation over micro-batches is exactly a larger batch.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.vocab import IGNORE_INDEX as IGNORE
from t5x_like import models
from t5x_like.config import Config


class Task(Protocol):
  """What the step needs from an objective: init, the batch features, and the summed loss."""
  model: nn.Module
  features: tuple[str, ...]

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]: ...

  def init(self, rng: jax.Array) -> Any: ...

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def initial_mems(task: Task, batch_size: int) -> Any:
  """The recurrent state a task carries from step to step (XLNet's memory), boxed with its
  logical axes; None for tasks without one. A task with memory takes `mems=` in `loss` and
  returns the new memory as aux["mems"]."""
  init = getattr(task, "init_mems", None)
  return None if init is None else init(batch_size)


def _token_losses(logits: jax.Array, targets: jax.Array, valid: jax.Array, z_loss: float,
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Summed NLL (+ z-loss) over valid positions of float32 logits [..., V]."""
  # A gather along the vocabulary, which is never sharded (sharding.RULES: act_vocab): a
  # one-hot product here cost a full [..., V] pass forward and backward.
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  lse = jax.nn.logsumexp(logits, axis=-1)
  valid_f = valid.astype(jnp.float32)
  nll = jnp.sum((lse - target_logit) * valid_f)
  # "Correct" = the target's logit is the maximum (ties count as correct); cheaper than an
  # argmax, which lowers to a slow variadic reduction on CPU.
  best = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
  aux = {"count": jnp.sum(valid), "correct": jnp.sum((target_logit >= best) & valid)}
  if z_loss > 0:
    # Mesh-TF / T5X z-loss: pushes log Z towards 0 so bf16 logits stay well scaled.
    aux["z_loss"] = z_loss * jnp.sum(jnp.square(lse) * valid_f)
    return nll + aux["z_loss"], aux
  return nll, aux


def masked_slots(labels_BL: jax.Array, num_predictions: int
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The masked positions of each row in P = num_predictions static slots.

  Returns (select_BPL: slot p of row b is position l, valid_BP: the slot holds a position,
  order_BP: its position (0 when empty), targets_BP: its label (0 when empty)). Selections
  beyond P get no slot (the caller counts them as dropped).

  The p-th selected position is found by comparing a running count with p: no sort and no
  gather, so it partitions like the surrounding elementwise ops (an on-device argsort here
  produced wrong gradients on a data x fsdp x tensor mesh).
  """
  selected_BL = labels_BL != IGNORE
  rank_BL = jnp.cumsum(selected_BL, axis=1) - 1
  slot_P = jnp.arange(num_predictions)
  select_BPL = selected_BL[:, None, :] & (rank_BL[:, None, :] == slot_P[None, :, None])
  valid_BP = jnp.any(select_BPL, axis=-1)
  order_BP = jnp.sum(select_BPL * jnp.arange(labels_BL.shape[1]), axis=-1)
  targets_BP = jnp.sum(select_BPL * labels_BL[:, None, :], axis=-1)
  return select_BPL, valid_BP, order_BP, targets_BP


class MLMTask:
  """Masked LM on an encoder: logits only at the (at most P) selected positions."""

  def __init__(self, config: Config):
    self.config = config
    self.model = models.build(config.model)
    # `dropped_by_objective` [B]: selections the objective cut to fit num_predictions.
    self.features = models.features(config.model, packed=config.data.pack_documents) + (
        "dropped_by_objective",)
    self.num_predictions = config.objective.predictions_per_row(config)
    self.seq_len = config.data.seq_len
    self.z_loss = config.objective.z_loss

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

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (summed NLL, {count, correct, dropped}) for one (micro-)batch."""
    selected_BL = batch["labels"] != IGNORE
    _, valid_BP, order_BP, targets_BP = masked_slots(batch["labels"], self.num_predictions)
    logits_BPV = self.model.apply(
        {"params": params}, batch["input_ids"], batch.get("attention_mask"),
        batch.get("token_type_ids"), segment_ids=batch.get("segment_ids"),
        positions=batch.get("positions"), masked_positions=order_BP,
        deterministic=deterministic, rngs=None if rng is None else {"dropout": rng})
    logits_BPV = logits_BPV.astype(jnp.float32)
    loss_sum, aux = _token_losses(logits_BPV, targets_BP, valid_BP, self.z_loss)
    # Selections beyond the static P would silently escape the loss: count those the device
    # could not gather and those the objective already cut (absent in hand-made batches).
    aux["dropped"] = jnp.sum(selected_BL) - jnp.sum(valid_BP)
    if "dropped_by_objective" in batch:
      aux["dropped"] = aux["dropped"] + jnp.sum(batch["dropped_by_objective"])
    return loss_sum, aux


class Seq2SeqTask:
  """Encoder-decoder, teacher-forced: loss on every target token (`labels` != -100).

  Batch: `input_ids` [B, L], `decoder_input_ids` [B, T] (labels shifted right per segment,
  starting with the family's decoder start id: T5 pad, BART </s>), `labels` [B, T]; packed
  rows add `segment_ids`, `positions`, `decoder_segment_ids`, `decoder_positions`.
  """

  def __init__(self, config: Config):
    self.config = config
    self.model = models.build(config.model)
    self.features = models.features(config.model, packed=config.data.pack_documents)
    self.z_loss = config.objective.z_loss

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    # Parameter shapes do not depend on the lengths (BART's position tables are sized by
    # max_position_embeddings): initialise on short rows.
    enc, dec = (batch_size, 8), (batch_size, 4)
    return {"input_ids": np.ones(enc, np.int32), "decoder_input_ids": np.zeros(dec, np.int32),
            "labels": np.ones(dec, np.int32)}

  def init(self, rng: jax.Array) -> Any:
    batch = self.dummy_batch(1)
    return self.model.init(rng, batch["input_ids"], batch["decoder_input_ids"])

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (summed NLL + z-loss, {count, correct, dropped, [z_loss]})."""
    labels_BT = batch["labels"]
    logits_BTV = self.model.apply(
        {"params": params}, batch["input_ids"], batch["decoder_input_ids"],
        attention_mask=batch.get("attention_mask"),
        segment_ids=batch.get("segment_ids"), decoder_segment_ids=batch.get("decoder_segment_ids"),
        positions=batch.get("positions"), decoder_positions=batch.get("decoder_positions"),
        deterministic=deterministic, rngs=None if rng is None else {"dropout": rng})
    valid_BT = labels_BT != IGNORE
    loss_sum, aux = _token_losses(logits_BTV.astype(jnp.float32),
                                  jnp.where(valid_BT, labels_BT, 0), valid_BT, self.z_loss)
    aux["dropped"] = jnp.zeros((), jnp.int32)
    return loss_sum, aux


class PermutationLMTask:
  """XLNet: two-stream forward, loss on the query stream at the P targets of each row.

  Batch: `input_ids`, `token_type_ids` [B, L] (content stream keeps the real tokens),
  `perm_mask` [B, L, L] (1 = cannot attend), `target_mapping` [B, P, L] one-hot rows,
  `labels` [B, P] (-100 on padding rows).
  """

  def __init__(self, config: Config):
    self.config = config
    self.model = models.build(config.model)
    self.features = models.features(config.model)
    self.seq_len = config.data.seq_len
    self.z_loss = config.objective.z_loss

  def init_mems(self, batch_size: int) -> Any:
    """Zero memory [layers, B, mem_len, D] (the original starts from zeros), or None."""
    m = self.config.model
    if not m.mem_len:
      return None
    zeros = jnp.zeros((m.num_layers, batch_size, m.mem_len, m.hidden_size),
                      jnp.dtype(m.dtype))
    return nn.LogicallyPartitioned(zeros, (None, "act_batch", None, "act_embed"))

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    # No parameter depends on the lengths (relative positions): initialise on short rows.
    length, predict = 8, 2
    mapping = np.zeros((batch_size, predict, length), np.float32)
    mapping[:, 0, 0] = mapping[:, 1, 1] = 1.0
    return {"input_ids": np.ones((batch_size, length), np.int32),
            "token_type_ids": np.zeros((batch_size, length), np.int32),
            "perm_mask": np.zeros((batch_size, length, length), np.float32),
            "target_mapping": mapping, "labels": np.ones((batch_size, predict), np.int32)}

  def init(self, rng: jax.Array) -> Any:
    b = self.dummy_batch(2)  # even: bi_data splits the batch in halves
    return self.model.init(rng, b["input_ids"], b["token_type_ids"], b["perm_mask"],
                           b["target_mapping"])

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool, mems: jax.Array | None = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (summed NLL + z-loss, {count, correct, dropped, [z_loss], [mems]}).

    With `mems` (the previous step's memory of these rows) the model attends to it and aux
    carries the new memory (no gradient flows into it).
    """
    labels_BP = batch["labels"]
    out = self.model.apply(
        {"params": params}, batch["input_ids"], batch["token_type_ids"], batch["perm_mask"],
        batch["target_mapping"], mems=mems, deterministic=deterministic,
        rngs=None if rng is None else {"dropout": rng}, return_mems=mems is not None)
    logits_BPV, new_mems = out if mems is not None else (out, None)
    valid_BP = labels_BP != IGNORE
    loss_sum, aux = _token_losses(logits_BPV.astype(jnp.float32),
                                  jnp.where(valid_BP, labels_BP, 0), valid_BP, self.z_loss)
    aux["dropped"] = jnp.zeros((), jnp.int32)
    if new_mems is not None:
      aux["mems"] = new_mems
    return loss_sum, aux


class DecoderLMTask:
  """Decoder-only LM (causal or prefix): loss on every labelled position of the row.

  Batch: `input_ids`, `labels` [B, L] (labels[i] is the token after input i, -100 where none
  is scored); packed rows add `segment_ids` (0 = padding) and `positions` (restarting per
  document); prefix LM adds `prefix` (1 on the bidirectionally seen prefix inputs). The
  family's module takes them as `(input_ids, segment_ids=, positions=, prefix_BL=)` and
  returns [B, L, V] logits.
  """

  def __init__(self, config: Config, prefix: bool = False):
    self.config = config
    self.prefix = prefix
    self.model = models.build(config.model)
    self.features = models.features(config.model, packed=config.data.pack_documents) + (
        ("prefix",) if prefix else ())
    self.z_loss = config.objective.z_loss

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    # No parameter depends on the length (rotary or ALiBi positions): initialise on short rows.
    shape = (batch_size, 8)
    return {"input_ids": np.ones(shape, np.int32), "labels": np.ones(shape, np.int32)}

  def init(self, rng: jax.Array) -> Any:
    return self.model.init(rng, self.dummy_batch(1)["input_ids"])

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (summed NLL + z-loss, {count, correct, dropped, [z_loss]})."""
    prefix_BL = batch["prefix"].astype(bool) if self.prefix else None
    logits_BLV = self.model.apply(
        {"params": params}, batch["input_ids"], segment_ids_BL=batch.get("segment_ids"),
        positions_BL=batch.get("positions"), prefix_BL=prefix_BL, deterministic=deterministic,
        rngs=None if rng is None else {"dropout": rng})
    labels_BL = batch["labels"]
    valid_BL = labels_BL != IGNORE
    loss_sum, aux = _token_losses(logits_BLV.astype(jnp.float32),
                                  jnp.where(valid_BL, labels_BL, 0), valid_BL, self.z_loss)
    aux["dropped"] = jnp.zeros((), jnp.int32)
    return loss_sum, aux


class LoraTask:
  """A task whose model's targeted Dense layers carry LoRA adapters (`t5x_like.models.lora`):
  init and loss run inside the LoRA context; everything else is the wrapped task's."""

  def __init__(self, task: Task, spec: Any):
    self.task = task
    self.lora = spec

  def __getattr__(self, name: str) -> Any:
    return getattr(self.task, name)

  def init(self, rng: jax.Array) -> Any:
    from t5x_like.models import lora
    with lora.active(self.lora):
      variables = self.task.init(rng)
    lora.check_targets(self.lora, nn.meta.unbox(variables["params"]))
    return variables

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool, **kwargs: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    from t5x_like.models import lora
    with lora.active(self.lora, deterministic):
      return self.task.loss(params, batch, rng, deterministic=deterministic, **kwargs)


def check_lora_targets(config: Config) -> None:
  """A LoRA run's targets and modules_to_save name layers of the model (ConfigError naming
  the model's layers otherwise); traced only, nothing is computed."""
  if config.lora.rank:
    jax.eval_shape(make_task(config).init, jax.random.key(0))


def make_task(config: Config) -> Task:
  """The training task of the run's objective (its registered `Objective.task`), with LoRA
  adapters when `lora.rank` > 0."""
  from t5x_like import objectives  # the objective records import the tasks above
  from t5x_like.models import lora

  task = objectives.get(config.objective.name).task(config)
  spec = lora.spec_of(config)
  return task if spec is None else LoraTask(task, spec)


def param_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.meta.unbox(params))))
