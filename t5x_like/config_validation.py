"""Cross-field checks of a run configuration: each failure is one `ConfigError` naming the key
and the expected range. Family- and objective-specific rules come from their registered
records (`t5x_like.families`, `t5x_like.objectives`)."""

from __future__ import annotations

import math
from typing import Any

from t5x_like.config_schema import Config, ConfigError


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate(c: Config) -> None:
  """Cross-field checks; each failure names the key and the expected range."""
  m, o, d, t, opt = c.model, c.objective, c.data, c.train, c.optim
  _require(m.vocab_size >= 0, f"model.vocab_size must be >= 0 (0 = the tokenizer's), got "
           f"{m.vocab_size}")
  for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size", "relative_attention_num_buckets",
              "relative_attention_max_distance"):
    _require(getattr(m, key) >= 1, f"model.{key} must be >= 1, got {getattr(m, key)}")
  for key in ("num_decoder_layers", "head_dim"):
    _require(getattr(m, key) >= 0, f"model.{key} must be >= 0 (0 = default), got "
             f"{getattr(m, key)}")
  _require(m.head_dim > 0 or m.hidden_size % m.num_heads == 0,
           f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_heads "
           f"({m.num_heads}) unless model.head_dim is set")
  _require(m.pad_token_id >= 0 and (m.vocab_size == 0 or m.pad_token_id < m.vocab_size),
           f"model.pad_token_id ({m.pad_token_id}) must be in [0, model.vocab_size)")
  _require(m.initializer_factor > 0,
           f"model.initializer_factor must be > 0, got {m.initializer_factor}")
  from t5x_like import families, objectives  # the registries import this module

  family, objective = families.get(m.family), objectives.get(o.name)
  _require(m.family in objective.families,
           f"objective.name {o.name!r} does not train model.family {m.family!r}; " +
           ", ".join(f"{f} takes {' or '.join(_takes(f))}" for f in families.names()))
  _check_owned(c, family, objective)
  for key in ("dropout_rate", "attention_dropout_rate"):
    _require(0.0 <= getattr(m, key) < 1.0, f"model.{key} must be in [0, 1), got "
             f"{getattr(m, key)}")
  _require(0.0 < o.mask_prob < 1.0, f"objective.mask_prob must be in (0, 1), got {o.mask_prob}")
  _require(o.mask_token_frac >= 0 and o.random_token_frac >= 0 and
           o.mask_token_frac + o.random_token_frac <= 1.0 + 1e-9,
           "objective.mask_token_frac and objective.random_token_frac must be >= 0 and sum to "
           f"<= 1, got {o.mask_token_frac} + {o.random_token_frac}")
  _require(o.max_predictions >= 0, f"objective.max_predictions must be >= 0 (0 = derive), got "
           f"{o.max_predictions}")
  _require(0.0 < o.noise_density < 1.0,
           f"objective.noise_density must be in (0, 1), got {o.noise_density}")
  _require(o.mean_noise_span_length >= 1.0,
           f"objective.mean_noise_span_length must be >= 1, got {o.mean_noise_span_length}")
  for key in ("text_infilling", "token_masking", "token_deletion", "permute_sentences",
              "rotate", "insert", "random_ratio"):
    value = getattr(o, key)
    _require(0.0 <= value <= 1.0, f"objective.{key} must be in [0, 1], got {value}")
  # >= 0.01, as denoising.DenoisingParams: below it nearly every span is empty and filling
  # the masking budget takes ~budget/lambda draws.
  _require(o.poisson_lambda >= 0.01 and math.isfinite(o.poisson_lambda),
           f"objective.poisson_lambda must be >= 0.01, got {o.poisson_lambda} (the mean "
           f"span length of text infilling)")
  _require(0 <= o.num_predict < d.seq_len - 3,
           f"objective.num_predict must be in [0, data.seq_len - 3) = [0, {d.seq_len - 3}) "
           f"(0 = seq_len / 6), got {o.num_predict}")
  reuse = m.reuse_len
  _require(m.mem_len >= 0 and reuse >= 0, f"model.mem_len ({m.mem_len}) and model.reuse_len "
           f"({reuse}) must be >= 0")
  _require((m.mem_len > 0) == (reuse > 0),
           f"model.mem_len ({m.mem_len}) and model.reuse_len ({reuse}) must both be 0 (no "
           f"memory) or both > 0: the memory caches the first reuse_len tokens of each row")
  # The rest of a row (A <sep> B <sep> <cls>) is cut from the next reuse_len-token block.
  _require(not reuse or (2 * reuse >= d.seq_len - 3 and reuse + 5 <= d.seq_len),
           f"model.reuse_len ({reuse}) must be in [ceil((data.seq_len - 3) / 2), "
           f"data.seq_len - 5] = [{(d.seq_len - 2) // 2}, {d.seq_len - 5}]: the rest of the row "
           f"comes from the next reuse_len-token block and needs A and B")
  if reuse:
    _require(o.perm_size >= 0 and (o.perm_size == 0 or (
        reuse % o.perm_size == 0 and (d.seq_len - reuse) % o.perm_size == 0)),
             f"objective.perm_size ({o.perm_size}) must divide model.reuse_len ({reuse}) and "
             f"data.seq_len - reuse_len ({d.seq_len - reuse}) (0 = each part one block)")
  else:
    _require(o.perm_size >= 0 and (o.perm_size == 0 or d.seq_len % o.perm_size == 0),
             f"objective.perm_size ({o.perm_size}) must divide data.seq_len ({d.seq_len}) "
             f"(0 = seq_len)")
  _require(o.max_span >= 1, f"objective.max_span must be >= 1, got {o.max_span}")
  _require(o.mask_alpha > 0 and o.mask_beta > 0 and o.mask_alpha >= o.mask_beta,
           f"objective.mask_alpha / mask_beta must be >= 1 with both > 0, got "
           f"{o.mask_alpha} / {o.mask_beta}")
  _require(not d.pack_documents or objective.pack_spec is not None,
           f"data.pack_documents is not supported for objective.name {o.name}: "
           f"{objective.packing_refused}; set data.pack_documents=false")
  _require(o.z_loss >= 0, f"objective.z_loss must be >= 0, got {o.z_loss}")
  _require(o.loss_normalizing_factor >= 0, "objective.loss_normalizing_factor must be >= 0 "
           f"(0 = number of target tokens), got {o.loss_normalizing_factor}")
  _require(d.seq_len >= 8, f"data.seq_len must be >= 8, got {d.seq_len}")
  _require(d.target_len >= 0, f"data.target_len must be >= 0 (0 = derived), got {d.target_len}")
  for key in ("seq_len", "target_len"):  # relative positions (T5, XLNet): no table to exceed
    _require(family.relative_positions or getattr(d, key) <= m.max_position_embeddings,
             f"data.{key} ({getattr(d, key)}) exceeds model.max_position_embeddings "
             f"({m.max_position_embeddings})")
  _require(0.0 <= d.validation_fraction < 1.0,
           f"data.validation_fraction must be in [0, 1), got {d.validation_fraction}")
  _require(d.worker_threads >= 0 and d.prefetch >= 0,
           "data.worker_threads and data.prefetch must be >= 0")
  _require(opt.learning_rate > 0, f"optim.learning_rate must be > 0, got {opt.learning_rate}")
  _require(opt.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {opt.warmup_steps}")
  _require(0.0 <= opt.end_learning_rate_ratio <= 1.0,
           f"optim.end_learning_rate_ratio must be in [0, 1], got {opt.end_learning_rate_ratio}")
  _require(0.0 <= opt.b1 < 1.0 and 0.0 <= opt.b2 < 1.0, "optim.b1 and optim.b2 must be in [0, 1)")
  _require(opt.eps > 0 and opt.weight_decay >= 0 and opt.grad_clip_norm >= 0,
           "optim.eps must be > 0; optim.weight_decay and optim.grad_clip_norm must be >= 0")
  _require(0.0 < opt.adafactor_decay_rate <= 1.0,
           f"optim.adafactor_decay_rate must be in (0, 1], got {opt.adafactor_decay_rate}")
  _require(opt.adafactor_clipping_threshold >= 0 and opt.adafactor_min_dim_size_to_factor >= 1,
           "optim.adafactor_clipping_threshold must be >= 0 (0 = off) and "
           "optim.adafactor_min_dim_size_to_factor >= 1")
  _require(opt.schedule != "rsqrt" or opt.warmup_steps >= 1,
           "optim.schedule rsqrt needs optim.warmup_steps >= 1 (the constant phase)")
  _require(opt.grad_accum_steps >= 1,
           f"optim.grad_accum_steps must be >= 1, got {opt.grad_accum_steps}")
  for key in ("data", "fsdp", "tensor"):
    value = getattr(c.mesh, key)
    _require(value == -1 or value >= 1, f"mesh.{key} must be -1 (the rest) or >= 1, got {value}")
  for key in ("dcn_data", "dcn_fsdp", "dcn_tensor"):
    _require(getattr(c.mesh, key) >= 1, f"mesh.{key} must be >= 1, got {getattr(c.mesh, key)}")
  _require([c.mesh.data, c.mesh.fsdp, c.mesh.tensor].count(-1) <= 1,
           "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
  _require(c.checkpoint.every >= 1, f"checkpoint.every must be >= 1, got {c.checkpoint.every}")
  _require(c.checkpoint.keep >= 1, f"checkpoint.keep must be >= 1, got {c.checkpoint.keep}")
  _require(t.steps >= 1, f"train.steps must be >= 1, got {t.steps}")
  _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
  _require(t.batch_size % opt.grad_accum_steps == 0,
           f"train.batch_size ({t.batch_size}) must be divisible by optim.grad_accum_steps "
           f"({opt.grad_accum_steps})")
  # Micro-batch i takes rows i, i+k, ..: its halves are the global halves iff k | B/2.
  _require(not m.bi_data or (t.batch_size % 2 == 0 and
                             (t.batch_size // 2) % opt.grad_accum_steps == 0),
           f"model.bi_data needs train.batch_size ({t.batch_size}) even with half of it "
           f"divisible by optim.grad_accum_steps ({opt.grad_accum_steps}): the second half of "
           f"every (micro-)batch is the reversed text")
  _require(t.eval_every >= 1 and t.eval_steps >= 0 and t.log_every >= 1,
           "train.eval_every and train.log_every must be >= 1, train.eval_steps >= 0")


def _takes(family: str) -> list[str]:
  """The registered objectives that train `family`."""
  from t5x_like import objectives

  return [o.name for o in objectives.OBJECTIVES if family in o.families]


def _check_owned(c: Config, family: Any, objective: Any) -> None:
  """A `model.*` / `objective.*` key that only another family / objective reads must keep its
  default here: refused rather than silently ignored (e.g. XLNet's bi_data on BERT)."""
  from t5x_like import families, objectives

  for section, current, registry, what in (
      ("model", family, families.FAMILIES, "model.family"),
      ("objective", objective, objectives.OBJECTIVES, "objective.name")):
    values, defaults = getattr(c, section), type(getattr(c, section))()
    for other in registry:
      for key in other.owned_fields:
        if other is current or key in current.owned_fields:
          continue
        _require(getattr(values, key) == getattr(defaults, key),
                 f"{section}.{key} applies to {other.name} only; {what} is {current.name!r}")
