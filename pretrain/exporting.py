"""Export of a trained run to a HuggingFace `transformers` folder (model + tokenizer)."""

from __future__ import annotations

import os
from typing import Any

import jax

from data_pipelines.tokenizer import AnyTokenizer
from t5x_like import families
from t5x_like.config import Config
from t5x_like.export import common as export_common
from t5x_like.models import lora


def check_target(out_dir: str) -> None:
  """Raises FileExistsError for a target that is neither absent, empty nor a previous export.

  Cheap, so callers can refuse before restoring a checkpoint.
  """
  export_common.check_target(os.path.abspath(out_dir))


def export(config: Config, params: Any, tokenizer: AnyTokenizer, out_dir: str) -> str:
  """Writes the HF folder; a checkpoint's own (HF) tokenizer is copied as it is and its
  pad/bos/eos ids go into config.json, a SentencePiece one is converted (fixed ids)."""
  hf = tokenizer.kind == "hf"
  kw = {"special_ids": tokenizer.hf_config_ids()} if hf else {}
  args = (tokenizer.model_path, tokenizer.num_sentinels)
  if lora.has_adapters(params):  # a LoRA run: the adapters merged in (float32)
    params = lora.merge(jax.device_get(params), lora.spec_of(config).scale)
  family = families.get(config.model.family)
  if family.export is None:
    raise ValueError(f"model family {family.name!r} has no HuggingFace export")
  return family.export(params, family.module_config(config.model), out_dir, *args, **kw)


def export_adapter(config: Config, params: Any, tokenizer: AnyTokenizer, out_dir: str,
                   base_dir: str | None = None) -> str:
  """A LoRA run as a peft folder: OUT/adapter_config.json + adapter_model.safetensors, and
  the frozen base (its adapters dropped, not merged) as a transformers folder at `base_dir`
  (default OUT/base), which adapter_config.json's base_model_name_or_path names."""
  from t5x_like.export import peft

  out_dir = os.path.abspath(out_dir)
  base_dir = os.path.join(out_dir, "base") if base_dir is None else os.path.abspath(base_dir)
  params = jax.device_get(params)
  family = families.get(config.model.family)
  spec = lora.spec_of(config)
  module_config = family.module_config(config.model)
  peft.peft_state_dict(params, spec, family, module_config)  # refuse before writing anything
  inside = base_dir == os.path.join(out_dir, "base")
  # Inside OUT: written beside it first, moved in with the adapter (one rename).
  target = out_dir.rstrip("/") + ".tmp-base" if inside else base_dir
  export(config, lora.without_adapters(params), tokenizer, target)
  return peft.write_adapter(params, spec, family, module_config, out_dir, base_dir,
                            base_folder=target if inside else None)
