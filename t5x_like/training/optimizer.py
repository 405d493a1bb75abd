"""Optimiser and learning-rate schedules (optax)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from t5x_like.config import OptimConfig

# BERT convention: no weight decay on biases and LayerNorm parameters (HF Trainer's rule,
# which also spares BART's final_logits_bias).
_NO_DECAY = ("bias", "scale", "final_logits_bias")


def rsqrt_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
  """T5's inverse square root: constant `peak` for `warmup_steps`, then peak*sqrt(w/step).

  T5 and T5X write it as 1/sqrt(max(step, 10_000)), i.e. peak 0.01 with 10k warmup steps.
  """
  def schedule(step: jax.Array) -> jax.Array:
    step = jnp.maximum(jnp.asarray(step, jnp.float32), float(warmup_steps))
    return peak * jnp.sqrt(float(warmup_steps)) * jax.lax.rsqrt(step)
  return schedule


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then linear/cosine decay or constant; or T5's
  `rsqrt` (constant for warmup_steps, then inverse square root decay)."""
  if cfg.schedule == "rsqrt":
    return rsqrt_schedule(cfg.learning_rate, cfg.warmup_steps)
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
  if cfg.name == "adafactor":
    parts.append(optax.adafactor(
        schedule, min_dim_size_to_factor=cfg.adafactor_min_dim_size_to_factor,
        decay_rate=cfg.adafactor_decay_rate,
        multiply_by_parameter_scale=cfg.adafactor_multiply_by_parameter_scale,
        clipping_threshold=cfg.adafactor_clipping_threshold or None,
        momentum=cfg.b1 or None, weight_decay_rate=cfg.weight_decay or None,
        weight_decay_mask=decay_mask))
  else:
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
