"""Export of a trained run to a HuggingFace `transformers` folder (model + tokenizer)."""

from __future__ import annotations

import os
from typing import Any

from data_pipelines.tokenizer import AnyTokenizer
from t5x_like import families
from t5x_like.config import Config
from t5x_like.export import common as export_common


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
  family = families.get(config.model.family)
  if family.export is None:
    raise ValueError(f"model family {family.name!r} has no HuggingFace export")
  return family.export(params, family.module_config(config.model), out_dir, *args, **kw)
