"""Optimiser and learning-rate schedules (optax)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from t5x_like.config import OptimConfig

# BERT convention: no weight decay on biases and LayerNorm parameters.
_NO_DECAY = ("bias", "scale")


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then linear/cosine decay or constant."""
  peak = cfg.learning_rate
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  end = peak * cfg.end_learning_rate_ratio
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == "linear":
    after = optax.linear_schedule(peak, end, decay_steps)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_learning_rate_ratio)
  else:
    after = optax.constant_schedule(peak)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
  """True where weight decay applies (kernels and embeddings), False for biases and norms."""
  def keep(path: tuple[Any, ...], _: Any) -> bool:
    # The last dict key names the parameter (boxed params add an attribute key after it).
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(names[-1]) not in _NO_DECAY
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
