"""Evaluation: loss, accuracy and perplexity of params over validation batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from t5x_like.training.batches import to_global


def evaluate(eval_fn: Callable, params: Any, batches: Iterable[dict[str, np.ndarray]],
             shardings: dict[str, Any], features: tuple[str, ...],
             max_batches: int, baseline_token: int | None = None,
             mems: Any = None) -> dict[str, float]:
  """Loss, accuracy and perplexity over predicted tokens of up to `max_batches` batches.

  mems: the task's initial memory (XLNet), carried from batch to batch (the eval batches come
  in stream order then); None for tasks without memory.
  """
  totals = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0}
  baseline_hits = 0
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    out, mems = eval_fn(params, to_global(batch, shardings, features), mems)
    out = jax.device_get(out)
    for key in totals:
      totals[key] += float(out[key])
    if baseline_token is not None:
      baseline_hits += int(np.sum(np.asarray(batch["labels"]) == baseline_token))
  count = max(totals["count"], 1.0)
  loss = totals["loss_sum"] / count
  metrics = {"loss": loss, "accuracy": totals["correct"] / count,
             "perplexity": math.exp(min(loss, 50.0)), "predicted_tokens": totals["count"]}
  if baseline_token is not None:
    # Each host sees only its rows' labels; hosts hold equal shares of every batch.
    metrics["unigram_baseline_accuracy"] = baseline_hits * jax.process_count() / count
  return metrics


__all__ = ["evaluate"]
