"""The model side of a run config: `build(model_config)` returns the Flax module of the
registered family (`t5x_like.families`), `features` the batch features it consumes.

Shared pieces every family composes (attention, dense layers, norms, masks, remat policies)
are in `t5x_like.models.layers`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from t5x_like.config import ModelConfig


def _family(cfg: ModelConfig) -> Any:
  from t5x_like import families  # the families import this package's layers
  return families.get(cfg.family)


def copy_fields(cls: type, cfg: ModelConfig) -> Any:
  """The module-level config: the run config's model fields that `cls` declares."""
  names = [f.name for f in dataclasses.fields(cls)]
  return cls(**{name: getattr(cfg, name) for name in names})


_SAID: set[str] = set()


def xla_attention_only(cfg: ModelConfig, why: str) -> None:
  """The splash switch on a family that cannot use it: said once per process."""
  if cfg.attention_kernel != "xla" and cfg.family not in _SAID:
    _SAID.add(cfg.family)
    logging.getLogger(__name__).warning(
        "model.attention_kernel=%s: %s uses XLA attention (%s)", cfg.attention_kernel,
        cfg.family, why)


def module_config(cfg: ModelConfig) -> Any:
  """The family's module-level config (e.g. `BertConfig`) for a run's model section."""
  return _family(cfg).module_config(cfg)


def build(cfg: ModelConfig) -> Any:
  """The Flax module of the run's model section."""
  family = _family(cfg)
  return family.build(family.module_config(cfg))


def features(cfg: ModelConfig, packed: bool = False) -> tuple[str, ...]:
  """The batch features the family consumes (plus segment ids / positions when packed)."""
  family = _family(cfg)
  packed = packed or family.always_packed
  return family.features + (family.packed_features if packed else ())


def is_encoder_decoder(cfg: ModelConfig) -> bool:
  return _family(cfg).encoder_decoder


# What `load_pretrained(...).logits` feeds an encoder-decoder (teacher forcing).
ENCODER_DECODER_LOGITS_FEATURES = (
    "input_ids", "decoder_input_ids", "attention_mask", "decoder_attention_mask", "segment_ids",
    "decoder_segment_ids", "positions", "decoder_positions")


def encoder_decoder_logits(module: Any, params: Any, b: dict[str, Any]) -> Any:
  """[B, T, V] teacher-forced logits of an encoder-decoder module."""
  return module.apply({"params": params}, b["input_ids"], b["decoder_input_ids"],
                      **{k: v for k, v in b.items() if k not in ("input_ids",
                                                                  "decoder_input_ids")},
                      deterministic=True)
