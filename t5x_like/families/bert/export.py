"""Export our Flax `BertForMaskedLM` as a HuggingFace `transformers.BertForMaskedLM` folder.

The folder holds `config.json`, `model.safetensors` (float32), the tokenizer files (see
`t5x_like.export.tokenizer`) and a small marker file identifying it as our export, so a
later export may replace it but never an unrelated directory.

The safetensors file has exactly the keys `BertForMaskedLM.save_pretrained` writes in
transformers 5: the tied `cls.predictions.decoder.{weight,bias}` are left out (they are
re-tied on load to `bert.embeddings.word_embeddings.weight` / `cls.predictions.bias`), and
`from_pretrained` then reports no missing or unexpected keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines import vocab as vocab_lib
from t5x_like.export.common import (
  MARKER_FILE,
  _f32,
  _unbox,
  check_target,
  export_folder,
  layer_trees,
)
from t5x_like.families.bert.model import BertConfig

__all__ = ["MARKER_FILE", "bert_to_hf_state_dict", "check_target", "export_bert",
           "hf_config_dict"]
# Our activation names are HF's ACT2FN keys with the same meaning ("gelu" is the erf form).
_HF_ACTIVATIONS = ("gelu", "gelu_new", "relu")


def _dense(tree: Mapping[str, Any], n_in: int) -> tuple[np.ndarray, np.ndarray]:
  """Our Dense kernel [*in, *out] -> torch Linear weight [out_flat, in_flat] and bias."""
  kernel = _f32(tree["kernel"])
  in_size = int(np.prod(kernel.shape[:n_in]))
  weight = kernel.reshape(in_size, -1).T
  return np.ascontiguousarray(weight), _f32(tree["bias"]).reshape(-1)


def _layer_norm(tree: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  return _f32(tree["scale"]), _f32(tree["bias"])


def bert_to_hf_state_dict(params: Mapping[str, Any], config: BertConfig
                          ) -> dict[str, np.ndarray]:
  """Maps our param tree to the `BertForMaskedLM` state dict (float32, torch layouts).

  Args:
    params: `{'embeddings', 'encoder', 'mlm_head'}` as `BertForMaskedLM.init` makes them
      (optionally under 'params'); numpy or fully addressable jax arrays. On multi-host
      meshes gather first (e.g. `jax.experimental.multihost_utils.process_allgather`).
    config: the model's config; used to check shapes and the layer count.

  Returns:
    HF parameter name -> float32 array, without the tied decoder weight/bias (see module
    docstring).
  """
  p = _unbox(params)
  d = config.hidden_size
  emb, head = p["embeddings"], p["mlm_head"]
  out: dict[str, np.ndarray] = {}

  def put(name: str, value: np.ndarray, shape: tuple[int, ...]) -> None:
    if value.shape != shape:
      raise ValueError(f"{name}: got shape {value.shape}, config implies {shape}")
    out[name] = value

  put("bert.embeddings.word_embeddings.weight", _f32(emb["word_embeddings"]["embedding"]),
      (config.vocab_size, d))
  put("bert.embeddings.position_embeddings.weight",
      _f32(emb["position_embeddings"]["embedding"]), (config.max_position_embeddings, d))
  put("bert.embeddings.token_type_embeddings.weight",
      _f32(emb["token_type_embeddings"]["embedding"]), (config.type_vocab_size, d))
  scale, bias = _layer_norm(emb["layer_norm"])
  put("bert.embeddings.LayerNorm.weight", scale, (d,))
  put("bert.embeddings.LayerNorm.bias", bias, (d,))

  f = config.intermediate_size
  for i, layer in enumerate(layer_trees(p["encoder"], config.num_layers, "encoder")):
    pre = f"bert.encoder.layer.{i}."
    for proj in ("query", "key", "value"):
      # [D, H, K] -> [H*K, D]: torch's head-major output features match our (H, K) order.
      w, b = _dense(layer["attention"][proj], n_in=1)
      put(f"{pre}attention.self.{proj}.weight", w, (d, d))
      put(f"{pre}attention.self.{proj}.bias", b, (d,))
    w, b = _dense(layer["attention_output"], n_in=2)  # [H, K, D] -> [D, H*K]
    put(f"{pre}attention.output.dense.weight", w, (d, d))
    put(f"{pre}attention.output.dense.bias", b, (d,))
    scale, bias = _layer_norm(layer["attention_layer_norm"])
    put(f"{pre}attention.output.LayerNorm.weight", scale, (d,))
    put(f"{pre}attention.output.LayerNorm.bias", bias, (d,))
    w, b = _dense(layer["intermediate"], n_in=1)
    put(f"{pre}intermediate.dense.weight", w, (f, d))
    put(f"{pre}intermediate.dense.bias", b, (f,))
    w, b = _dense(layer["output"], n_in=1)
    put(f"{pre}output.dense.weight", w, (d, f))
    put(f"{pre}output.dense.bias", b, (d,))
    scale, bias = _layer_norm(layer["output_layer_norm"])
    put(f"{pre}output.LayerNorm.weight", scale, (d,))
    put(f"{pre}output.LayerNorm.bias", bias, (d,))

  w, b = _dense(head["transform"], n_in=1)
  put("cls.predictions.transform.dense.weight", w, (d, d))
  put("cls.predictions.transform.dense.bias", b, (d,))
  scale, bias = _layer_norm(head["layer_norm"])
  put("cls.predictions.transform.LayerNorm.weight", scale, (d,))
  put("cls.predictions.transform.LayerNorm.bias", bias, (d,))
  put("cls.predictions.bias", _f32(head["bias"]), (config.vocab_size,))
  return out


def hf_config_dict(config: BertConfig, pad_token_id: int = vocab_lib.PAD_ID,
                   bos_token_id: int = vocab_lib.BOS_ID,
                   eos_token_id: int = vocab_lib.EOS_ID) -> dict[str, Any]:
  """`config.json` contents for `transformers.BertForMaskedLM`."""
  if config.hidden_act not in _HF_ACTIVATIONS:
    raise ValueError(f"hidden_act {config.hidden_act!r} has no HF equivalent here")
  if config.hidden_size % config.num_heads:
    raise ValueError("hidden_size must be divisible by num_heads for HF BERT")
  return {
      "architectures": ["BertForMaskedLM"],
      "model_type": "bert",
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "intermediate_size": config.intermediate_size,
      "hidden_act": config.hidden_act,
      "hidden_dropout_prob": config.dropout_rate,
      "attention_probs_dropout_prob": config.attention_dropout_rate,
      "max_position_embeddings": config.max_position_embeddings,
      "type_vocab_size": config.type_vocab_size,
      "initializer_range": config.initializer_range,
      "layer_norm_eps": config.layer_norm_eps,
      "position_embedding_type": "absolute",  # read by transformers 4.x; 5.x ignores it
      "classifier_dropout": None,
      "is_decoder": False,
      "add_cross_attention": False,
      "pad_token_id": pad_token_id,
      "bos_token_id": bos_token_id,
      "eos_token_id": eos_token_id,
      "tie_word_embeddings": True,
      "dtype": "float32",
  }


def export_bert(params: Mapping[str, Any], config: BertConfig, out_dir: str,
                tokenizer_model: str | None = None, num_sentinels: int = 0,
                special_ids: Mapping[str, int] | None = None) -> str:
  """Writes a HuggingFace `BertForMaskedLM` folder, atomically (`export.common.export_folder`
  says what each argument means and what it raises)."""
  return export_folder("bert", bert_to_hf_state_dict, hf_config_dict, params, config, out_dir,
                       tokenizer_model, num_sentinels, special_ids,
                       model_max_length=config.max_position_embeddings)