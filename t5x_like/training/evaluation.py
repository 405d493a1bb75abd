"""Evaluation: loss, accuracy and perplexity of params over validation batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.vocab import IGNORE_INDEX
from t5x_like.training import step as step_lib
from t5x_like.training.batches import to_global

# A mixture's task names its members (`member_labels`) and reads which member made each row
# from this feature [B] (t5x_like.objectives.mixture); a task may name another
# (`member_feature`, e.g. UniLM's per-row attention mode).
MEMBER_FEATURE = "mixture_member"
_SUMS = ("loss_sum", "count", "correct")


def make_eval_step(task: Any) -> Callable:
  """The task's eval step (`step.make_eval_step`); for a task with `member_labels` (a
  mixture's, UniLM's modes) it also returns the sums of each member's rows, as
  `loss_sum/<label>` etc.

  Each member's sums come from the task's own loss with the labels of the other members' rows
  ignored: the forward pass is the same computation in each, which XLA computes once (common
  subexpressions), so the per-member figures cost little beyond the loss reductions.
  """
  members = getattr(task, "member_labels", ())
  feature = getattr(task, "member_feature", MEMBER_FEATURE)
  base = step_lib.make_eval_step(task)
  if not members:
    return base

  def eval_step(params: Any, batch: Any, mems: Any) -> tuple[dict[str, Any], Any]:
    out, new_mems = base(params, batch, mems)
    labels, member = batch["labels"], batch[feature]
    own = member.reshape(member.shape + (1,) * (labels.ndim - 1))
    for k, label in enumerate(members):
      masked = {**batch, "labels": jnp.where(own == k, labels, IGNORE_INDEX)}
      sums, _ = base(params, masked, mems)
      out.update({f"{key}/{label}": sums[key] for key in _SUMS})
    return out, new_mems
  return eval_step


def _finish(totals: dict[str, float], suffix: str = "") -> dict[str, float]:
  count = max(totals["count" + suffix], 1.0)
  loss = totals["loss_sum" + suffix] / count
  return {"loss" + suffix: loss, "accuracy" + suffix: totals["correct" + suffix] / count,
          "perplexity" + suffix: math.exp(min(loss, 50.0)),
          "predicted_tokens" + suffix: totals["count" + suffix]}


def evaluate(eval_fn: Callable, params: Any, batches: Iterable[dict[str, np.ndarray]],
             shardings: dict[str, Any], features: tuple[str, ...],
             max_batches: int, baseline_token: int | None = None,
             mems: Any = None) -> dict[str, float]:
  """Loss, accuracy and perplexity over predicted tokens of up to `max_batches` batches.

  mems: the task's initial memory (XLNet), carried from batch to batch (the eval batches come
  in stream order then); None for tasks without memory.

  A mixture's eval step (`make_eval_step`) adds `loss/<member>`, `accuracy/<member>`,
  `perplexity/<member>` and `predicted_tokens/<member>` for each member.
  """
  totals: dict[str, float] = {}
  baseline_hits = 0
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    out, mems = eval_fn(params, to_global(batch, shardings, features), mems)
    out = jax.device_get(out)
    for key, value in out.items():
      totals[key] = totals.get(key, 0.0) + float(value)
    if baseline_token is not None:
      baseline_hits += int(np.sum(np.asarray(batch["labels"]) == baseline_token))
  totals = {key: 0.0 for key in _SUMS} | totals
  metrics = _finish(totals)
  count = max(totals["count"], 1.0)
  if baseline_token is not None:
    # Each host sees only its rows' labels; hosts hold equal shares of every batch.
    metrics["unigram_baseline_accuracy"] = baseline_hits * jax.process_count() / count
  for key in sorted(totals):
    if key.startswith("count/"):
      metrics.update(_finish(totals, key[len("count"):]))
    elif key.startswith(step_lib.RATIO):  # a task's own ratios (step.ratio_metrics)
      name = key[len(step_lib.RATIO):]
      metrics[name] = totals[key] / max(totals[step_lib.RATIO_COUNT + name], 1.0)
  return metrics


__all__ = ["evaluate", "make_eval_step"]
