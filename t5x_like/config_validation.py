"""Cross-field checks of a run configuration: each failure is one `ConfigError` naming the key
and the expected range. Family- and objective-specific rules come from their registered
records (`t5x_like.families`, `t5x_like.objectives`)."""

from __future__ import annotations

from typing import Any

from t5x_like.config_schema import Config, ConfigError


def require(ok: bool, message: str) -> None:
  """Raises ConfigError(message) unless `ok`."""
  if not ok:
    raise ConfigError(message)


_require = require


def at_least(section: Any, name: str, keys: tuple[str, ...], low: int, note: str = "") -> None:
  """Each of `keys` of `section` (called `name` in messages) is >= low."""
  for key in keys:
    value = getattr(section, key)
    require(value >= low, f"{name}.{key} must be >= {low}{' ' + note if note else ''}, got "
            f"{value}")


def probabilities(section: Any, name: str, keys: tuple[str, ...]) -> None:
  """Each of `keys` (dropout rates) is in [0, 1)."""
  for key in keys:
    value = getattr(section, key)
    require(0.0 <= value < 1.0, f"{name}.{key} must be in [0, 1), got {value}")


def heads_divide(m: Any) -> None:
  require(m.hidden_size % m.num_heads == 0,
          f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_heads "
          f"({m.num_heads})" + (" unless model.head_dim is set" if hasattr(m, "head_dim")
                                else ""))


def fits_positions(c: Any) -> None:
  """data.seq_len and data.target_len fit the family's learned position table."""
  for key in ("seq_len", "target_len"):
    value = getattr(c.data, key)
    require(value <= c.model.max_position_embeddings,
            f"data.{key} ({value}) exceeds model.max_position_embeddings "
            f"({c.model.max_position_embeddings})")


def validate(c: Config) -> None:
  """Cross-field checks; each failure names the key and the expected range. The model and
  objective sections then check their own keys (`check`)."""
  m, o, d, t, opt = c.model, c.objective, c.data, c.train, c.optim
  _require(m.vocab_size >= 0, f"model.vocab_size must be >= 0 (0 = the tokenizer's), got "
           f"{m.vocab_size}")
  at_least(m, "model", ("hidden_size", "num_layers", "num_heads", "intermediate_size"), 1)
  from t5x_like import families, objectives  # the registries import this module

  objective = objectives.get(o.name)
  _require(m.family in objective.families,
           f"objective.name {o.name!r} does not train model.family {m.family!r}; " +
           ", ".join(f"{f} takes {' or '.join(_takes(f))}" for f in families.names()))
  probabilities(m, "model", ("dropout_rate",))
  _require(not d.pack_documents or objective.pack_spec is not None,
           f"data.pack_documents is not supported for objective.name {o.name}: "
           f"{objective.packing_refused}; set data.pack_documents=false")
  _require(o.z_loss >= 0, f"objective.z_loss must be >= 0, got {o.z_loss}")
  _require(o.loss_normalizing_factor >= 0, "objective.loss_normalizing_factor must be >= 0 "
           f"(0 = number of target tokens), got {o.loss_normalizing_factor}")
  _require(d.seq_len >= 8, f"data.seq_len must be >= 8, got {d.seq_len}")
  _require(d.target_len >= 0, f"data.target_len must be >= 0 (0 = derived), got {d.target_len}")
  _require(0.0 <= d.validation_fraction < 1.0,
           f"data.validation_fraction must be in [0, 1), got {d.validation_fraction}")
  _require(d.worker_threads >= 0 and d.prefetch >= 0,
           "data.worker_threads and data.prefetch must be >= 0")
  _require(d.prepare_workers >= 0,
           f"data.prepare_workers must be >= 0 (0 = one per core), got {d.prepare_workers}")
  if d.order == "icp":
    _require(not d.pack_documents, "data.order=icp needs data.pack_documents=false: packed "
             "documents never attend to each other, so putting related ones together in a row "
             "changes nothing")
    _require(d.icp_k >= 1, f"data.icp_k must be >= 1, got {d.icp_k}")
    _require(0.0 < d.icp_dedup <= 1.0, f"data.icp_dedup must be in (0, 1], got {d.icp_dedup}")
    _require(d.icp_dim >= 8, f"data.icp_dim must be >= 8, got {d.icp_dim}")
    _require(bool(d.icp_embedding), "data.icp_embedding must be 'tfidf' or a run directory")
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
  _require(t.eval_every >= 1 and t.eval_steps >= 0 and t.log_every >= 1,
           "train.eval_every and train.log_every must be >= 1, train.eval_steps >= 0")
  _check_lora(c)
  m.check(c)
  o.check(c)


def _check_lora(c: Config) -> None:
  lora = c.lora
  if lora.rank == 0:
    defaults = type(lora)()
    set_keys = [f"lora.{k}" for k in ("alpha", "dropout", "targets", "train_embeddings",
                                      "modules_to_save", "use_rslora", "init")
                if getattr(lora, k) != getattr(defaults, k)]
    _require(not set_keys, f"{', '.join(set_keys)} set but lora.rank is 0 (LoRA off); set "
             "lora.rank >= 1 to train LoRA adapters")
    return
  _require(lora.rank >= 1, f"lora.rank must be >= 1 (0 = no LoRA, full training), got "
           f"{lora.rank}")
  _require(lora.alpha > 0, f"lora.alpha must be > 0, got {lora.alpha}")
  probabilities(lora, "lora", ("dropout",))
  for key in ("targets", "modules_to_save"):
    values = getattr(lora, key)
    _require(all(isinstance(t, str) and t.strip("/") for t in values),
             f"lora.{key} must be non-empty layer name patterns, got {list(values)}")


def _takes(family: str) -> list[str]:
  """The registered objectives that train `family`."""
  from t5x_like import objectives

  return [o.name for o in objectives.OBJECTIVES if family in o.families]
