"""Export of a trained run to a HuggingFace `transformers` folder (model + tokenizer)."""

from __future__ import annotations

import os
from typing import Any

from data_pipelines.tokenizer import AnyTokenizer
from t5x_like import models
from t5x_like.config import Config
from t5x_like.export import bart as bart_export
from t5x_like.export import bert as bert_export
from t5x_like.export import t5 as t5_export
from t5x_like.export import xlnet as xlnet_export


def check_target(out_dir: str) -> None:
  """Raises FileExistsError for a target that is neither absent, empty nor a previous export.

  Cheap, so callers can refuse before restoring a checkpoint.
  """
  bert_export.check_target(os.path.abspath(out_dir))


def export(config: Config, params: Any, tokenizer: AnyTokenizer, out_dir: str) -> str:
  """Writes the HF folder; a checkpoint's own (HF) tokenizer is copied as it is and its
  pad/bos/eos ids go into config.json, a SentencePiece one is converted (fixed ids)."""
  hf = tokenizer.kind == "hf"
  kw = {"special_ids": tokenizer.hf_config_ids()} if hf else {}
  args = (tokenizer.model_path, tokenizer.num_sentinels)
  if config.model.family == "bert":
    return bert_export.export_bert(params, models.bert_config(config.model), out_dir, *args,
                                   **kw)
  if config.model.family == "t5":
    return t5_export.export_t5(params, models.t5_config(config.model), out_dir, *args, **kw)
  if config.model.family == "bart":
    return bart_export.export_bart(params, models.bart_config(config.model), out_dir, *args,
                                   **kw)
  if config.model.family == "xlnet":
    return xlnet_export.export_xlnet(params, models.xlnet_config(config.model), out_dir, *args,
                                     **kw)
  raise ValueError(f"no exporter for model.family {config.model.family!r}")
