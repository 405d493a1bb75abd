"""Our ALBERT params -> the `transformers.AlbertForPreTraining` state dict (float32, torch
layouts), without the tied `predictions.decoder.{weight,bias}` (re-tied on load)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines import vocab as vocab_lib
from t5x_like.export.common import _unbox, export_folder, put_checked
from t5x_like.families.albert.model import AlbertConfig


def _dense(out: dict[str, np.ndarray], hf: str, tree: Mapping[str, Any], path: str,
           shape: tuple[int, ...], n_in: int = 1) -> None:
  put_checked(out, f"{hf}.weight", tree, f"{path}/kernel", shape,
              lambda k: k.reshape(int(np.prod(k.shape[:n_in])), -1).T)
  put_checked(out, f"{hf}.bias", tree, f"{path}/bias", shape[n_in:], lambda b: b.reshape(-1))


def _norm(out: dict[str, np.ndarray], hf: str, tree: Mapping[str, Any], path: str,
          width: int) -> None:
  put_checked(out, f"{hf}.weight", tree, f"{path}/scale", (width,))
  put_checked(out, f"{hf}.bias", tree, f"{path}/bias", (width,))


def albert_to_hf_state_dict(params: Mapping[str, Any], config: AlbertConfig
                            ) -> dict[str, np.ndarray]:
  p = _unbox(params)
  c = config
  d, e, f = c.hidden_size, c.embedding_size, c.intermediate_size
  h, k = c.num_heads, c.hidden_size // c.num_heads
  out: dict[str, np.ndarray] = {}
  for ours, hf, rows in (("word_embeddings", "word_embeddings", c.vocab_size),
                         ("position_embeddings", "position_embeddings",
                          c.max_position_embeddings),
                         ("token_type_embeddings", "token_type_embeddings", c.type_vocab_size)):
    put_checked(out, f"albert.embeddings.{hf}.weight", p, f"{ours}/embedding", (rows, e))
  _norm(out, "albert.embeddings.LayerNorm", p, "embeddings_layer_norm", e)
  _dense(out, "albert.encoder.embedding_hidden_mapping_in", p, "embedding_hidden_mapping_in",
         (e, d))
  pre = "albert.encoder.albert_layer_groups.0.albert_layers.0."
  layer = p["shared_layer"]
  for proj in ("query", "key", "value"):
    _dense(out, f"{pre}attention.{proj}", layer, f"attention/{proj}", (d, h, k))
  _dense(out, f"{pre}attention.dense", layer, "attention_output", (h, k, d), n_in=2)
  _norm(out, f"{pre}attention.LayerNorm", layer, "attention_layer_norm", d)
  _dense(out, f"{pre}ffn", layer, "intermediate", (d, f))
  _dense(out, f"{pre}ffn_output", layer, "output", (f, d))
  _norm(out, f"{pre}full_layer_layer_norm", layer, "output_layer_norm", d)
  _dense(out, "albert.pooler", p, "pooler", (d, d))
  _dense(out, "sop_classifier.classifier", p, "sop_classifier", (d, 2))
  _dense(out, "predictions.dense", p, "mlm_dense", (d, e))
  _norm(out, "predictions.LayerNorm", p, "mlm_layer_norm", e)
  put_checked(out, "predictions.bias", p, "mlm_bias", (c.vocab_size,))
  return out


def hf_config_dict(config: AlbertConfig, pad_token_id: int = vocab_lib.PAD_ID,
                   bos_token_id: int = vocab_lib.BOS_ID,
                   eos_token_id: int = vocab_lib.EOS_ID) -> dict[str, Any]:
  """`config.json` of `transformers.AlbertForPreTraining` (one hidden group, one layer)."""
  c = config
  return {
      "architectures": ["AlbertForPreTraining"], "model_type": "albert",
      "vocab_size": c.vocab_size, "embedding_size": c.embedding_size,
      "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers,
      "num_hidden_groups": 1, "inner_group_num": 1, "num_attention_heads": c.num_heads,
      "intermediate_size": c.intermediate_size, "hidden_act": c.hidden_act,
      "hidden_dropout_prob": c.dropout_rate,
      "attention_probs_dropout_prob": c.attention_dropout_rate,
      "classifier_dropout_prob": 0.1, "max_position_embeddings": c.max_position_embeddings,
      "type_vocab_size": c.type_vocab_size, "initializer_range": c.initializer_range,
      "layer_norm_eps": c.layer_norm_eps, "position_embedding_type": "absolute",
      "pad_token_id": pad_token_id, "bos_token_id": bos_token_id,
      "eos_token_id": eos_token_id, "tie_word_embeddings": True, "dtype": "float32",
  }


def export_albert(params: Mapping[str, Any], config: AlbertConfig, out_dir: str,
                  tokenizer_model: str | None = None, num_sentinels: int = 0,
                  special_ids: Mapping[str, int] | None = None) -> str:
  """Writes a HuggingFace `AlbertForPreTraining` folder (MLM and SOP heads), atomically
  (`export.common.export_folder` says what each argument means and what it raises)."""
  if config.hidden_act not in ("gelu", "gelu_new", "relu"):
    raise ValueError(f"hidden_act {config.hidden_act!r} has no HF equivalent here")
  return export_folder("albert", albert_to_hf_state_dict, hf_config_dict, params, config,
                       out_dir, tokenizer_model, num_sentinels, special_ids,
                       model_max_length=config.max_position_embeddings)
